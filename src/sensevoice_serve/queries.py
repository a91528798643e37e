"""The four query frames SenseVoiceSmall prepends to every utterance, as rows of its query embedding table.

Kept apart from ``model`` (torch) because the int8 runtime and decoding need them without torch.
"""

from __future__ import annotations

# Rows of the query embedding table, fixed by the trained checkpoint.
LANGUAGE_QUERY = {"auto": 0, "zh": 3, "en": 4, "yue": 7, "ja": 11, "ko": 12, "nospeech": 13}
EVENT_QUERY = 1
EMOTION_QUERY = 2
TEXTNORM_QUERY = {"withitn": 14, "woitn": 15}
NUM_QUERY_EMBEDDINGS = 16
NUM_QUERY_FRAMES = 4  # language, event, emotion, text-norm: prepended to every utterance


def language_row(language: str) -> int:
    """The query embedding row of a language choice ("auto", "zh", ...)."""
    return LANGUAGE_QUERY[language]


def textnorm_row(use_itn: bool) -> int:
    """The query embedding row asking for text with (or without) inverse text normalisation."""
    return TEXTNORM_QUERY["withitn" if use_itn else "woitn"]
