"""Failures in ``transcribe_sources``: an input's own error is that input's outcome, never the run's."""

from __future__ import annotations

import errno
import io
import os
import threading
from pathlib import Path

import pytest

from sensevoice_serve import segmentation
from sensevoice_serve.audio import AudioStream
from sensevoice_serve.cli import main
from sensevoice_serve.decoding import DecodeOptions
from sensevoice_serve.errors import AudioDecodeError
from sensevoice_serve.longform import SegmentationOptions, transcribe_sources
from sensevoice_serve.pipeline import SenseVoice

from .conftest import shared_audio


class _BrokenFile(io.RawIOBase):
    """A seekable file of ``data`` whose reads raise ``error`` from byte ``fail_at`` on.

    As a dying disk's reads do, or a vanished network share's.
    """

    def __init__(self, data: bytes, fail_at: int, error: Exception) -> None:
        self._data = io.BytesIO(data)
        self._fail_at = fail_at
        self._error = error

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._data.seek(offset, whence)

    def tell(self) -> int:
        return self._data.tell()

    def readinto(self, buffer) -> int:
        room = self._fail_at - self._data.tell()
        if room <= 0:
            raise self._error
        chunk = self._data.read(min(len(buffer), room))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_an_error_of_the_sources_themselves_is_raised_not_hung_on(tiny_engine: SenseVoice) -> None:
    def sources():
        yield 0, shared_audio("zh_sample.wav")
        raise RuntimeError("the listing broke")

    raised: list[BaseException] = []

    def transcribe() -> None:
        options = (DecodeOptions(), SegmentationOptions())
        try:
            list(transcribe_sources(tiny_engine, sources(), *options, max_batch_frames=3000))
        except BaseException as error:
            raised.append(error)

    caller = threading.Thread(target=transcribe, daemon=True)
    caller.start()
    caller.join(timeout=60)
    assert not caller.is_alive(), "the caller hangs after the decoding thread died"
    assert len(raised) == 1 and isinstance(raised[0], RuntimeError)


def test_an_unreadable_input_fails_alone(tiny_engine: SenseVoice) -> None:
    dying_disk = _BrokenFile(bytes(1000), fail_at=0, error=OSError(errno.EIO, os.strerror(errno.EIO)))
    sources = [(0, dying_disk), (1, shared_audio("zh_sample.wav"))]
    outcomes = {
        outcome.key: outcome
        for outcome in transcribe_sources(
            tiny_engine, sources, DecodeOptions(), SegmentationOptions(), max_batch_frames=3000
        )
    }
    assert isinstance(outcomes[0].error, AudioDecodeError)
    assert os.strerror(errno.EIO) in str(outcomes[0].error)
    assert outcomes[1].error is None and outcomes[1].result.segments


def test_any_error_of_one_input_is_its_own(
    tiny_engine: SenseVoice, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An error nobody expected (a bug in a decoder or in segmenting) fails its input, not the run."""
    good = {name: shared_audio(name) for name in ("jfk.flac", "zh_sample.wav", "multilingual.mp3")}
    breaking = tmp_path / "breaks.mp3"
    breaking.write_bytes(good["multilingual.mp3"].read_bytes())

    class StreamThatBreaks(AudioStream):
        """Breaks in its second 30 s window, after the first window's segments have been handed over."""

        def __iter__(self):
            for index, window in enumerate(super().__iter__()):
                if self.source == str(breaking) and index == 1:
                    raise RuntimeError("a bug nobody caught")
                yield window

    monkeypatch.setattr(segmentation, "AudioStream", StreamThatBreaks)
    options = (DecodeOptions(), SegmentationOptions())

    def outcomes(sources) -> dict:
        return {o.key: o for o in transcribe_sources(tiny_engine, sources, *options, max_batch_frames=3000)}

    mixed = outcomes([("breaks", breaking), *good.items()])
    alone = outcomes(good.items())

    assert set(mixed) == {"breaks", *good}
    for name in good:
        assert mixed[name].error is None
        segments = [(s.start, s.end, [t.id for t in s.tokens]) for s in mixed[name].result.segments]
        assert segments == [(s.start, s.end, [t.id for t in s.tokens]) for s in alone[name].result.segments]
    error = mixed["breaks"].error
    assert isinstance(error, AudioDecodeError) and isinstance(error.__cause__, RuntimeError)
    assert "RuntimeError: a bug nobody caught" in str(error)
    assert mixed["breaks"].source == str(breaking)
    (logged,) = [record for record in caplog.records if record.exc_info]
    assert logged.levelname == "WARNING" and logged.exc_info[1] is error.__cause__


def test_keys_must_be_unique(tiny_engine: SenseVoice) -> None:
    recording = shared_audio("zh_sample.wav")
    outcomes = transcribe_sources(
        tiny_engine,
        [("same", recording), ("same", recording)],
        DecodeOptions(),
        SegmentationOptions(),
        max_batch_frames=3000,
    )
    with pytest.raises(ValueError, match="given twice"):
        list(outcomes)


def test_a_path_given_twice_is_transcribed_twice(tiny_model_dir: Path, tmp_path: Path) -> None:
    recording = str(shared_audio("zh_sample.wav"))
    flags = ["--format", "txt", "--output-dir", str(tmp_path)]
    assert main(["transcribe", "--model", str(tiny_model_dir), *flags, recording, recording]) == 0
    assert len(list(tmp_path.iterdir())) == 2
