"""Output formats: json, txt, srt, vtt, tsv. The CLI and the server use these same writers."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .results import Segment, Token, Transcription, render_tokens

MAX_CUE_CHARS = 80  # longer segments are split into several cues at token times


@dataclass
class Cue:
    start: float
    end: float
    text: str


def _token_groups(tokens: list[Token]) -> Iterator[list[Token]]:
    group: list[Token] = []
    for token in tokens:
        # Break only before a word start (a piece beginning with "▁") or between CJK characters.
        breakable = token.text.startswith("\u2581") or not token.text.isascii()
        if group and breakable and len(render_tokens([*group, token])) > MAX_CUE_CHARS:
            yield group
            group = []
        group.append(token)
    if group:
        yield group


def cues(transcription: Transcription) -> list[Cue]:
    """One cue per segment, or several at token times when its text is long."""
    result = []
    for segment in transcription.segments:
        if not segment.text:
            continue
        if len(segment.text) <= MAX_CUE_CHARS or not segment.tokens:
            result.append(Cue(segment.start, segment.end, _label(segment, segment.text)))
            continue
        groups = list(_token_groups(segment.tokens))
        for index, group in enumerate(groups):
            start = segment.start if index == 0 else group[0].start
            end = segment.end if index == len(groups) - 1 else groups[index + 1][0].start
            result.append(Cue(start, max(end, start), _label(segment, render_tokens(group))))
    return result


def _label(segment: Segment, text: str) -> str:
    return f"[channel {segment.channel}] {text}" if segment.channel is not None else text


def _timestamp(seconds: float, separator: str) -> str:
    millis = max(round(seconds * 1000), 0)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_json(transcription: Transcription) -> str:
    return json.dumps(transcription.to_dict(), ensure_ascii=False, indent=2) + "\n"


def to_txt(transcription: Transcription) -> str:
    return transcription.text + "\n"


def to_srt(transcription: Transcription) -> str:
    blocks = [
        f"{i}\n{_timestamp(c.start, ',')} --> {_timestamp(c.end, ',')}\n{c.text}\n"
        for i, c in enumerate(cues(transcription), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(transcription: Transcription) -> str:
    blocks = [
        f"{_timestamp(c.start, '.')} --> {_timestamp(c.end, '.')}\n{c.text}\n" for c in cues(transcription)
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_tsv(transcription: Transcription) -> str:
    rows = ["start\tend\ttext"]
    rows += [
        f"{round(c.start * 1000)}\t{round(c.end * 1000)}\t{c.text.replace(chr(9), ' ')}"
        for c in cues(transcription)
    ]
    return "\n".join(rows) + "\n"


WRITERS: dict[str, Callable[[Transcription], str]] = {
    "json": to_json,
    "txt": to_txt,
    "srt": to_srt,
    "vtt": to_vtt,
    "tsv": to_tsv,
}
