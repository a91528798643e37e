"""What runs in a decode process: decode one upload's file, cut it into what the model will see, and spill
the samples to a file.

Decoded samples come back through a file, not the result pipe: the worker appends each segment to a spill
file as the stream produces it, and the server maps that file. Pickling a 2-hour upload's 460 MB of samples
through the pipe would hold them three times over (the worker's copy, the pickle, the server's copy); mapped,
they are pages the kernel can drop and reread, and the worker never holds more than a segment.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..decoding import DecodeOptions
from ..longform import SegmentationOptions, default_detector, stream_utterances


@dataclass
class DecodedPiece:
    """One utterance of an upload: a VAD segment, or the whole file when it is short."""

    samples: np.ndarray
    offset: float
    channel: int | None


@dataclass
class DecodedUpload:
    duration: float
    warnings: list[str]
    pieces: list[DecodedPiece]


@dataclass
class SpilledUpload:
    """What a worker sends back: the spill file and where each piece's samples are in it."""

    path: str
    duration: float
    warnings: list[str]
    spans: list[tuple[int, int, float, int | None]]  # first sample, sample count, offset, channel

    def load(self) -> DecodedUpload:
        """Map the samples; the file is unlinked at once and its space freed when the last view goes."""
        try:
            total = sum(count for _, count, _, _ in self.spans)
            # "c": private pages, so the arrays are writable as torch wants; nothing is written back.
            samples = np.memmap(self.path, np.float32, mode="c") if total else np.empty(0, np.float32)
        finally:
            os.unlink(self.path)
        pieces = [
            DecodedPiece(samples[first : first + count], offset, channel)
            for first, count, offset, channel in self.spans
        ]
        return DecodedUpload(self.duration, self.warnings, pieces)


def _exit_with_parent(parent: int) -> None:
    """Nothing shuts the pool down when the server is killed (SIGKILL, the OOM killer): leave on our own
    rather than linger as an orphan holding the VAD in memory."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)


def init_worker() -> None:
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    # Each worker is one decode lane: the VAD must not fan out over the cores the model is using. The VAD
    # (torch and the network, ~1.5 s and ~200 MB) loads with the first upload long enough to be cut: a lane
    # that only ever sees short clips stays small and starts at once.
    os.environ["OMP_NUM_THREADS"] = "1"


def decode_upload(
    upload_path: str, max_duration: float, options: SegmentationOptions, spill_path: str
) -> SpilledUpload:
    """Runs in a worker: decode the upload's file (stopping at ``max_duration``), cut it into what the model
    will see, and spill the pieces' samples to ``spill_path`` (the server removes it whatever happens)."""
    stream, utterances = stream_utterances(
        Path(upload_path), DecodeOptions(), options, default_detector(options), max_duration
    )
    spans: list[tuple[int, int, float, int | None]] = []
    written = 0
    with open(spill_path, "wb") as spill:
        for item in utterances:
            samples = np.ascontiguousarray(item.utterance.samples, dtype=np.float32)
            spill.write(samples.data)
            spans.append((written, len(samples), item.utterance.offset, item.channel))
            written += len(samples)
    return SpilledUpload(spill_path, stream.duration, list(stream.warnings), spans)
