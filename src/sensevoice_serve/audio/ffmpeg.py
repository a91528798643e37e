"""Any container and codec FFmpeg knows, through PyAV's bundled build; damage is skipped and reported."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import av
import numpy as np

from ..errors import AudioDecodeError
from .checks import check_duration
from .resample import FrameConverter
from .types import SAMPLE_RATE

# Declared durations can be estimates (an MP3 without a Xing header is timed from its bitrate), so one
# rejects input up front only when it is clearly over the limit; decoding counts samples either way.
_DECLARED_OVER_LIMIT_FACTOR = 1.25

# A decoded duration this much shorter than the declared one means the file was cut off; below it the
# difference is encoder padding or an estimated declaration.
_TRUNCATION_MIN_SHORTFALL_S = 0.5
_TRUNCATION_MIN_SHORTFALL_FRACTION = 0.03

# Nested opens by demuxers such as concat would let an uploaded playlist read files from this machine;
# our own input never needs a protocol (it arrives as a Python file object), so allow none.
_FFMPEG_CONTAINER_OPTIONS = {"protocol_whitelist": "none"}


@dataclass
class _DecodeLog:
    """How far decoding got, and the decode errors it met on the way."""

    frame_count: int = 0
    sample_count: int = 0
    # Per error: the frames decoded before it, the seconds decoded, the reason.
    errors: list[tuple[int, float, str]] = field(default_factory=list)

    def error(self, error: av.FFmpegError) -> None:
        self.errors.append((self.frame_count, self.sample_count / SAMPLE_RATE, _reason(error)))


def ffmpeg_pieces(
    stream: BinaryIO, max_duration: float | None, keep_channels: bool, warnings: list[str]
) -> Iterator[np.ndarray]:
    """Decode the first audio stream of any container FFmpeg knows.

    Like the ffmpeg tool, a packet that fails to decode is skipped and decoding goes on, so one damaged
    packet does not cost the rest of the file; a demuxer error ends the stream.
    """
    with _open_container(stream) as container:
        audio_stream = _first_audio_stream(container)
        declared = _declared_duration(container, audio_stream)
        if (
            max_duration is not None
            and declared is not None
            and declared > max_duration * _DECLARED_OVER_LIMIT_FACTOR
        ):
            check_duration(declared, max_duration, how="it declares")
        converter = FrameConverter(keep_channels)
        log = _DecodeLog()
        for frame in _surviving_frames(container.demux(audio_stream), log):
            piece = converter.convert(frame)
            log.sample_count += piece.shape[1]
            yield piece
        piece = converter.finish()
        log.sample_count += piece.shape[1]
        yield piece
    if log.errors and log.frame_count == 0:
        raise AudioDecodeError(f"could not decode the audio ({log.errors[0][2]})")
    warnings.extend(_damage_warnings(log, declared))


def _open_container(stream: BinaryIO) -> av.container.InputContainer:
    try:
        return av.open(
            _Nameless(stream),
            mode="r",
            container_options=_FFMPEG_CONTAINER_OPTIONS,
            metadata_errors="replace",
        )
    except av.FFmpegError as error:
        raise AudioDecodeError(f"not a recognised audio or video format ({_reason(error)})") from error


def _first_audio_stream(container: av.container.InputContainer) -> av.AudioStream:
    if not container.streams.audio:
        others = sorted({other.type for other in container.streams})
        found = f" (it has only {', '.join(others)})" if others else ""
        raise AudioDecodeError(f"the input contains no audio stream{found}")
    audio_stream = container.streams.audio[0]
    if audio_stream.codec_context is None:
        raise AudioDecodeError("unsupported audio codec: this FFmpeg build has no decoder for it")
    return audio_stream


def _surviving_frames(packets: Iterator[av.Packet], log: _DecodeLog) -> Iterator[av.AudioFrame]:
    """The frames of every packet that decodes, counted in ``log``; the errors of the others go there too."""
    while True:
        try:
            packet = next(packets, None)
        except av.FFmpegError as error:
            log.error(error)
            break
        if packet is None:
            break
        try:
            frames = packet.decode()
        except av.FFmpegError as error:
            log.error(error)
            continue
        for frame in frames:
            log.frame_count += 1
            yield frame


def _damage_warnings(log: _DecodeLog, declared: float | None) -> list[str]:
    """Warnings for the decode errors met."""
    errors, decoded = log.errors, log.sample_count / SAMPLE_RATE
    skipped = [error for error in errors if error[0] < log.frame_count]
    warnings = []
    if skipped:
        _, position, reason = skipped[0]
        warnings.append(
            f"skipped {len(skipped)} undecodable packet(s), the first at {position:.1f} s ({reason}); "
            "timestamps after them may be early by a few milliseconds each"
        )
    of_declared = f" of {declared:.1f} s" if declared is not None else ""
    if len(skipped) < len(errors):
        # Errors after the last good frame: a file cut off mid-packet ends like this.
        warnings.append(
            f"input truncated: decoded {decoded:.1f} s{of_declared}, "
            f"then the stream ended with an error ({errors[-1][2]})"
        )
    elif declared is not None and declared - decoded > max(
        _TRUNCATION_MIN_SHORTFALL_S, _TRUNCATION_MIN_SHORTFALL_FRACTION * declared
    ):
        # Cut off cleanly between packets: only the declared duration tells.
        warnings.append(f"input truncated: decoded {decoded:.1f} s of the {declared:.1f} s the file declares")
    return warnings


class _Nameless:
    """A file's reading methods without its name.

    FFmpeg lets a file name's extension steer format probing (a .txt file opens as ANSI-art video); without
    the name a path probes by content alone, exactly like the same bytes uploaded.
    """

    def __init__(self, file: BinaryIO) -> None:
        self.read, self.seek, self.tell = file.read, file.seek, file.tell


def _reason(error: av.FFmpegError) -> str:
    return error.strerror or str(error)


def _declared_duration(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    """What the file says the audio stream lasts, if it says."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    # The container's duration covers all its streams, so it speaks for the audio only when alone.
    if container.duration is not None and len(container.streams) == 1:
        return container.duration / av.time_base
    return None
