from __future__ import annotations

import json

import pytest

from sensevoice_serve.results import Segment, Token, Transcription
from sensevoice_serve.writers import MAX_CUE_CHARS, WRITERS, cues


def _long_segment() -> Segment:
    words = [f"word{i}" for i in range(40)]
    tokens = [Token(i, "\u2581" + w, 1.0 + 0.3 * i, 1.0 + 0.3 * i + 0.2) for i, w in enumerate(words)]
    text = " ".join(words)
    return Segment(1.0, 14.0, text, "<|en|>" + text, language="en", tokens=tokens)


def _transcription() -> Transcription:
    tokens = [Token(9, "你", 20.1, 20.2)]
    short = Segment(20.0, 21.5, "你好", "<|zh|>你好", language="zh", tokens=tokens, channel=1)
    return Transcription("a.wav", 22.0, [_long_segment(), short])


def test_long_segments_split_at_token_times() -> None:
    result = cues(_transcription())
    assert len(result) >= 3
    assert all(len(c.text.removeprefix("[channel 1] ")) <= MAX_CUE_CHARS for c in result)
    assert all(a.end <= b.start + 1e-9 for a, b in zip(result, result[1:], strict=False))
    assert result[0].start == 1.0 and result[-2].end == 14.0
    assert " ".join(c.text for c in result[:-1]) == _long_segment().text
    assert result[-1].text == "[channel 1] 你好"


def test_srt_parses_with_a_real_parser() -> None:
    srt = pytest.importorskip("srt")
    subtitles = list(srt.parse(WRITERS["srt"](_transcription())))
    assert subtitles[0].start.total_seconds() == 1.0
    assert subtitles[-1].end.total_seconds() == 21.5


def test_vtt_parses_with_a_real_parser() -> None:
    webvtt = pytest.importorskip("webvtt")
    captions = webvtt.from_string(WRITERS["vtt"](_transcription()))
    assert captions[0].start == "00:00:01.000"
    assert captions[-1].text == "[channel 1] 你好"


def test_json_tsv_txt() -> None:
    transcription = _transcription()
    data = json.loads(WRITERS["json"](transcription))
    assert data["segments"][1]["channel"] == 1 and data["language"] == "en"
    rows = WRITERS["tsv"](transcription).splitlines()
    assert rows[0] == "start\tend\ttext" and rows[1].startswith("1000\t")
    assert WRITERS["txt"](transcription) == transcription.text + "\n"
