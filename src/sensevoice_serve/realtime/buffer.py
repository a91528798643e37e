"""A session's audio at 16 kHz, indexed from the session's start, holding only what may still be needed."""

from __future__ import annotations

import numpy as np

from ..audio import SAMPLE_RATE


class AudioBuffer:
    """The session's recent 16 kHz samples, indexed from its start; released from the front when unneeded."""

    def __init__(self) -> None:
        self.start = 0
        self._data = np.zeros(SAMPLE_RATE, dtype=np.float32)
        self._used = 0

    @property
    def end(self) -> int:
        return self.start + self._used

    def append(self, samples: np.ndarray) -> None:
        needed = self._used + len(samples)
        if needed > len(self._data):
            grown = np.zeros(max(needed, 2 * len(self._data)), dtype=np.float32)
            grown[: self._used] = self._data[: self._used]
            self._data = grown
        self._data[self._used : needed] = samples
        self._used = needed

    def copy(self, begin: int, end: int) -> np.ndarray:
        if begin < self.start or end > self.end:
            raise ValueError(f"samples {begin}-{end} are not all held (held: {self.start}-{self.end})")
        return self._data[begin - self.start : end - self.start].copy()

    def release_before(self, index: int) -> None:
        drop = min(max(index - self.start, 0), self._used)
        if drop:
            self._data[: self._used - drop] = self._data[drop : self._used]
            self._used -= drop
            self.start += drop
