"""``sensevoice transcribe --ray``: bulk transcription on Ray Data (local cluster, tiny checkpoint) gives
the plain CLI's results, and a run killed part-way, then rerun, records every file once."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from sensevoice_serve.cli import main
from sensevoice_serve.tuning import CPU_BATCH_FRAMES

from ..conftest import SHARED_AUDIO, shared_audio
from ..server.conftest import wait_until
from .conftest import RAY_MISSING, RayRun

pytestmark = pytest.mark.slow
data = pytest.importorskip("sensevoice_serve.ray.data", reason=RAY_MISSING)
parquet = pytest.importorskip("sensevoice_serve.ray.parquet", reason=RAY_MISSING)
pq = pytest.importorskip("pyarrow.parquet", reason=RAY_MISSING)

RUN_SECONDS = 300


def records(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]


def test_the_shared_recordings_give_the_plain_clis_results(
    ray_run: RayRun, tiny_model_dir: Path, tmp_path: Path
) -> None:
    shared_audio("jfk.flac")  # skips when the recordings are missing
    broken = tmp_path / "broken.wav"
    broken.write_bytes(os.urandom(2048))
    inputs = [str(SHARED_AUDIO), str(broken)]
    plain = tmp_path / "plain.jsonl"
    # One torch thread: the same text, and no slowdown on a machine whose cores other tests keep busy.
    plain_args = [
        "transcribe",
        "--model",
        str(tiny_model_dir),
        "--dtype",
        "fp32",
        "--torch-threads",
        "1",
        *inputs,
    ]
    assert main([*plain_args, "--output", str(plain)]) == 1

    dataset = tmp_path / "results.parquet"
    args = ("transcribe", "--ray", "--model", str(tiny_model_dir), *inputs, "--output", str(dataset))
    run = ray_run.start(*args, log=tmp_path / "ray.log")
    assert run.wait(timeout=RUN_SECONDS) == 1, (tmp_path / "ray.log").read_text()[-3000:]

    rows = {row["path"]: row for row in pq.read_table(dataset).to_pylist()}
    expected = {record["path"]: record for record in records(plain)}
    assert records(parquet.results_file_for(dataset))  # the run's JSON Lines results file, kept beside
    assert rows.keys() == expected.keys()
    for path, record in expected.items():
        assert rows[path] == {**dict.fromkeys(rows[path]), **record}, path  # a failure's row: nulls beside
    assert rows[str(broken)]["error"] and rows[str(broken)]["text"] is None


def test_a_killed_run_rerun_records_every_file_once(
    ray_run: RayRun, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """SIGKILL (the command and its cluster) once a result is recorded; the rerun finishes the job.

    The last input is a FIFO with no writer: its decoding blocks, so the killed run cannot finish first.
    The files before it fill at least one of the actor's calls, so results are recorded before it."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for index in range(data.rows_per_call(CPU_BATCH_FRAMES) + 8):
        os.link(shared_audio("zh_sample.wav"), inputs / f"{index:02d}.wav")
    (inputs / "50_broken.mp3").write_bytes(os.urandom(4096))
    last = inputs / "99_last.wav"
    os.mkfifo(last)
    manifest = tmp_path / "results.jsonl"
    args = ("transcribe", "--ray", "--model", str(tiny_model_dir), str(inputs), "--output", str(manifest))

    killed = ray_run.start(*args, log=tmp_path / "killed.log")

    def recorded() -> bool:
        assert killed.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        return manifest.exists() and manifest.read_bytes().count(b"\n") >= 1

    wait_until(recorded, "a result is recorded", timeout=RUN_SECONDS)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert 1 <= len(records(manifest)) < len(list(inputs.iterdir()))
    wait_until(lambda: not ray_run.processes(), "the killed run's processes are gone", timeout=60)

    last.unlink()
    shutil.copy(shared_audio("zh_sample.wav"), last)
    rerun = ray_run.start(*args, log=tmp_path / "rerun.log")
    assert rerun.wait(timeout=RUN_SECONDS) == 1, (tmp_path / "rerun.log").read_text()[-3000:]
    paths = [record["path"] for record in records(manifest)]
    assert sorted(paths) == sorted(str(path) for path in inputs.iterdir())
    failed = [record["path"] for record in records(manifest) if "error" in record]
    assert failed == [str(inputs / "50_broken.mp3")]
