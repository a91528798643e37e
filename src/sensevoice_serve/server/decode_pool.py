"""Uploads are decoded and segmented in worker processes: PyAV holds the GIL, so threads would not help.

A worker that dies (killed, or a codec crash) breaks the whole ``ProcessPoolExecutor``: every task in it
fails. The pool is then rebuilt; a request whose upload was in the broken pool gets a clear 503, and a
request that merely arrived after the break is sent to the new pool, since its upload cannot be the cause.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from ..decoding import DecodeOptions
from ..errors import DecodeWorkerDied
from ..longform import SegmentationOptions, default_detector, stream_utterances

logger = logging.getLogger(__name__)


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


def _exit_with_parent(parent: int) -> None:
    """Nothing shuts the pool down when the server is killed (SIGKILL, the OOM killer): leave on our own
    rather than linger as an orphan holding the VAD in memory."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)


def _init_worker(usual: SegmentationOptions) -> None:
    import torch

    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    # Each worker is one decode lane: torch (the VAD) must not fan out over the cores the model is using.
    torch.set_num_threads(1)
    default_detector(usual)  # loads the VAD network (the slow part) once, before the first upload


def decode_upload(data: bytes, max_duration: float, options: SegmentationOptions) -> DecodedUpload:
    """Runs in a worker: decode (stopping at ``max_duration``), then cut into what the model will see."""
    stream, utterances = stream_utterances(
        data, DecodeOptions(), options, default_detector(options), max_duration
    )
    pieces = [
        DecodedPiece(item.utterance.samples, item.utterance.offset, item.channel) for item in utterances
    ]
    return DecodedUpload(stream.duration, list(stream.warnings), pieces)


class DecodePool:
    def __init__(self, workers: int, usual: SegmentationOptions):
        self.workers = workers
        self.usual = usual
        self._lock = threading.Lock()
        self._executor, self._started = self._start()

    def _start(self) -> tuple[ProcessPoolExecutor, list[Future]]:
        # spawn: a forked child would inherit torch's thread pools, the model's memory and the sockets.
        executor = ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.usual,),
        )
        # The executor spawns a worker per task while none is idle: start them all now, not during a request.
        return executor, [executor.submit(os.getpid) for _ in range(self.workers)]

    def wait_started(self) -> None:
        """Block until a worker has loaded its modules and the VAD (a task only goes to such a worker)."""
        for future in wait(self._started).done:
            future.result()

    async def decode(self, data: bytes, max_duration: float, options: SegmentationOptions) -> DecodedUpload:
        loop = asyncio.get_running_loop()
        executor = self._executor
        try:
            task = loop.run_in_executor(executor, decode_upload, data, max_duration, options)
        except BrokenProcessPool:  # broken before this upload got there: it is not the cause
            self._replace(executor)
            executor = self._executor
            task = loop.run_in_executor(executor, decode_upload, data, max_duration, options)
        try:
            return await task
        except BrokenProcessPool as error:
            self._replace(executor)
            raise DecodeWorkerDied(
                "the audio decoder process died while decoding this upload (it has been restarted); "
                "retry, and if it happens again this file crashes the decoder"
            ) from error

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """Rebuild the pool once, however many requests saw it break."""
        with self._lock:
            if self._executor is broken:
                logger.warning("a decode worker died: restarting the decode pool")
                broken.shutdown(wait=False, cancel_futures=True)
                self._executor, self._started = self._start()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
