"""Decoding entry points: whole, per channel or in windows; and which decoder each input goes to."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import BinaryIO

import numpy as np

from ..errors import AudioDecodeError
from .checks import check_duration, checked_pieces, validated_samples
from .ffmpeg import ffmpeg_pieces
from .libsndfile import is_wav, open_with_soundfile, soundfile_pieces, wav_truncation
from .types import SAMPLE_RATE, Audio, AudioInput, input_label


def decode_audio(source: AudioInput, *, max_duration: float | None = None, name: str | None = None) -> Audio:
    """Decode a path, bytes, a binary file object, samples or an ``Audio`` into 16 kHz mono float32.

    A NumPy array is taken as 16 kHz mono float samples already. ``name`` labels the result (default: the
    path, or "<bytes>"). Raises ``AudioDecodeError`` for anything that is not decodable audio and
    ``AudioTooLongError`` as soon as the audio proves longer than ``max_duration`` seconds.
    """
    if isinstance(source, Audio):
        check_duration(source.duration, max_duration)
        return source if name is None else replace(source, source=name)
    warnings: list[str] = []
    (samples,) = _joined(_pieces(source, max_duration, False, warnings))
    return Audio(samples, name or input_label(source), warnings)


def decode_audio_channels(
    source: AudioInput, *, max_duration: float | None = None, name: str | None = None
) -> list[Audio]:
    """Like ``decode_audio`` but one 16 kHz ``Audio`` per channel (e.g. the two sides of a call).

    Each result has ``channel`` set to its index; mono input (arrays and ``Audio`` included) gives one.
    """
    if isinstance(source, Audio):
        mono = decode_audio(source, max_duration=max_duration, name=name)
        return [replace(mono, channel=mono.channel if mono.channel is not None else 0)]
    warnings: list[str] = []
    channels = _joined(_pieces(source, max_duration, True, warnings))
    label = name or input_label(source)
    return [Audio(samples, label, list(warnings), channel=index) for index, samples in enumerate(channels)]


class AudioStream:
    """Decodes an input window by window, so a long file is never held whole.

    Iterating yields lists of 16 kHz float32 arrays, one per channel (a single mixed one unless
    ``keep_channels``), each ``window_seconds`` long but the last. ``duration`` counts what has been
    decoded so far and ``warnings`` fill in as decoding meets damage; both are final once iteration ends.
    Errors are those of ``decode_audio``, raised when reached. A stream can be iterated once.
    """

    def __init__(
        self,
        source: AudioInput,
        *,
        max_duration: float | None = None,
        keep_channels: bool = False,
        window_seconds: float = 30.0,
        name: str | None = None,
    ) -> None:
        if window_seconds <= 0:
            raise ValueError(f"window_seconds must be positive, got {window_seconds}")
        self.source = name or input_label(source)
        self.warnings: list[str] = []
        self._input = source
        self._max_duration = max_duration
        self._keep_channels = keep_channels
        self._window = max(1, round(window_seconds * SAMPLE_RATE))
        self._sample_count = 0
        self._started = False

    @property
    def duration(self) -> float:
        """Seconds decoded so far."""
        return self._sample_count / SAMPLE_RATE

    def __iter__(self) -> Iterator[list[np.ndarray]]:
        if self._started:
            raise RuntimeError("an AudioStream can be iterated only once")
        self._started = True
        return self._windows()

    def _windows(self) -> Iterator[list[np.ndarray]]:
        pending: list[np.ndarray] = []
        pending_samples = 0
        for piece in _pieces(self._input, self._max_duration, self._keep_channels, self.warnings):
            self._sample_count += piece.shape[1]
            pending.append(piece)
            pending_samples += piece.shape[1]
            while pending_samples >= self._window:
                joined = np.concatenate(pending, axis=1)
                yield list(joined[:, : self._window])
                rest = joined[:, self._window :]
                pending = [rest] if rest.shape[1] else []
                pending_samples = rest.shape[1]
        if pending:
            yield _joined(pending)


def _joined(pieces: Iterable[np.ndarray]) -> list[np.ndarray]:
    """(channels, samples) pieces -> one array per channel, copying only when there is more than one."""
    collected = list(pieces)
    whole = collected[0] if len(collected) == 1 else np.concatenate(collected, axis=1)
    return [np.ascontiguousarray(channel) for channel in whole]


def _pieces(
    source: AudioInput, max_duration: float | None, keep_channels: bool, warnings: list[str]
) -> Iterator[np.ndarray]:
    """The input as consecutive (channels, samples) float32 pieces at 16 kHz, checked as they come.

    ``warnings`` receives what decoding survived.
    """
    return checked_pieces(_decoded(source, max_duration, keep_channels, warnings), max_duration)


def _decoded(
    source: AudioInput, max_duration: float | None, keep_channels: bool, warnings: list[str]
) -> Iterator[np.ndarray]:
    """Pieces from whichever decoder suits the input, unchecked."""
    if isinstance(source, Audio):
        warnings.extend(source.warnings)
        source = source.samples
    if isinstance(source, np.ndarray):
        yield validated_samples(source)[None]
        return
    with _binary_stream(source) as stream:
        size = stream.seek(0, io.SEEK_END)
        if size == 0:
            raise AudioDecodeError("empty input (0 bytes)")
        stream.seek(0)
        header = stream.read(12)
        stream.seek(0)
        sound, wav_problem = open_with_soundfile(stream) if is_wav(header) else (None, None)
        if sound is not None:
            yield from soundfile_pieces(sound, max_duration, keep_channels, warnings)
        else:
            stream.seek(0)
            try:
                yield from ffmpeg_pieces(stream, max_duration, keep_channels, warnings)
            except AudioDecodeError as error:
                if wav_problem is None:
                    raise
                raise AudioDecodeError(wav_problem) from error  # libsndfile's reason says more
    if not warnings and (cut_off := wav_truncation(header, size)):
        warnings.append(cut_off)


@contextmanager
def _binary_stream(source: str | os.PathLike | bytes | bytearray | BinaryIO) -> Iterator[BinaryIO]:
    """The input as a seekable binary file at its first byte; files opened here get closed."""
    if isinstance(source, bytes | bytearray):
        yield io.BytesIO(source)
    elif hasattr(source, "read"):
        # Both decoders seek, and they seek to absolute offsets: a stream that cannot seek, or that the
        # caller has already read into, is copied from its current position instead.
        seekable = getattr(source, "seekable", None)
        if seekable is not None and seekable() and source.tell() == 0:
            yield source
        else:
            yield io.BytesIO(source.read())
    elif isinstance(source, str | os.PathLike):
        path = os.fsdecode(source)
        if not os.path.exists(path):
            raise AudioDecodeError(f"file not found: {path}")
        try:
            # Opened here rather than by FFmpeg so that a path is never read as a URL or protocol.
            file = open(path, "rb")  # noqa: SIM115 - closed below, after the caller's block
        except OSError as error:
            raise AudioDecodeError(f"cannot open {path}: {error.strerror}") from error
        with file:
            yield file
    else:
        raise TypeError(f"cannot decode audio from {type(source).__name__}")
