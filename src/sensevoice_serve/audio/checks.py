"""Checks both decoders share: sample rates, durations, samples, and one error type for whatever fails."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from contextlib import closing

import numpy as np

from ..errors import AudioDecodeError, AudioTooLongError
from .types import SAMPLE_RATE

# Real recordings lie between these rates (telephony's lowest, studio converters' highest); a header outside
# is damaged or hostile. Converting from such a rate is not decoding: swresample spends seconds and up to
# gigabytes on a filter for a 16 KB WAV claiming 163 MHz, and a WAV claiming 10 Hz turns each block of
# frames into hours of samples at once.
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768_000


def checked_pieces(
    pieces: Generator[np.ndarray, None, None], max_duration: float | None
) -> Iterator[np.ndarray]:
    """A decoder's (channels, samples) pieces at 16 kHz, checked as they come.

    Raises once the audio passes ``max_duration`` and, at the end, if nothing was decoded at all. Whatever
    goes wrong inside a decoder leaves here as this input's ``AudioDecodeError`` (or ``AudioTooLongError``),
    never as another exception: one odd file must not take down a batch, a bulk run or a server request
    with other files in it.
    """
    decoded = 0
    # closing(): an error raised here shuts the decoder's container and file at once, not at collection.
    with closing(pieces):
        try:
            for piece in pieces:
                if piece.shape[1] == 0:
                    continue
                if not np.isfinite(piece).all():
                    raise AudioDecodeError("the input contains non-finite samples (NaN or infinity)")
                decoded += piece.shape[1]
                check_duration(decoded / SAMPLE_RATE, max_duration, how="stopped decoding at")
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


def checked_rate(rate: int) -> int:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioDecodeError(
            f"unsupported sample rate {rate} Hz: audio is recorded at {MIN_SAMPLE_RATE // 1000} to "
            f"{MAX_SAMPLE_RATE // 1000} kHz, so the file's header is damaged"
        )
    return rate


def check_duration(seconds: float, max_duration: float | None, how: str = "it is") -> None:
    if max_duration is not None and seconds > max_duration:
        raise AudioTooLongError(f"audio is longer than the {max_duration:g} s limit ({how} {seconds:.1f} s)")


def validated_samples(array: np.ndarray) -> np.ndarray:
    if array.ndim != 1:
        raise AudioDecodeError(f"expected 1-D mono samples, got an array of shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        # Integer PCM has a scale (32768 for int16) that float samples in [-1, 1] do not; guessing it
        # silently would feed the model audio thousands of times too loud.
        raise AudioDecodeError(
            f"expected float samples in [-1, 1], got {array.dtype}; scale integer PCM first"
        )
    return array.astype(np.float32, copy=False)
