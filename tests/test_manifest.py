"""Bulk runs: the JSONL results file, what a rerun skips, and a run killed with SIGKILL part-way."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest

from sensevoice_serve.cli import main
from sensevoice_serve.manifest import ManifestWriter, file_key, read_done

from .conftest import shared_audio

OPTIONS = {"language": "auto", "use_itn": True}


def test_key_follows_the_file_and_the_output_options(tmp_path: Path) -> None:
    recording = tmp_path / "a.wav"
    recording.write_bytes(b"RIFF0000WAVE")
    key = file_key(recording, OPTIONS)
    assert file_key(recording, dict(OPTIONS)) == key
    assert file_key(recording, {**OPTIONS, "use_itn": False}) != key
    os.utime(recording, ns=(0, 10**18))
    assert file_key(recording, OPTIONS) != key
    moved = tmp_path / "b.wav"
    recording.rename(moved)
    assert file_key(moved, OPTIONS) != key


def test_a_torn_last_line_is_dropped_and_cut_away(tmp_path: Path) -> None:
    manifest = tmp_path / "results.jsonl"
    with ManifestWriter(manifest) as writer:
        writer.append({"key": "good", "text": "你好"})
        writer.append({"key": "bad", "error": "not audio"})
    whole = manifest.read_bytes()
    with manifest.open("ab") as handle:
        handle.write(b'{"key": "torn", "te')

    done = read_done(manifest)
    assert (done.succeeded, done.failed) == ({"good"}, {"bad"})
    assert manifest.read_bytes() == whole  # the next append starts on a line of its own


def test_no_results_file_means_nothing_done(tmp_path: Path) -> None:
    done = read_done(tmp_path / "missing.jsonl")
    assert (done.succeeded, done.failed) == (set(), set())


def records(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]


def test_rerun_skips_done_files_and_redoes_changed_ones(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("jfk.flac", "zh_sample.wav"):
        shutil.copy(shared_audio(name), inputs / name)
    manifest = tmp_path / "results.jsonl"
    command = ["transcribe", "--model", str(tiny_model_dir), "--output", str(manifest), str(inputs)]

    assert main(command) == 0
    assert main([*command, str(inputs / "jfk.flac")]) == 0  # listed twice, already done: nothing to do
    assert len(records(manifest)) == 2
    assert "3 file(s) already in" in capsys.readouterr().err  # the two files, one of them listed twice

    again = tmp_path / "again.jsonl"
    other_spelling = str(inputs / ".." / inputs.name / "zh_sample.wav")
    assert main([*command[:-3], "--output", str(again), str(inputs), other_spelling]) == 0
    assert len(records(again)) == 2  # one file under two spellings is one record

    os.utime(inputs / "jfk.flac")  # touched: done again
    assert main(command) == 0
    assert main([*command, "--no-itn"]) == 0  # another output option: every file again
    paths = Counter(Path(record["path"]).name for record in records(manifest))
    assert paths == {"jfk.flac": 3, "zh_sample.wav": 2}


def test_failures_are_recorded_once_and_retried_on_request(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"this is not an mp3")
    manifest = tmp_path / "results.jsonl"
    command = ["transcribe", "--model", str(tiny_model_dir), "--output", str(manifest), str(bad)]

    assert main(command) == 1
    capsys.readouterr()
    assert main(command) == 1  # still a failure for the exit code, but not recorded twice
    assert "1 recorded failure(s)" in capsys.readouterr().err  # says why the rerun fails
    (record,) = records(manifest)
    assert record["path"] == str(bad) and "not a recognised audio" in record["error"]

    shutil.copy(shared_audio("zh_sample.wav"), bad)  # fixed in place
    assert main([*command, "--retry-failed"]) == 0
    assert ["error" in record for record in records(manifest)] == [True, False]


GOOD_COPIES = 12


@pytest.mark.slow
def test_a_run_killed_mid_way_resumes_and_ends_with_every_file_once(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """SIGKILL once the first line is written; the rerun finishes the job with no file missing or twice.

    The last input is a FIFO with no writer, so the killed run cannot finish before the kill: it blocks
    opening it while the earlier files are still being decoded, batched and written.
    """
    inputs = tmp_path / "in"
    inputs.mkdir()
    recordings = [shared_audio(name) for name in ("jfk.flac", "zh_sample.wav", "multilingual.mp3")]
    for index in range(GOOD_COPIES):
        source = recordings[index % len(recordings)]
        shutil.copy(source, inputs / f"{index:02d}{source.suffix}")
    (inputs / "03_corrupt.mp3").write_bytes(os.urandom(4096))
    (inputs / "07_empty.wav").write_bytes(b"")
    last = inputs / "99_last.wav"
    os.mkfifo(last)
    expected = sorted(path.name for path in inputs.iterdir())
    manifest = tmp_path / "results.jsonl"
    command = [
        sys.executable, "-m", "sensevoice_serve.cli", "transcribe", "--model", str(tiny_model_dir),
        "--output", str(manifest), *(str(inputs / name) for name in expected),
    ]  # fmt: skip

    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (manifest.exists() and manifest.read_bytes().count(b"\n") >= 1):
        assert run.poll() is None, run.stderr.read().decode()
        assert time.monotonic() < deadline, "no result line within 5 minutes"
        time.sleep(0.005)
    os.kill(run.pid, signal.SIGKILL)
    run.communicate()
    written_before_kill = manifest.read_bytes().count(b"\n")
    assert 1 <= written_before_kill < len(expected)

    last.unlink()
    shutil.copy(shared_audio("zh_sample.wav"), last)
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 1, rerun.stderr  # the two bad files make the run fail at the end
    lines = records(manifest)
    assert sorted(Path(record["path"]).name for record in lines) == expected
    failed = {Path(record["path"]).name for record in lines if "error" in record}
    assert failed == {"03_corrupt.mp3", "07_empty.wav"}
    assert all(record["segments"] for record in lines if "error" not in record)

    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 1
    assert f"{len(expected) - 2} file(s) already in" in again.stderr
    assert "2 recorded failure(s)" in again.stderr and "not retried (use --retry-failed)" in again.stderr
    assert len(records(manifest)) == len(expected)


def test_new_weights_in_the_same_directory_redo_every_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    manifest = tmp_path / "results.jsonl"
    command = ["transcribe", "--model", str(model), "--output", str(manifest), str(shared_audio("jfk.flac"))]
    assert main(command) == 0
    assert main(command) == 0
    assert len(records(manifest)) == 1

    weights = model / "model.pt"
    weights.write_bytes(weights.read_bytes())  # replaced in place: same path, new modification time
    assert main(command) == 0
    assert len(records(manifest)) == 2


def test_reading_a_big_manifest_costs_one_line_of_memory(tmp_path: Path) -> None:
    """20 MB of long transcripts: the old reader held the whole file and parsed every token."""
    manifest = tmp_path / "results.jsonl"
    tokens = [{"id": i, "text": "\u2581word", "start": i * 0.06, "end": i * 0.06 + 0.05} for i in range(2000)]
    line = json.dumps({"key": "", "path": "x.wav", "segments": [{"tokens": tokens}]}) + "\n"
    with manifest.open("w") as handle:
        for index in range(20 * 2**20 // len(line)):
            handle.write(line.replace('"key": ""', f'"key": "{index:032x}"', 1))
        handle.write(json.dumps({"key": "f" * 32, "path": "y.wav", "error": "not audio"}) + "\n")
    tracemalloc.start()
    try:
        done = read_done(manifest)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(done.succeeded) == 20 * 2**20 // len(line) and done.failed == {"f" * 32}
    assert peak < 2 * 2**20, f"peak {peak / 2**20:.1f} MB reading a 20 MB manifest"


def test_a_quoted_error_in_a_transcript_is_not_a_failure(tmp_path: Path) -> None:
    manifest = tmp_path / "results.jsonl"
    with ManifestWriter(manifest) as writer:
        writer.append({"key": "a1", "path": "a.wav", "text": 'he said "error": twice', "warnings": []})
        writer.append({"key": "b2", "path": "b.wav", "error": "not audio"})
    done = read_done(manifest)
    assert (done.succeeded, done.failed) == ({"a1"}, {"b2"})


def test_creating_the_manifest_makes_its_directory_entry_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[bool] = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        os, "fsync", lambda fd: synced.append(stat.S_ISDIR(os.fstat(fd).st_mode)) or real_fsync(fd)
    )
    with ManifestWriter(tmp_path / "new" / "results.jsonl") as writer:
        assert synced == [True]
        writer.append({"key": "a"})
    assert synced == [True, False]
    synced.clear()
    with ManifestWriter(tmp_path / "new" / "results.jsonl"):
        assert synced == []  # appending to an existing file needs no directory sync


def test_output_dir_is_honoured_with_the_results_file(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    manifest, out = tmp_path / "results.jsonl", tmp_path / "out"
    source = str(shared_audio("jfk.flac"))
    base = ["transcribe", "--model", str(tiny_model_dir), "--output", str(manifest), source]
    assert main([*base, "--format", "srt"]) == 2  # nowhere to put srt: says so instead of dropping it
    assert "--output-dir" in capsys.readouterr().err and not manifest.exists()
    assert main([*base, "--format", "srt", "--output-dir", str(out)]) == 0
    assert len(records(manifest)) == 1
    assert [p.name for p in out.iterdir()] == ["jfk.srt"]
