"""Hotwords are compiled before their audio is decoded, and a phrase the model cannot write is reported: in
each result of the Python API, once on the CLI's stderr."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest

from sensevoice_serve.cli import main
from sensevoice_serve.decoding import BatchScores, DecodeOptions
from sensevoice_serve.pipeline import SenseVoice

from .conftest import shared_audio

UNWRITABLE = "Ωμέγα"  # not in the tiny checkpoint's tokenizer
SKIPPED = f"hotword {UNWRITABLE!r} skipped"


def test_python_api_results_name_a_skipped_hotword(tiny_engine: SenseVoice) -> None:
    clips = [shared_audio("zh_sample.wav"), shared_audio("jfk.flac")]
    results = tiny_engine.transcribe(clips, hotwords=[UNWRITABLE, "ab"])
    for result in results:
        assert [w for w in result.warnings if SKIPPED in w] == [
            f"{SKIPPED}: the model cannot write {UNWRITABLE!r}"
        ]
    assert not tiny_engine.transcribe(clips[0], hotwords=["ab"])[0].warnings


def test_the_graph_is_compiled_before_the_batch_is_scored(
    tiny_engine: SenseVoice, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoder = tiny_engine.decoder
    monkeypatch.setattr(decoder, "_graphs", OrderedDict())  # nothing compiled by earlier tests
    cached_when_scored: list[bool] = []
    score = decoder.score

    def spy(encoded, lengths, options: list[DecodeOptions]) -> BatchScores:
        cached_when_scored.extend(o.hotwords in decoder._graphs for o in options)
        return score(encoded, lengths, options)

    monkeypatch.setattr(decoder, "score", spy)
    tiny_engine.transcribe(shared_audio("zh_sample.wav"), hotwords=["ab", "abc:2"])
    assert cached_when_scored == [True]


def test_cli_warns_once_of_a_skipped_hotword(tiny_model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    clips = [str(shared_audio("zh_sample.wav")), str(shared_audio("jfk.flac"))]
    flags = ["--dtype", "fp32", "--hotwords", f"{UNWRITABLE},ab"]
    assert main(["transcribe", "--model", str(tiny_model_dir), *flags, *clips]) == 0
    assert capsys.readouterr().err.count(SKIPPED) == 1
