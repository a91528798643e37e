"""Samples at any rate and channel count -> float32 at 16 kHz, through FFmpeg's swresample for both decoders.

Mono is the plain mean of all channels. FFmpeg's own downmix weights channels unequally and, for float
output, does not normalise, so a loud 5.1 mix could leave [-1, 1]; the mean stays within the range of the
channels themselves, needs no clipping, and keeps speech that sits in any one channel (at 1/N of its level).
"""

from __future__ import annotations

from collections.abc import Iterable

import av
import numpy as np

from .checks import checked_rate
from .types import SAMPLE_RATE


def downmix(interleaved: np.ndarray) -> np.ndarray:
    """Mean over the channels of a (samples, channels) array."""
    channel_count = interleaved.shape[1]
    if channel_count == 1:
        return interleaved[:, 0]
    # A matrix-vector product: one BLAS call, many times faster than mean(axis=1) on interleaved data.
    return interleaved @ np.full(channel_count, 1 / channel_count, dtype=np.float32)


class MonoResampler:
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


class FrameConverter:
    """Decoded frames of any format, layout and rate -> (channels, samples) float32 pieces at 16 kHz."""

    def __init__(self, keep_channels: bool) -> None:
        self._keep_channels = keep_channels
        self._resampler: av.AudioResampler | None = None
        self._input_signature: tuple[str, str, int] | None = None
        self._layout: av.AudioLayout | None = None

    def convert(self, frame: av.AudioFrame) -> np.ndarray:
        pieces = []
        signature = (frame.format.name, frame.layout.name, checked_rate(frame.sample_rate))
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
        return interleaved.T if self._keep_channels else downmix(interleaved)[None]


def _joined_frames(frames: Iterable[av.AudioFrame | None]) -> np.ndarray:
    """The samples of packed frames, channels interleaved, as one flat array."""
    # A resampler that had nothing to convert passes frames through and "flushes" to [None].
    arrays = [frame.to_ndarray()[0] for frame in frames if frame is not None]
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.float32)
