"""Any common audio or video input -> 16 kHz mono float32 samples for the model.

FFmpeg (through PyAV's bundled build) decodes everything; plain WAV goes to libsndfile (soundfile) instead,
which reads it several times faster. Both resample with FFmpeg's swresample (windowed sinc), so a file gives
the same samples either way. Decoding streams: ``AudioStream`` hands out fixed windows of a long file, and
``decode_audio`` joins the same pieces once.

Mono is the plain mean of all channels. FFmpeg's own downmix weights channels unequally and, for float
output, does not normalise, so a loud 5.1 mix could leave [-1, 1]; the mean stays within the range of the
channels themselves, needs no clipping, and keeps speech that sits in any one channel (at 1/N of its level).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from typing import BinaryIO

import av
import numpy as np
import soundfile

from .errors import AudioDecodeError, AudioTooLongError

SAMPLE_RATE = 16000

# libsndfile reads this many frames at a time: blocks that stay in cache resample faster than one huge
# frame, and a long file never sits in memory at its own rate and channel count.
_READ_BLOCK = 1 << 16

# Declared durations can be estimates (an MP3 without a Xing header is timed from its bitrate), so one
# rejects input up front only when it is clearly over the limit; decoding counts samples either way.
_DECLARED_OVER_LIMIT_FACTOR = 1.25

# A decoded duration this much shorter than the declared one means the file was cut off; below it the
# difference is encoder padding or an estimated declaration.
_TRUNCATION_MIN_SHORTFALL_S = 0.5
_TRUNCATION_MIN_SHORTFALL_FRACTION = 0.03

# Real recordings lie between these rates (telephony's lowest, studio converters' highest); a header outside
# is damaged or hostile. Converting from such a rate is not decoding: swresample spends seconds and up to
# gigabytes on a filter for a 16 KB WAV claiming 163 MHz, and a WAV claiming 10 Hz turns each block of
# frames into hours of samples at once.
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768_000

# Nested opens by demuxers such as concat would let an uploaded playlist read files from this machine;
# our own input never needs a protocol (it arrives as a Python file object), so allow none.
_FFMPEG_CONTAINER_OPTIONS = {"protocol_whitelist": "none"}


@dataclass
class Audio:
    """Decoded audio as the model takes it: float32, 1-D, 16 kHz, mono.

    ``source`` names where it came from, ``warnings`` say what went wrong without stopping decoding (a
    truncated file), and ``channel`` is the channel index when it is one side of a multichannel input.
    """

    samples: np.ndarray
    source: str = "<bytes>"
    warnings: list[str] = field(default_factory=list)
    channel: int | None = None

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / SAMPLE_RATE


AudioInput = str | os.PathLike | bytes | bytearray | BinaryIO | np.ndarray | Audio


def decode_audio(source: AudioInput, *, max_duration: float | None = None, name: str | None = None) -> Audio:
    """Decode a path, bytes, a binary file object, samples or an ``Audio`` into 16 kHz mono float32.

    A NumPy array is taken as 16 kHz mono float samples already. ``name`` labels the result (default: the
    path, or "<bytes>"). Raises ``AudioDecodeError`` for anything that is not decodable audio and
    ``AudioTooLongError`` as soon as the audio proves longer than ``max_duration`` seconds.
    """
    if isinstance(source, Audio):
        _check_duration(source.duration, max_duration)
        return source if name is None else replace(source, source=name)
    warnings: list[str] = []
    (samples,) = _joined(_pieces(source, max_duration, False, warnings))
    return Audio(samples, name or _label(source), warnings)


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
    label = name or _label(source)
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
        self.source = name or _label(source)
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


def _label(source: AudioInput) -> str:
    """A name for the input in results and messages."""
    if isinstance(source, Audio):
        return source.source
    if isinstance(source, np.ndarray):
        return "<array>"
    if isinstance(source, bytes | bytearray):
        return "<bytes>"
    if hasattr(source, "read"):
        file_name = getattr(source, "name", None)
        return file_name if isinstance(file_name, str) else "<stream>"
    if isinstance(source, str | os.PathLike):
        return os.fsdecode(source)
    return f"<{type(source).__name__}>"  # not an input at all: decoding says so


def _pieces(
    source: AudioInput, max_duration: float | None, keep_channels: bool, warnings: list[str]
) -> Iterator[np.ndarray]:
    """The input as consecutive (channels, samples) float32 pieces at 16 kHz, checked as they come.

    ``warnings`` receives what decoding survived. Raises once the audio passes ``max_duration`` and, at
    the end, if nothing was decoded at all. Whatever goes wrong inside a decoder leaves here as this
    input's ``AudioDecodeError`` (or ``AudioTooLongError``), never as another exception: one odd file
    must not take down a batch, a bulk run or a server request with other files in it.
    """
    decoded = 0
    # closing(): an error raised here shuts the decoder's container and file at once, not at collection.
    with closing(_decoded(source, max_duration, keep_channels, warnings)) as pieces:
        try:
            for piece in pieces:
                if piece.shape[1] == 0:
                    continue
                if not np.isfinite(piece).all():
                    raise AudioDecodeError("the input contains non-finite samples (NaN or infinity)")
                decoded += piece.shape[1]
                _check_duration(decoded / SAMPLE_RATE, max_duration, how="stopped decoding at")
                yield piece
        except (AudioDecodeError, AudioTooLongError):
            raise
        except OSError as error:
            # The input itself failed (a dying disk, a network share gone): that file fails, not the run.
            raise AudioDecodeError(f"cannot read the input: {error.strerror or error}") from error
        except Exception as error:  # noqa: BLE001 - a decoder's surprise (PyAV, libsndfile, NumPy)
            raise AudioDecodeError(f"could not decode the input ({type(error).__name__}: {error})") from error
    if decoded == 0:
        raise AudioDecodeError("the input is empty: it contains no audio samples")


def _decoded(
    source: AudioInput, max_duration: float | None, keep_channels: bool, warnings: list[str]
) -> Iterator[np.ndarray]:
    """Pieces from whichever decoder suits the input, unchecked."""
    if isinstance(source, Audio):
        warnings.extend(source.warnings)
        source = source.samples
    if isinstance(source, np.ndarray):
        yield _validated_samples(source)[None]
        return
    with _binary_stream(source) as stream:
        size = stream.seek(0, io.SEEK_END)
        if size == 0:
            raise AudioDecodeError("empty input (0 bytes)")
        stream.seek(0)
        header = stream.read(12)
        stream.seek(0)
        sound, wav_problem = _open_with_soundfile(stream) if _is_wav(header) else (None, None)
        if sound is not None:
            yield from _soundfile_pieces(sound, max_duration, keep_channels, warnings)
        else:
            stream.seek(0)
            try:
                yield from _ffmpeg_pieces(stream, max_duration, keep_channels, warnings)
            except AudioDecodeError as error:
                if wav_problem is None:
                    raise
                raise AudioDecodeError(wav_problem) from error  # libsndfile's reason says more
    if not warnings and (cut_off := _wav_truncation(header, size)):
        warnings.append(cut_off)


def _checked_rate(rate: int) -> int:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioDecodeError(
            f"unsupported sample rate {rate} Hz: audio is recorded at {MIN_SAMPLE_RATE // 1000} to "
            f"{MAX_SAMPLE_RATE // 1000} kHz, so the file's header is damaged"
        )
    return rate


def _check_duration(seconds: float, max_duration: float | None, how: str = "it is") -> None:
    if max_duration is not None and seconds > max_duration:
        raise AudioTooLongError(f"audio is longer than the {max_duration:g} s limit ({how} {seconds:.1f} s)")


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


def _validated_samples(array: np.ndarray) -> np.ndarray:
    if array.ndim != 1:
        raise AudioDecodeError(f"expected 1-D mono samples, got an array of shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        # Integer PCM has a scale (32768 for int16) that float samples in [-1, 1] do not; guessing it
        # silently would feed the model audio thousands of times too loud.
        raise AudioDecodeError(
            f"expected float samples in [-1, 1], got {array.dtype}; scale integer PCM first"
        )
    return array.astype(np.float32, copy=False)


def _is_wav(header: bytes) -> bool:
    """Whether the input is for the libsndfile fast path, judged by its first 12 bytes.

    Measured on 60 s files, whole decode_audio() to 16 kHz mono, libsndfile against FFmpeg: WAV 3 against
    33 ms (16 kHz mono), 26 against 67 ms (44.1 kHz stereo). FLAC would gain less (12 against 19 ms, 66
    against 93 ms) and stays with FFmpeg: libsndfile gives up at a damaged FLAC frame where FFmpeg skips
    it and goes on, and a stream already under way cannot start over with the other decoder.
    """
    return header[:4] == b"RIFF" and header[8:12] == b"WAVE"


def _open_with_soundfile(stream: BinaryIO) -> tuple[soundfile.SoundFile | None, str | None]:
    """The WAV input opened by libsndfile, or None to hand it to FFmpeg, with what to say if FFmpeg fails
    (when libsndfile knows better: FFmpeg calls a header without data "not a recognised format")."""
    try:
        sound = soundfile.SoundFile(stream)
    except Exception as error:  # noqa: BLE001 - LibsndfileError, and others on odd headers
        if "'data' chunk" in (getattr(error, "error_string", None) or str(error)):
            return None, "the WAV file is empty: it has no data chunk, so no audio samples"
        return None, None
    # Zero frames may just be a header its writer never finished: FFmpeg reads past it. A codec libsndfile
    # cannot seek in (GSM 6.10 from phone systems) cannot be read in blocks either: FFmpeg decodes it.
    if sound.frames == 0 or not sound.seekable():
        sound.close()
        return None, None
    return sound, None


def _soundfile_pieces(
    sound: soundfile.SoundFile, max_duration: float | None, keep_channels: bool, warnings: list[str]
) -> Iterator[np.ndarray]:
    with sound:
        _checked_rate(sound.samplerate)
        # libsndfile counts WAV frames from the bytes actually present, so this is exact, not a claim.
        _check_duration(sound.frames / sound.samplerate, max_duration)
        resamplers = [_MonoResampler(sound.samplerate) for _ in range(sound.channels if keep_channels else 1)]
        frames_read = 0
        try:
            for block in sound.blocks(_READ_BLOCK, dtype="float32", always_2d=True):
                frames_read += len(block)
                columns = list(block.T) if keep_channels else [_downmix(block)]
                yield np.stack(
                    [resampler.push(column) for resampler, column in zip(resamplers, columns, strict=True)]
                )
        except soundfile.SoundFileError as error:
            warnings.append(
                f"input truncated: decoded {frames_read / sound.samplerate:.1f} s of "
                f"{sound.frames / sound.samplerate:.1f} s, then the stream ended with an error ({error})"
            )
        yield np.stack([resampler.finish() for resampler in resamplers])


def _downmix(interleaved: np.ndarray) -> np.ndarray:
    """Mean over the channels of a (samples, channels) array."""
    channel_count = interleaved.shape[1]
    if channel_count == 1:
        return interleaved[:, 0]
    # A matrix-vector product: one BLAS call, many times faster than mean(axis=1) on interleaved data.
    return interleaved @ np.full(channel_count, 1 / channel_count, dtype=np.float32)


class _MonoResampler:
    """Streams one channel of float32 samples from ``rate`` to SAMPLE_RATE."""

    def __init__(self, rate: int) -> None:
        self._rate = rate
        self._resampler = (
            None if rate == SAMPLE_RATE else av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        )

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Resampled output so far; swresample holds back a few samples for its filter."""
        if self._resampler is None:
            return np.ascontiguousarray(samples)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples)[None], format="flt", layout="mono")
        frame.sample_rate = self._rate
        return _joined_frames(self._resampler.resample(frame))

    def finish(self) -> np.ndarray:
        """What the filter held back."""
        if self._resampler is None:
            return np.zeros(0, dtype=np.float32)
        return _joined_frames(self._resampler.resample(None))


def _joined_frames(frames: Iterable[av.AudioFrame | None]) -> np.ndarray:
    """The samples of packed frames, channels interleaved, as one flat array."""
    # A resampler that had nothing to convert passes frames through and "flushes" to [None].
    arrays = [frame.to_ndarray()[0] for frame in frames if frame is not None]
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.float32)


def _ffmpeg_pieces(
    stream: BinaryIO, max_duration: float | None, keep_channels: bool, warnings: list[str]
) -> Iterator[np.ndarray]:
    """Decode the first audio stream of any container FFmpeg knows.

    Like the ffmpeg tool, a packet that fails to decode is skipped and decoding goes on, so one damaged
    packet does not cost the rest of the file; a demuxer error ends the stream.
    """
    try:
        container = av.open(
            _Nameless(stream),
            mode="r",
            container_options=_FFMPEG_CONTAINER_OPTIONS,
            metadata_errors="replace",
        )
    except av.FFmpegError as error:
        raise AudioDecodeError(f"not a recognised audio or video format ({_reason(error)})") from error
    with container:
        if not container.streams.audio:
            others = sorted({other.type for other in container.streams})
            found = f" (it has only {', '.join(others)})" if others else ""
            raise AudioDecodeError(f"the input contains no audio stream{found}")
        audio_stream = container.streams.audio[0]
        if audio_stream.codec_context is None:
            raise AudioDecodeError("unsupported audio codec: this FFmpeg build has no decoder for it")
        declared = _declared_duration(container, audio_stream)
        if (
            max_duration is not None
            and declared is not None
            and declared > max_duration * _DECLARED_OVER_LIMIT_FACTOR
        ):
            _check_duration(declared, max_duration, how="it declares")
        converter = _FrameConverter(keep_channels)
        errors: list[tuple[int, float, str]] = []  # frames decoded before it, seconds decoded, reason
        frame_count = 0
        sample_count = 0
        packets = container.demux(audio_stream)
        while True:
            try:
                packet = next(packets, None)
            except av.FFmpegError as error:
                errors.append((frame_count, sample_count / SAMPLE_RATE, _reason(error)))
                break
            if packet is None:
                break
            try:
                frames = packet.decode()
            except av.FFmpegError as error:
                errors.append((frame_count, sample_count / SAMPLE_RATE, _reason(error)))
                continue
            for frame in frames:
                frame_count += 1
                piece = converter.convert(frame)
                sample_count += piece.shape[1]
                yield piece
        piece = converter.finish()
        sample_count += piece.shape[1]
        yield piece
    if errors and frame_count == 0:
        raise AudioDecodeError(f"could not decode the audio ({errors[0][2]})")
    warnings.extend(_damage_warnings(errors, frame_count, sample_count / SAMPLE_RATE, declared))


def _damage_warnings(
    errors: list[tuple[int, float, str]], frame_count: int, decoded: float, declared: float | None
) -> list[str]:
    """Warnings for the decode errors met (frames decoded before each, seconds decoded, reason)."""
    skipped = [error for error in errors if error[0] < frame_count]
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


class _FrameConverter:
    """Decoded frames of any format, layout and rate -> (channels, samples) float32 pieces at 16 kHz."""

    def __init__(self, keep_channels: bool) -> None:
        self._keep_channels = keep_channels
        self._resampler: av.AudioResampler | None = None
        self._input_signature: tuple[str, str, int] | None = None
        self._layout: av.AudioLayout | None = None

    def convert(self, frame: av.AudioFrame) -> np.ndarray:
        pieces = []
        signature = (frame.format.name, frame.layout.name, _checked_rate(frame.sample_rate))
        if signature != self._input_signature:
            # One resampler per stream; only a mid-stream change of format, layout or rate (which it
            # rejects) needs another. Flushing the old one keeps its buffered tail and frees it cleanly.
            if self._resampler is not None:
                pieces.append(self.finish())
            # Output keeps the first frame's layout, so a stream that changes layout still yields one
            # consistent set of channels. Packed "flt" because PyAV crashes reading planar frames of
            # eight or more channels (it walks their plane list past its end).
            self._layout = self._layout or frame.layout
            self._resampler = av.AudioResampler(format="flt", layout=self._layout, rate=SAMPLE_RATE)
            self._input_signature = signature
        pieces.append(self._piece(self._resampler.resample(frame)))
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=1)

    def finish(self) -> np.ndarray:
        """Flush the resampler: the samples its filter held back."""
        if self._resampler is None:
            return np.zeros((1, 0), dtype=np.float32)
        piece = self._piece(self._resampler.resample(None))
        self._resampler = None
        return piece

    def _piece(self, frames: Iterable[av.AudioFrame | None]) -> np.ndarray:
        interleaved = _joined_frames(frames).reshape(-1, self._layout.nb_channels)
        return interleaved.T if self._keep_channels else _downmix(interleaved)[None]


def _wav_truncation(header: bytes, size: int) -> str | None:
    """A warning when a WAV file holds fewer bytes than its RIFF header declares.

    Both decoders quietly read what is there, so the header is the only witness of a cut-off upload.
    """
    if not _is_wav(header):
        return None
    declared_size = int.from_bytes(header[4:8], "little") + 8
    # Writers streaming to a pipe cannot go back to fill in the size and leave 0 or 0xFFFFFFFF there.
    if declared_size in (8, 0xFFFFFFFF + 8) or size >= declared_size - 1:  # a final pad byte may be missing
        return None
    return f"input truncated: the WAV file holds {size / declared_size:.0%} of the bytes its header declares"
