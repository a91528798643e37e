"""Group utterances into length-sorted batches whose padded size stays within a frame budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .audio import SAMPLE_RATE
from .decoding import DecodeOptions
from .features import num_lfr_frames

MAX_PADDING_FRACTION = 0.25


@dataclass
class Utterance:
    """A stretch of 16 kHz mono audio to run through the model, with where it sits in its source."""

    samples: np.ndarray
    options: DecodeOptions = field(default_factory=DecodeOptions)
    offset: float = 0.0

    @property
    def frames(self) -> int:
        return num_lfr_frames(len(self.samples))

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE


@dataclass
class BatchTimings:
    features: float = 0.0
    model: float = 0.0
    decoding: float = 0.0


def plan_batches(
    frame_counts: Sequence[int], max_batch_frames: int, max_batch_size: int | None = None
) -> list[list[int]]:
    """Indices grouped into batches, longest first.

    A batch's cost is its padded size (items x longest item). Sorting by length keeps the padding small,
    and an item shorter than the batch's longest by more than ``MAX_PADDING_FRACTION`` starts a new batch:
    computing padding costs as much as audio, and on a CPU batching gains less than that. An item longer
    than the budget still runs, alone.
    """
    order = sorted(range(len(frame_counts)), key=lambda i: frame_counts[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = frame_counts[current[0]] if current else frame_counts[index]
        full = max_batch_size is not None and len(current) >= max_batch_size
        too_short = frame_counts[index] < (1 - MAX_PADDING_FRACTION) * longest
        if current and (full or too_short or (len(current) + 1) * max(longest, 1) > max_batch_frames):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches
