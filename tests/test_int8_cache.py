"""The int8 model's cache: keyed by the weights and the runtime, built once even by two processes at once,
and rebuilt (with a notice) when stale or damaged."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from sensevoice_serve.checkpoint import resolve_model  # noqa: E402
from sensevoice_serve.runtimes import int8_cache  # noqa: E402
from sensevoice_serve.runtimes.int8 import load_int8_runtime  # noqa: E402
from sensevoice_serve.tokenizer import Tokenizer  # noqa: E402

BUILDING = "building the int8 model"


@pytest.fixture
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A model directory of the test's own, free to touch."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


@pytest.fixture(scope="module")
def built(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding the tiny model's int8 build, made once; tests copy it rather than build again."""
    cache = tmp_path_factory.mktemp("int8-cache")
    files = resolve_model(tiny_model_dir)
    int8_cache.ensure_int8_model(files, Tokenizer(files.tokenizer), cache)
    return cache


@pytest.fixture
def cache(built: Path, tmp_path: Path) -> Path:
    """The test's own copy of the built cache, free to damage."""
    return Path(shutil.copytree(built, tmp_path / "cache"))


def ensure(model_dir: Path, cache: Path) -> Path:
    files = resolve_model(model_dir)
    return int8_cache.ensure_int8_model(files, Tokenizer(files.tokenizer), cache)


def entries(cache: Path) -> list[Path]:
    return sorted(path for path in (cache / "int8").iterdir() if path.is_dir())


def test_a_cached_model_is_loaded_not_built_again(
    tiny_model_dir: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        entry = ensure(tiny_model_dir, cache)
        files = resolve_model(tiny_model_dir)
        load_int8_runtime(files, Tokenizer(files.tokenizer), cache)
    assert BUILDING not in caplog.text
    assert entries(cache) == [entry]
    manifest = json.loads((entry / int8_cache.MANIFEST).read_text())
    assert manifest["identity"]["weights"] == str(files.weights.resolve())


def test_the_key_follows_the_weights_and_the_runtime_version(
    model_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = resolve_model(model_copy)
    tokenizer = Tokenizer(files.tokenizer)
    original = int8_cache.entry_name(int8_cache.identity(files, tokenizer))
    stat = files.weights.stat()
    os.utime(files.weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    rewritten = int8_cache.entry_name(int8_cache.identity(files, tokenizer))
    real_version = int8_cache.metadata.version
    monkeypatch.setattr(
        int8_cache.metadata, "version", lambda name: "0.0.1" if name == "onnxruntime" else real_version(name)
    )
    upgraded = int8_cache.entry_name(int8_cache.identity(files, tokenizer))
    assert len({original, rewritten, upgraded}) == 3
    # The model directory's part of the name stays: older builds of it are found and removed.
    assert len({name.split("-")[0] for name in (original, rewritten, upgraded)}) == 1


def test_a_stale_build_is_replaced_with_a_notice(
    model_copy: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    old = ensure(model_copy, cache)
    weights = model_copy / "model.pt"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # model.pt replaced
    with caplog.at_level(logging.WARNING):
        new = ensure(model_copy, cache)
    assert new != old
    assert entries(cache) == [new]
    assert f"removing the stale int8 model {old}" in caplog.text


def test_a_truncated_build_is_rebuilt_with_a_notice(
    tiny_model_dir: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (entry,) = entries(cache)
    data = entry / "encoder.data"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        assert ensure(tiny_model_dir, cache) == entry
    assert "encoder.data is missing or truncated" in caplog.text
    assert BUILDING in caplog.text
    identity = json.loads((entry / int8_cache.MANIFEST).read_text())["identity"]
    assert int8_cache.entry_problem(entry, identity) is None


def test_a_damaged_graph_of_the_right_size_is_rebuilt_when_it_fails_to_load(
    tiny_model_dir: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (entry,) = entries(cache)
    graph = entry / "encoder.onnx"
    graph.write_bytes(b"\xff" * graph.stat().st_size)  # passes the size check, not the loader
    files = resolve_model(tiny_model_dir)
    with caplog.at_level(logging.WARNING):
        runtime = load_int8_runtime(files, Tokenizer(files.tokenizer), cache)
    assert "failed to load" in caplog.text
    assert BUILDING in caplog.text
    assert runtime.session is not None


def test_a_manifest_that_does_not_parse_means_a_rebuild(
    tiny_model_dir: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (entry,) = entries(cache)
    (entry / int8_cache.MANIFEST).write_text("{not json")
    with caplog.at_level(logging.WARNING):
        ensure(tiny_model_dir, cache)
    assert "unreadable manifest" in caplog.text


BUILD_IN_A_PROCESS = """
import logging, sys
logging.basicConfig(level=logging.WARNING, format="%(message)s")
from sensevoice_serve.checkpoint import resolve_model
from sensevoice_serve.runtimes.int8 import load_int8_runtime
from sensevoice_serve.tokenizer import Tokenizer
files = resolve_model(sys.argv[1])
load_int8_runtime(files, Tokenizer(files.tokenizer), sys.argv[2])
"""


def test_two_processes_at_once_build_once_and_both_load(tiny_model_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    command = [sys.executable, "-c", BUILD_IN_A_PROCESS, str(tiny_model_dir), str(cache)]
    processes = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    logs = [process.communicate(timeout=300)[1] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], logs
    assert sum(log.count(BUILDING) for log in logs) == 1, logs
    assert len(entries(cache)) == 1
    assert not [path for path in (cache / "int8").iterdir() if ".partial." in path.name]


def test_an_unwritable_cache_builds_for_this_process_with_a_notice(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    with caplog.at_level(logging.WARNING):
        entry = ensure(tiny_model_dir, blocked)
    assert "cannot write the int8 cache" in caplog.text
    assert entry.is_dir()
    assert not str(entry).startswith(str(blocked))
