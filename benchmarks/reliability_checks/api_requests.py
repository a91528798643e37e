"""Fuzzed HTTP requests to the two transcription endpoints, as Hypothesis strategies.

A request is damaged files (``mutations.FuzzCase``, sometimes none or clean) with odd names and part types,
form fields from valid values, wrong ones and free text, and now and then a damaged multipart framing: a
body cut short, a flipped byte in the part headers, a wrong Content-Type, or chunked transfer.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import httpx
from hypothesis import strategies as st

from .mutations import FuzzCase, fuzz_cases

ENDPOINTS = {"openai": ("/v1/audio/transcriptions", "file"), "native": ("/v1/transcribe", "files")}
# None, or one more than the endpoint takes (the native one: the server's default max_files_per_request).
ODD_FILE_COUNTS = {"openai": (0, 2), "native": (0, 17)}
PRINTABLE = st.characters(min_codepoint=32, max_codepoint=126)

_free_text = st.text(max_size=40)
_numbers = st.one_of(
    st.sampled_from(("0", "0.001", "-5", "30.0001", "1e9", "nan", "inf", "-inf", "1e400", "x")),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
_booleans = ("true", "false", "1", "0", "yes", "no", "on", "off")
_languages = ("auto", "en", "zh", "yue", "ja", "ko", "nospeech", "EN")
# Values the server takes, so that most requests get as far as decoding and transcribing.
VALID = {
    "openai": {
        "model": st.sampled_from(("whisper-1", "sensevoice", "")),
        "language": st.sampled_from(_languages),
        "response_format": st.sampled_from(("json", "text", "srt", "vtt", "verbose_json")),
        "timestamp_granularities[]": st.sampled_from(("word", "segment")),
        "prompt": st.text(max_size=200),
        "temperature": st.sampled_from(("0", "0.2", "1")),
    },
    "native": {
        "language": st.sampled_from(_languages),
        "use_itn": st.sampled_from(_booleans),
        "ban_emo_unk": st.sampled_from(_booleans),
        "vad": st.sampled_from(("auto", "on", "off")),
        "max_segment_seconds": st.sampled_from(("1", "5", "10.5", "30")),
        "split_channels": st.sampled_from(_booleans),
    },
}
# Anything at all: wrong values, empty ones, free text, numbers that are not.
WRONG = {
    "openai": {
        "model": st.one_of(st.just("m" * 300), _free_text),
        "language": st.one_of(st.sampled_from(("xx", "", "auto\x00")), _free_text),
        "response_format": st.one_of(st.sampled_from(("xml", "", "JSON")), _free_text),
        "timestamp_granularities[]": st.one_of(st.sampled_from(("char", "")), _free_text),
        "prompt": st.text(min_size=1000, max_size=3000),
        "temperature": _numbers,
    },
    "native": {
        "language": st.one_of(st.sampled_from(("xx", "")), _free_text),
        "use_itn": st.one_of(st.sampled_from(("2", "", "null", "maybe")), _free_text),
        "ban_emo_unk": st.one_of(st.sampled_from(("2", "", "null")), _free_text),
        "vad": st.one_of(st.sampled_from(("", "sometimes")), _free_text),
        "max_segment_seconds": _numbers,
        "split_channels": st.one_of(st.sampled_from(("2", "", "null")), _free_text),
    },
}
CONTENT_TYPES = (
    "",
    "multipart/form-data",
    "multipart/form-data; boundary=",
    "multipart/form-data; boundary=other",
    "application/x-www-form-urlencoded",
    "application/json",
    "text/plain",
)


@dataclass(frozen=True)
class Framing:
    """Damage to the request around the files: kind is cut, flip, content-type or chunked."""

    kind: str
    position: int = 0
    value: str = ""


@dataclass(frozen=True)
class FuzzRequest:
    endpoint: str
    files: tuple[tuple[str, str | None, FuzzCase], ...]  # file name, part Content-Type, content
    fields: tuple[tuple[str, str], ...]
    framing: Framing | None

    def encoded(self, corpus: dict[str, bytes]) -> tuple[str, dict[str, str], bytes, bool]:
        """(path, headers, body, chunked) as this request goes on the wire."""
        path, file_field = ENDPOINTS[self.endpoint]
        values: dict[str, list[str]] = defaultdict(list)
        for name, value in self.fields:
            values[name].append(value)
        parts = [
            (file_field, (name, case.build(corpus), *([content_type] if content_type else [])))
            for name, content_type, case in self.files
        ]
        request = httpx.Request("POST", "http://server" + path, files=parts or None, data=dict(values))
        headers = {"Content-Type": request.headers.get("Content-Type", "")}
        body = request.read()
        chunked = False
        if self.framing is not None:
            if self.framing.kind == "cut":
                body = body[: self.framing.position % (len(body) + 1)]
            elif self.framing.kind == "flip" and body:
                damaged = bytearray(body)
                damaged[self.framing.position % len(damaged)] ^= 0xFF
                body = bytes(damaged)
            elif self.framing.kind == "content-type":
                headers["Content-Type"] = self.framing.value
            else:
                chunked = True
        return path, headers, body, chunked


_framings = st.one_of(
    st.builds(Framing, st.just("cut"), st.integers(0, 1 << 20)),
    st.builds(Framing, st.just("flip"), st.integers(0, 400)),
    st.builds(
        Framing, st.just("content-type"), value=st.one_of(st.sampled_from(CONTENT_TYPES), st.text(PRINTABLE))
    ),
    st.builds(Framing, st.just("chunked")),
)


@st.composite
def fuzz_requests(draw: st.DrawFn, corpus: dict[str, bytes]) -> FuzzRequest:
    endpoint = draw(st.sampled_from(sorted(ENDPOINTS)))
    file_count = draw(st.integers(1, 1 if endpoint == "openai" else 3))
    if draw(st.integers(0, 19)) == 0:  # none, or more than the endpoint takes
        file_count = draw(st.sampled_from(ODD_FILE_COUNTS[endpoint]))
    names = st.one_of(
        st.sampled_from(("clip.wav", "a.mp3", "", "../../etc/passwd", "x" * 300)), st.text(max_size=60)
    )
    types = st.one_of(st.none(), st.sampled_from(("audio/wav", "application/octet-stream", "text/plain", "")))
    files = tuple(
        (draw(names), draw(types), draw(fuzz_cases(corpus, min_mutations=0))) for _ in range(file_count)
    )
    values = VALID[endpoint] if draw(st.integers(0, 3)) else WRONG[endpoint]
    chosen = draw(st.lists(st.sampled_from(sorted(values)), max_size=4))
    fields = tuple((name, draw(values[name])) for name in chosen)
    framing = draw(st.one_of(st.none(), _framings)) if draw(st.integers(0, 9)) == 0 else None
    return FuzzRequest(endpoint, files, fields, framing)
