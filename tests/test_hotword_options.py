"""Beam size and hotwords reach decoding from settings, the CLI (and its bulk keys) and the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sensevoice_serve.cli import main
from sensevoice_serve.errors import InvalidOption
from sensevoice_serve.hotwords import Hotword
from sensevoice_serve.settings import Settings

from .conftest import shared_audio


def test_environment_hotwords_and_file_build_the_options(tmp_path: Path, monkeypatch) -> None:
    glossary = tmp_path / "hotwords.txt"
    glossary.write_text("# product names\nSenseVoice\n\n  Re:Zero:2 \n", encoding="utf-8")
    monkeypatch.setenv("SENSEVOICE_HOTWORDS", "ComfyUI:3, 张三")
    monkeypatch.setenv("SENSEVOICE_HOTWORDS_FILE", str(glossary))
    options = Settings().decode_options()
    assert options.beam_size == 4  # hotwords without a beam size get a beam
    assert options.hotwords == (
        Hotword("ComfyUI", 3.0),
        Hotword("张三", 1.5),
        Hotword("SenseVoice", 1.5),
        Hotword("Re:Zero", 2.0),
    )
    assert Settings().decode_options(hotwords=[], beam_size=1).hotwords == ()  # a request's replace them


def test_a_changed_hotwords_file_is_read_again(tmp_path: Path) -> None:
    glossary = tmp_path / "hotwords.txt"
    glossary.write_text("alpha\n", encoding="utf-8")
    settings = Settings(hotwords_file=str(glossary))
    assert settings.hotword_specs() == ["alpha"]
    glossary.write_text("alpha\nbeta\n", encoding="utf-8")
    assert settings.hotword_specs() == ["alpha", "beta"]


@pytest.mark.parametrize(
    "values",
    [
        {"hotwords": "x", "beam_size": 1},
        {"beam_size": 99},
        {"hotwords": "x:zero"},
        {"hotwords_file": "/no/such"},
    ],
)
def test_bad_settings_are_refused(values: dict) -> None:
    with pytest.raises(InvalidOption):
        Settings(**values).decode_options()


def _transcribe_json(model: Path, capsys: pytest.CaptureFixture, *flags: str) -> dict:
    audio = str(shared_audio("zh_sample.wav"))
    assert main(["transcribe", "--model", str(model), "--format", "json", *flags, audio]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_beam_and_hotwords_run_and_beam_one_is_greedy(tiny_model_dir: Path, capsys) -> None:
    greedy = _transcribe_json(tiny_model_dir, capsys)
    assert _transcribe_json(tiny_model_dir, capsys, "--beam-size", "1") == greedy
    boosted = _transcribe_json(tiny_model_dir, capsys, "--beam-size", "4", "--hotwords", "x,ab:2.5")
    assert boosted["segments"] and boosted["duration"] == greedy["duration"]


def test_cli_refuses_bad_hotwords_before_loading(tmp_path: Path, capsys) -> None:
    code = main(["transcribe", "--model", str(tmp_path / "absent"), "--hotwords", "x:nan:", "a.wav"])
    assert code == 2
    assert "hotword" in capsys.readouterr().err


def test_bulk_reruns_redo_files_when_hotwords_change(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    manifest = tmp_path / "results.jsonl"
    audio = str(shared_audio("zh_sample.wav"))

    def run(*flags: str) -> int:
        assert (
            main(["transcribe", "--model", str(tiny_model_dir), "--output", str(manifest), *flags, audio])
            == 0
        )
        capsys.readouterr()
        return len(manifest.read_text().splitlines())

    assert run() == 1
    assert run("--beam-size", "1") == 1  # greedy either way: already done
    assert run("--hotwords", "x") == 2
    assert run("--hotwords", "x") == 2
    assert run("--hotwords", "x:3") == 3


def test_python_api_takes_beam_and_hotwords(tiny_engine) -> None:
    audio = shared_audio("zh_sample.wav")
    greedy = tiny_engine.transcribe(audio)[0]
    assert tiny_engine.transcribe(audio, beam_size=1)[0].raw_text == greedy.raw_text
    boosted = tiny_engine.transcribe(audio, hotwords=["x", "ab:2"], hotword_score=2.0)[0]
    assert boosted.duration == greedy.duration
    with pytest.raises(InvalidOption, match="beam"):
        tiny_engine.transcribe(audio, beam_size=1, hotwords=["x"])
