from __future__ import annotations

import random

import pytest

from sensevoice_serve.results import Segment, Token, Transcription, render_emoji
from sensevoice_serve.tokenizer import EMOTION_TAGS, EVENT_TAGS, LANGUAGE_TAGS, TEXTNORM_TAGS


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("<|en|><|NEUTRAL|><|Speech|><|woitn|>and so my fellow americans", "and so my fellow americans"),
        ("<|zh|><|HAPPY|><|BGM|><|withitn|>你好。", "🎼你好。😊"),
        ("<|en|><|SAD|><|Laughter|><|withitn|>Hi. <|en|><|SAD|><|Laughter|><|withitn|>Bye.", "😀Hi.Bye.😔"),
        ("<|nospeech|><|Event_UNK|><|woitn|>", "❓"),
        ("<|ja|><|EMO_UNKNOWN|><|Cough|><|woitn|>えー", "🤧えー"),
    ],
)
def test_emoji_form(raw: str, expected: str) -> None:
    assert render_emoji(raw) == expected


def _random_raw_texts(count: int) -> list[str]:
    rng = random.Random(7)
    words = ["hello", "world", "你好", "世界", "Hi.", "ok", ""]
    texts = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 3)):
            parts.append(
                f"<|{rng.choice(LANGUAGE_TAGS)}|><|{rng.choice(EMOTION_TAGS)}|>"
                f"<|{rng.choice(EVENT_TAGS)}|><|{rng.choice(TEXTNORM_TAGS)}|>"
                + " ".join(rng.choice(words) for _ in range(rng.randint(0, 3)))
            )
        texts.append("".join(parts))
    return texts


@pytest.mark.parity
def test_emoji_form_matches_the_reference() -> None:
    postprocess = pytest.importorskip("funasr.utils.postprocess_utils").rich_transcription_postprocess
    for raw in _random_raw_texts(400):
        assert render_emoji(raw) == postprocess(raw), raw


def test_transcription_aggregates_segments() -> None:
    def segment(start: float, end: float, language: str, text: str) -> Segment:
        tokens = [Token(1, text, start, end)]
        raw = f"<|{language}|>{text}"
        return Segment(start, end, text, raw, language, "HAPPY", 0.5 + start / 100, itn=True, tokens=tokens)

    result = Transcription(
        "a.wav", 30.0, [segment(0, 2, "en", "hi"), segment(2, 20, "zh", "你好"), segment(20, 21, "en", "")]
    )
    assert result.language == "zh"  # most speech time, not most segments
    assert result.text == "hi 你好"
    assert result.emotion == "HAPPY" and result.emotion_prob == pytest.approx(0.7)
    assert len(result.tokens) == 3
    data = result.to_dict()
    assert data["raw_text"] == "<|en|>hi<|zh|>你好<|en|>"
    assert len(data["segments"]) == 3
