"""``sensevoice transcribe --dtype int8``: the CLI runs the int8 runtime, built into the configured cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sensevoice_serve.cli import main
from sensevoice_serve.runtimes import int8_available

from .conftest import shared_audio

pytestmark = pytest.mark.skipif(not int8_available(), reason="the int8 runtime needs onnxruntime and onnx")


def test_transcribe_with_int8_builds_into_the_configured_cache(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("SENSEVOICE_CACHE_DIR", str(tmp_path))
    argv = ["transcribe", "--model", str(tiny_model_dir), "--dtype", "int8", "--format", "json"]
    assert main([*argv, str(shared_audio("jfk.flac"))]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["duration"] == pytest.approx(11.0, abs=0.1)
    assert data["segments"] and all(segment["end"] <= 11.1 for segment in data["segments"])
    assert [entry for entry in (tmp_path / "int8").iterdir() if entry.is_dir()]


def test_int8_is_listed_as_a_dtype(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["transcribe", "--help"])
    assert "int8" in capsys.readouterr().out
