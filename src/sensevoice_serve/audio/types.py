"""What decoding takes and gives: the inputs it accepts, and ``Audio`` at the model's rate."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

SAMPLE_RATE = 16000


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


def input_label(source: AudioInput) -> str:
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
