"""Uploads are decoded and segmented in worker processes: PyAV holds the GIL, so threads would not help.

A worker that dies (killed, or a codec crash) breaks the whole ``ProcessPoolExecutor``: every task in it
fails. The pool is then rebuilt; a request whose upload was in the broken pool gets a clear 503, and a
request that merely arrived after the break is sent to the new pool, since its upload cannot be the cause.

Decoded samples come back through a file, not the result pipe: the worker appends each segment to a spill
file as the stream produces it, and the server maps that file. Pickling a 2-hour upload's 460 MB of samples
through the pipe would hold them three times over (the worker's copy, the pickle, the server's copy); mapped,
they are pages the kernel can drop and reread, and the worker never holds more than a segment.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import tempfile
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..decoding import DecodeOptions
from ..errors import DecodeWorkerDied
from ..longform import SegmentationOptions, default_detector, stream_utterances
from .uploads import UploadedFile

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


@dataclass
class _SpilledUpload:
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


def _init_worker(usual: SegmentationOptions) -> None:
    import torch

    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    # Each worker is one decode lane: torch (the VAD) must not fan out over the cores the model is using.
    torch.set_num_threads(1)
    default_detector(usual)  # loads the VAD network (the slow part) once, before the first upload


def decode_upload(
    upload_path: str, max_duration: float, options: SegmentationOptions, spill_path: str
) -> _SpilledUpload:
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
    return _SpilledUpload(spill_path, stream.duration, list(stream.warnings), spans)


class DecodePool:
    def __init__(self, workers: int, usual: SegmentationOptions):
        self.workers = workers
        self.usual = usual
        self._lock = threading.Lock()
        # Files of uploads in flight; removed with the pool, so a worker that died mid-write leaves nothing.
        self._spill_dir = tempfile.TemporaryDirectory(prefix=f"sensevoice-uploads-{os.getpid()}-")
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

    @property
    def upload_dir(self) -> str:
        """Where uploads are written for the workers to read; removed with the pool."""
        return self._spill_dir.name

    async def decode(
        self, upload: bytes | UploadedFile, max_duration: float, options: SegmentationOptions
    ) -> DecodedUpload:
        """Decode an upload (its bytes, or its file in ``upload_dir``) in a worker. The pool takes the file
        over and removes it once the worker is done with it, whatever becomes of the request."""
        if not isinstance(upload, UploadedFile):
            upload = self._store(upload)
        upload.handed_over = True
        spill_path = f"{upload.path}.f32"
        executor = self._executor
        arguments = (str(upload.path), max_duration, options, spill_path)
        try:
            try:
                future = executor.submit(decode_upload, *arguments)
            except BrokenProcessPool:  # broken before this upload got there: it is not the cause
                self._replace(executor)
                executor = self._executor
                future = executor.submit(decode_upload, *arguments)
        except BaseException:
            upload.remove()
            raise
        future.add_done_callback(lambda _: upload.remove())
        try:
            spilled = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # The client left. A queued upload is dropped; one being decoded finishes, and its file goes then.
            if not future.cancel():
                future.add_done_callback(lambda _: Path(spill_path).unlink(missing_ok=True))
            raise
        except BrokenProcessPool as error:
            Path(spill_path).unlink(missing_ok=True)  # the dead worker's partial file
            self._replace(executor)
            raise DecodeWorkerDied(
                "the audio decoder process died while decoding this upload (it has been restarted); "
                "retry, and if it happens again this file crashes the decoder"
            ) from error
        except BaseException:
            Path(spill_path).unlink(missing_ok=True)
            raise
        return spilled.load()

    def _store(self, data: bytes) -> UploadedFile:
        """Bytes handed over without HTTP (``bench``) become a file like an upload's."""
        upload = UploadedFile(self.upload_dir, "upload")
        try:
            upload.write(data)
            upload.close()
        except BaseException:
            upload.remove()
            raise
        return upload

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """Rebuild the pool once, however many requests saw it break."""
        with self._lock:
            if self._executor is broken:
                logger.warning("a decode worker died: restarting the decode pool")
                broken.shutdown(wait=False, cancel_futures=True)
                self._executor, self._started = self._start()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._spill_dir.cleanup()
