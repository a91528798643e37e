from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sensevoice_serve.cli import main

from .audio_fixtures import write_gsm_wav
from .conftest import shared_audio


def test_json_output_carries_the_full_result(tiny_model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(
        ["transcribe", "--model", str(tiny_model_dir), "--format", "json", str(shared_audio("jfk.flac"))]
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["duration"] == pytest.approx(11.0, abs=0.1)
    assert set(data) >= {
        "language",
        "emotion",
        "emotion_prob",
        "event",
        "itn",
        "text",
        "raw_text",
        "segments",
    }
    assert data["segments"][0]["tokens"]


@pytest.mark.parametrize("output_format", ["txt", "srt", "vtt", "tsv", "json"])
def test_output_dir_gets_one_file_per_input(tiny_model_dir: Path, tmp_path: Path, output_format: str) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("jfk.flac", "zh_sample.wav"):
        shutil.copy(shared_audio(name), inputs / name)
    out = tmp_path / "out"
    flags = ["--format", output_format, "--output-dir", str(out), "--no-itn", "--language", "en"]
    code = main(["transcribe", "--model", str(tiny_model_dir), *flags, str(inputs)])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"jfk.{output_format}", f"zh_sample.{output_format}"]
    )


def test_a_bad_file_fails_alone(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"this is not an mp3")
    good = shared_audio("zh_sample.wav")
    code = main(["transcribe", "--model", str(tiny_model_dir), "--format", "txt", str(bad), str(good)])
    captured = capsys.readouterr()
    assert code == 1
    assert f"error: {bad}:" in captured.err
    assert captured.out.count("\n") == 1  # the good file's line


def test_bad_model_dir_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["transcribe", "--model", str(tmp_path / "missing"), str(shared_audio("jfk.flac"))])
    assert code == 2
    error = capsys.readouterr().err
    assert "model directory not found" in error and "sensevoice make-test-model tiny" in error


def test_environment_settings_apply(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("SENSEVOICE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("SENSEVOICE_OUTPUT_FORMAT", "tsv")
    assert main(["transcribe", str(shared_audio("zh_sample.wav"))]) == 0
    assert capsys.readouterr().out.startswith("start\tend\ttext")


def test_make_test_model_and_entry_point(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "sensevoice_serve.cli", "make-test-model", "tiny", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "RANDOM" in completed.stdout
    assert (tmp_path / "m" / "model.pt").is_file()


def test_progress_counts_audio_within_files_and_each_file_once(capsys: pytest.CaptureFixture) -> None:
    from sensevoice_serve.cli import _Progress

    progress = _Progress(2)
    progress.advance("a", 1800.0)
    progress.advance("a", 900.0)  # segments of another channel may come back earlier in the file
    progress.advance("b", 360.0)
    assert "0.60 h audio" in progress.bar.postfix
    progress.done("a", 3600.0)
    assert "1.10 h audio" in progress.bar.postfix
    progress.close()


def _transcribe_two(model: Path, output_format: str, capsys: pytest.CaptureFixture) -> str:
    files = [str(shared_audio("jfk.flac")), str(shared_audio("zh_sample.wav"))]
    assert main(["transcribe", "--model", str(model), "--format", output_format, *files]) == 0
    return capsys.readouterr().out


def test_several_files_as_json_are_json_lines(tiny_model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    lines = _transcribe_two(tiny_model_dir, "json", capsys).splitlines()
    assert sorted(Path(json.loads(line)["source"]).name for line in lines) == ["jfk.flac", "zh_sample.wav"]


def test_several_files_as_vtt_are_one_document(tiny_model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    webvtt = pytest.importorskip("webvtt")
    text = _transcribe_two(tiny_model_dir, "vtt", capsys)
    assert text.count("WEBVTT") == 1
    assert sorted(line.rsplit("/", 1)[-1] for line in text.splitlines() if line.startswith("NOTE ")) == [
        "jfk.flac",
        "zh_sample.wav",
    ]
    assert len(webvtt.from_string(text)) >= 2


def test_several_files_as_tsv_and_txt_name_their_file(tiny_model_dir: Path, capsys) -> None:
    rows = _transcribe_two(tiny_model_dir, "tsv", capsys).splitlines()
    assert rows[0] == "file\tstart\tend\ttext" and rows.count(rows[0]) == 1
    assert {Path(row.split("\t")[0]).name for row in rows[1:]} == {"jfk.flac", "zh_sample.wav"}
    lines = _transcribe_two(tiny_model_dir, "txt", capsys).splitlines()
    assert sorted(Path(line.split("\t")[0]).name for line in lines) == ["jfk.flac", "zh_sample.wav"]


def test_several_files_as_srt_number_cues_on(tiny_model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    srt = pytest.importorskip("srt")
    subtitles = list(srt.parse(_transcribe_two(tiny_model_dir, "srt", capsys)))
    assert [s.index for s in subtitles] == list(range(1, len(subtitles) + 1)) and len(subtitles) >= 2


def test_a_gsm_wav_among_good_files_gives_three_results(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    """GSM 6.10 in WAV (phone systems) crashed the whole run with a ValueError from libsndfile."""
    good = str(shared_audio("zh_sample.wav"))
    phone_call = str(write_gsm_wav(tmp_path / "call.wav", 2.0))
    inputs = [good, phone_call, str(shared_audio("jfk.flac"))]
    assert main(["transcribe", "--model", str(tiny_model_dir), "--format", "json", *inputs]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(result["source"] for result in results) == sorted(inputs)
    manifest = tmp_path / "results.jsonl"
    assert main(["transcribe", "--model", str(tiny_model_dir), "--output", str(manifest), *inputs]) == 0
    assert len(manifest.read_text().splitlines()) == 3
