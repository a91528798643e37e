"""Uploads are decoded and segmented in worker processes: PyAV holds the GIL, so threads would not help.

A worker that dies (killed, or a codec crash) breaks the whole ``ProcessPoolExecutor``; the pool is then
rebuilt, the request that met the crash gets a clear error, and later requests are served as before.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from ..decoding import DecodeOptions
from ..errors import DecodeWorkerDied
from ..longform import SegmentationOptions, default_detector, stream_utterances


@dataclass
class DecodedPiece:
    samples: np.ndarray
    offset: float
    channel: int | None


@dataclass
class DecodedUpload:
    duration: float
    warnings: list[str]
    pieces: list[DecodedPiece]


_detectors: dict[SegmentationOptions, object] = {}


def _init_worker() -> None:
    import torch

    # Each worker is one decode lane; torch (the VAD) must not fan out over cores the model is using.
    torch.set_num_threads(1)


def decode_upload(data: bytes, max_duration: float, options: SegmentationOptions) -> DecodedUpload:
    """Runs in a worker: decode, then cut into the bounded utterances the model will see."""
    if options not in _detectors:
        _detectors[options] = default_detector(options)
    stream, utterances = stream_utterances(data, DecodeOptions(), options, _detectors[options], max_duration)
    pieces = [
        DecodedPiece(item.utterance.samples, item.utterance.offset, item.channel) for item in utterances
    ]
    return DecodedUpload(stream.duration, list(stream.warnings), pieces)


class DecodePool:
    def __init__(self, workers: int):
        self.workers = workers
        self._lock = threading.Lock()
        self._executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        # spawn: a forked child would inherit torch's thread pools and the server's sockets.
        context = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(self.workers, mp_context=context, initializer=_init_worker)

    async def decode(self, data: bytes, max_duration: float, options: SegmentationOptions) -> DecodedUpload:
        executor = self._executor
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, decode_upload, data, max_duration, options)
        except BrokenProcessPool as error:
            with self._lock:
                if self._executor is executor:
                    executor.shutdown(wait=False, cancel_futures=True)
                    self._executor = self._start()
            raise DecodeWorkerDied(
                "the audio decoder process died while decoding this upload; retry"
            ) from error

    def worker_pids(self) -> list[int]:
        return [process.pid for process in list(self._executor._processes.values())]

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
