"""Output formats: json, txt, srt, vtt, tsv. The CLI and the server use these same writers."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .results import Segment, Token, Transcription, render_tokens

MAX_CUE_CHARS = 80  # longer segments are split into several cues at token times
VTT_HEADER = "WEBVTT\n\n"
TSV_HEADER = "start\tend\ttext"


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


def to_json_line(transcription: Transcription) -> str:
    """One line of JSON Lines."""
    return json.dumps(transcription.to_dict(), ensure_ascii=False) + "\n"


def to_txt(transcription: Transcription) -> str:
    return transcription.text + "\n"


def to_srt(transcription: Transcription, first_number: int = 1) -> str:
    blocks = [
        f"{i}\n{_timestamp(c.start, ',')} --> {_timestamp(c.end, ',')}\n{c.text}\n"
        for i, c in enumerate(cues(transcription), start=first_number)
    ]
    return "\n".join(blocks)


def _vtt_cues(transcription: Transcription) -> str:
    blocks = [
        f"{_timestamp(c.start, '.')} --> {_timestamp(c.end, '.')}\n{c.text}\n" for c in cues(transcription)
    ]
    return "\n".join(blocks)


def to_vtt(transcription: Transcription) -> str:
    return VTT_HEADER + _vtt_cues(transcription)


def _tsv_rows(transcription: Transcription) -> list[str]:
    return [
        f"{round(c.start * 1000)}\t{round(c.end * 1000)}\t{_one_field(c.text)}" for c in cues(transcription)
    ]


def to_tsv(transcription: Transcription) -> str:
    return "\n".join([TSV_HEADER, *_tsv_rows(transcription)]) + "\n"


def _one_field(text: str) -> str:
    return text.replace("\t", " ").replace("\n", " ")


WRITERS: dict[str, Callable[[Transcription], str]] = {
    "json": to_json,
    "txt": to_txt,
    "srt": to_srt,
    "vtt": to_vtt,
    "tsv": to_tsv,
}


class StreamWriter:
    """Results of several files in one stream (the CLI's standard output), each format in its own way.

    json is always JSON Lines, one object per file naming its "source". With several files, vtt has one
    header and a NOTE naming each file, tsv one header and a first column naming the file, txt the file's
    name and a tab before each line, and srt numbers its cues on across files. One file's vtt, tsv, txt
    and srt are exactly what ``WRITERS`` write.
    """

    def __init__(self, output_format: str, several: bool) -> None:
        self._format = output_format
        self._several = several
        self._files = 0
        self._srt_cues = 0

    def render(self, transcription: Transcription) -> str:
        self._files += 1
        if self._format == "json":
            return to_json_line(transcription)
        if not self._several:
            return WRITERS[self._format](transcription)
        first = self._files == 1
        source = _one_field(transcription.source)
        if self._format == "vtt":
            note = f"NOTE {source.replace('-->', '->')}\n\n"
            return (VTT_HEADER if first else "\n") + note + _vtt_cues(transcription)
        if self._format == "tsv":
            rows = [f"{source}\t{row}" for row in _tsv_rows(transcription)]
            return "".join(row + "\n" for row in ([f"file\t{TSV_HEADER}"] if first else []) + rows)
        if self._format == "srt":
            text = to_srt(transcription, first_number=self._srt_cues + 1)
            separator = "\n" if self._srt_cues and text else ""  # a blank line between cues
            self._srt_cues += len(cues(transcription))
            return separator + text
        return f"{source}\t{to_txt(transcription)}"
