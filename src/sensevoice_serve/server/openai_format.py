"""Results in the shapes of OpenAI's audio API, so its clients read them unmodified."""

from __future__ import annotations

import math
import unicodedata
from typing import Literal

from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ..results import Token, Transcription, render_tokens
from ..writers import WRITERS

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
Granularity = Literal["word", "segment"]
PLAIN_WRITERS = {"text": WRITERS["txt"], "srt": WRITERS["srt"], "vtt": WRITERS["vtt"]}


def _starts_word(piece: str) -> bool:
    """Sentencepiece marks a word start with "▁"; CJK scripts have no spaces, so each character is a word."""
    return piece.startswith("\u2581") or unicodedata.east_asian_width(piece[0]) in "WF"


def _is_punctuation(piece: str) -> bool:
    return all(unicodedata.category(char).startswith("P") for char in piece.lstrip("\u2581"))


def words(tokens: list[Token]) -> list[dict]:
    """Whole words with times: pieces joined, punctuation kept with the word before it."""
    groups: list[list[Token]] = []
    for token in tokens:
        if not token.text:
            continue
        if groups and not (_starts_word(token.text) and not _is_punctuation(token.text)):
            groups[-1].append(token)
        else:
            groups.append([token])
    rendered = [(render_tokens(group), group) for group in groups]
    # A bare "▁" piece before a CJK character renders as nothing: not a word.
    return [{"word": text, "start": group[0].start, "end": group[-1].end} for text, group in rendered if text]


def verbose_json(result: Transcription, granularities: list[Granularity]) -> dict:
    body = {
        "task": "transcribe",
        "language": result.language or "",
        "duration": result.duration,
        "text": result.text,
        "segments": [
            {
                "id": index,
                "seek": 0,
                "start": segment.start,
                "end": segment.end,
                "text": segment.text,
                "tokens": [token.id for token in segment.tokens],
                # Whisper's decoding statistics have no CTC counterpart; neutral values keep clients working.
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 1.0,
                "no_speech_prob": 0.0,
                # SenseVoice's extras, which OpenAI clients ignore.
                "emotion": segment.emotion,
                "event": segment.event,
                "channel": segment.channel,
            }
            for index, segment in enumerate(result.segments)
        ],
    }
    if "word" in granularities:
        body["words"] = words(result.tokens)
    return body


def render(
    result: Transcription, response_format: ResponseFormat, granularities: list[Granularity]
) -> Response:
    if response_format == "json":
        usage = {"type": "duration", "seconds": math.ceil(result.duration)}
        return JSONResponse({"text": result.text, "usage": usage})
    if response_format == "verbose_json":
        return JSONResponse(verbose_json(result, granularities))
    return PlainTextResponse(PLAIN_WRITERS[response_format](result))
