"""A server started with ``SENSEVOICE_DTYPE=int8`` answers both APIs through the int8 runtime, torch-free."""

from __future__ import annotations

from pathlib import Path

import pytest

from sensevoice_serve.runtimes import int8_available

from ..conftest import shared_audio

pytestmark = pytest.mark.skipif(not int8_available(), reason="the int8 runtime needs onnxruntime and onnx")


def test_an_int8_server_answers_the_openai_and_native_apis(
    start_server, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cache = tmp_path_factory.mktemp("int8-cache")
    server = start_server(dtype="int8", cache_dir=cache)
    jfk = Path(shared_audio("jfk.flac")).read_bytes()
    openai = server.transcribe(jfk, name="jfk.flac", response_format="verbose_json")
    assert openai.status_code == 200, openai.text
    assert openai.json()["duration"] == pytest.approx(11.0, abs=0.1)
    native = server.transcribe_native(("jfk.flac", jfk))
    assert native.status_code == 200, native.text
    assert [entry for entry in (cache / "int8").iterdir() if entry.is_dir()]
    # That server built the int8 model, which takes torch, once. One started from the cache loads torch in
    # none of its processes (supervisor, serving process, decode process) for a clip that needs no VAD.
    cached = start_server(dtype="int8", cache_dir=cache)
    assert cached.transcribe(jfk, name="jfk.flac").status_code == 200
    holding_torch = [pid for pid in process_tree(cached.process.pid) if "libtorch" in maps_of(pid)]
    assert holding_torch == [], "torch was loaded on the int8 path"


def process_tree(root: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
    tree = [root]
    for pid in tree:
        tree += [child for child, parent in parents.items() if parent == pid]
    return tree


def maps_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""
