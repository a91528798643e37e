"""WAV through libsndfile (soundfile): several times faster than FFmpeg for the commonest upload."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
import soundfile

from .checks import check_duration, checked_rate
from .resample import MonoResampler, downmix

# libsndfile reads this many frames at a time: blocks that stay in cache resample faster than one huge
# frame, and a long file never sits in memory at its own rate and channel count.
_READ_BLOCK = 1 << 16


def is_wav(header: bytes) -> bool:
    """Whether the input is for the libsndfile fast path, judged by its first 12 bytes.

    Measured on 60 s files, whole decode_audio() to 16 kHz mono, libsndfile against FFmpeg: WAV 3 against
    33 ms (16 kHz mono), 26 against 67 ms (44.1 kHz stereo). FLAC would gain less (12 against 19 ms, 66
    against 93 ms) and stays with FFmpeg: libsndfile gives up at a damaged FLAC frame where FFmpeg skips
    it and goes on, and a stream already under way cannot start over with the other decoder.
    """
    return header[:4] == b"RIFF" and header[8:12] == b"WAVE"


def open_with_soundfile(stream: BinaryIO) -> tuple[soundfile.SoundFile | None, str | None]:
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


def soundfile_pieces(
    sound: soundfile.SoundFile, max_duration: float | None, keep_channels: bool, warnings: list[str]
) -> Iterator[np.ndarray]:
    with sound:
        checked_rate(sound.samplerate)
        # libsndfile counts WAV frames from the bytes actually present, so this is exact, not a claim.
        check_duration(sound.frames / sound.samplerate, max_duration)
        resamplers = [MonoResampler(sound.samplerate) for _ in range(sound.channels if keep_channels else 1)]
        frames_read = 0
        try:
            for block in sound.blocks(_READ_BLOCK, dtype="float32", always_2d=True):
                frames_read += len(block)
                columns = list(block.T) if keep_channels else [downmix(block)]
                yield np.stack(
                    [resampler.push(column) for resampler, column in zip(resamplers, columns, strict=True)]
                )
        except soundfile.SoundFileError as error:
            warnings.append(
                f"input truncated: decoded {frames_read / sound.samplerate:.1f} s of "
                f"{sound.frames / sound.samplerate:.1f} s, then the stream ended with an error ({error})"
            )
        yield np.stack([resampler.finish() for resampler in resamplers])


def wav_truncation(header: bytes, size: int) -> str | None:
    """A warning when a WAV file holds fewer bytes than its RIFF header declares.

    Both decoders quietly read what is there, so the header is the only witness of a cut-off upload.
    """
    if not is_wav(header):
        return None
    declared_size = int.from_bytes(header[4:8], "little") + 8
    # Writers streaming to a pipe cannot go back to fill in the size and leave 0 or 0xFFFFFFFF there.
    if declared_size in (8, 0xFFFFFFFF + 8) or size >= declared_size - 1:  # a final pad byte may be missing
        return None
    return f"input truncated: the WAV file holds {size / declared_size:.0%} of the bytes its header declares"
