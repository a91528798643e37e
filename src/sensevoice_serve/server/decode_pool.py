"""Uploads are decoded and segmented in worker processes: PyAV holds the GIL, so threads would not help.

Each worker is a lane: a ``ProcessPoolExecutor`` of one process, given one upload at a time. A worker that
dies (killed, or a codec crash) takes only its own upload with it (503), and a decode that outlasts
``deadline`` (a file that hangs the decoder) has its worker killed (422); either way the lane is replaced and
the pool is whole again for the next request. One executor of several workers would fail every upload in it
when any of its workers died, and offers no way to stop one task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import tempfile
import threading
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from ..errors import DecodeTimeout, DecodeWorkerDied
from ..longform import SegmentationOptions
from .decode_worker import DecodedUpload, SpilledUpload, decode_upload, init_worker
from .uploads import UploadedFile

logger = logging.getLogger(__name__)
RESTART_DELAY_SECONDS = 1.0  # before another try at a lane whose worker failed to start


class _Lane:
    """One decode process, in an executor of its own."""

    def __init__(self) -> None:
        # spawn: a forked child would inherit torch's thread pools, the model's memory and the sockets.
        self.executor = ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker
        )
        # The worker's pid, once it has loaded its modules: only then is the lane given work.
        self.started: Future[int] = self.executor.submit(os.getpid)
        self.timed_out = False

    def kill(self) -> None:
        """The deadline: the worker is killed, which fails its upload with ``BrokenProcessPool``."""
        self.timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.started.result(), signal.SIGKILL)


class DecodePool:
    def __init__(self, workers: int, deadline: float) -> None:
        self.deadline = deadline
        self.busy = 0  # lanes decoding an upload
        self._lock = threading.Lock()
        self._idle: list[_Lane] = []
        self._waiting: deque[Future[_Lane]] = deque()
        self._lanes: set[_Lane] = set()
        self._closed = False
        # Files of uploads in flight; removed with the pool, so a worker that died mid-write leaves nothing.
        self._spill_dir = tempfile.TemporaryDirectory(prefix=f"sensevoice-uploads-{os.getpid()}-")
        # The executor spawns its worker for its first task: all of them start now, not during a request.
        self._first = [self._add_lane() for _ in range(workers)]

    @property
    def upload_dir(self) -> str:
        """Where uploads are written for the workers to read; removed with the pool."""
        return self._spill_dir.name

    def wait_started(self) -> None:
        """Block until every worker has loaded its modules; raise if one could not."""
        for future in wait([lane.started for lane in self._first]).done:
            future.result()

    async def decode(
        self, upload: bytes | UploadedFile, max_duration: float, options: SegmentationOptions
    ) -> DecodedUpload:
        """Decode an upload (its bytes, or its file in ``upload_dir``) in a worker. The pool takes the file
        over and removes it once the worker is done with it, whatever becomes of the request."""
        if not isinstance(upload, UploadedFile):
            upload = self._store(upload)
        upload.handed_over = True
        spill_path = f"{upload.path}.f32"
        try:
            lane, future = await self._submit((str(upload.path), max_duration, options, spill_path))
        except BaseException:
            upload.remove()
            raise
        future.add_done_callback(lambda _: upload.remove())
        try:
            spilled: SpilledUpload = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # The client left. The decode finishes (or meets its deadline), and its file goes then.
            future.add_done_callback(lambda _: Path(spill_path).unlink(missing_ok=True))
            raise
        except BaseException as error:
            Path(spill_path).unlink(missing_ok=True)  # what a failed or killed worker wrote
            if isinstance(error, BrokenProcessPool):
                raise self._lane_error(lane) from error
            raise
        return spilled.load()

    def _lane_error(self, lane: _Lane) -> DecodeTimeout | DecodeWorkerDied:
        if lane.timed_out:
            return DecodeTimeout(
                f"decoding took longer than {self.deadline:g} s (this server's limit): the decoder was "
                "stopped; the file may be damaged or built to stall decoders"
            )
        return DecodeWorkerDied(
            "the audio decoder process died while decoding this upload (it has been restarted); "
            "retry, and if it happens again this file crashes the decoder"
        )

    async def _submit(self, arguments: tuple) -> tuple[_Lane, Future[SpilledUpload]]:
        """Wait for an idle lane and give it the upload, under the deadline."""
        while True:
            lane = await self._idle_lane()
            try:
                future = lane.executor.submit(decode_upload, *arguments)
            except BrokenProcessPool:  # its worker died while idle: this upload is not the cause
                self._replace(lane)
                continue
            except BaseException:
                self._release(lane)
                raise
            self._watch(lane, future)
            return lane, future

    def _watch(self, lane: _Lane, future: Future[SpilledUpload]) -> None:
        """The lane is busy from now until its upload is done, and killed if that takes past the deadline."""
        timer = threading.Timer(self.deadline, lane.kill)
        timer.daemon = True
        timer.start()
        with self._lock:
            self.busy += 1
        future.add_done_callback(lambda done: self._finished(lane, timer, done))

    async def _idle_lane(self) -> _Lane:
        waiter: Future[_Lane] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the decode pool is shut down")
            if self._idle:
                waiter.set_result(self._idle.pop())
            else:
                self._waiting.append(waiter)
        try:
            return await asyncio.wrap_future(waiter)
        except asyncio.CancelledError:
            # Cancelled while a lane was being handed over: it goes back once the hand-over is done.
            waiter.add_done_callback(lambda done: done.cancelled() or self._release(done.result()))
            raise

    def _finished(self, lane: _Lane, timer: threading.Timer, future: Future) -> None:
        """A lane's upload is done (in the executor's thread): the lane is free again, or replaced."""
        timer.cancel()
        with self._lock:
            self.busy -= 1
        if not future.cancelled() and isinstance(future.exception(), BrokenProcessPool):
            self._replace(lane)
        else:
            self._release(lane)

    def _release(self, lane: _Lane) -> None:
        """Hand an idle lane to the longest-waiting request, or keep it for the next."""
        with self._lock:
            while self._waiting:
                waiter = self._waiting.popleft()
                if waiter.set_running_or_notify_cancel():
                    waiter.set_result(lane)
                    return
            self._idle.append(lane)

    def _add_lane(self) -> _Lane:
        lane = _Lane()
        with self._lock:
            self._lanes.add(lane)
        lane.started.add_done_callback(lambda started: self._lane_started(lane, started))
        return lane

    def _lane_started(self, lane: _Lane, started: Future[int]) -> None:
        if started.exception() is None:
            self._release(lane)
            return
        logger.error("a decode worker failed to start (%s); trying again", started.exception())
        self._retire(lane)
        timer = threading.Timer(RESTART_DELAY_SECONDS, self._add_lane_unless_closed)
        timer.daemon = True
        timer.start()

    def _replace(self, lane: _Lane) -> None:
        logger.warning("a decode worker died or was stopped: starting another")
        self._retire(lane)
        self._add_lane_unless_closed()

    def _add_lane_unless_closed(self) -> None:
        if not self._closed:
            self._add_lane()

    def _retire(self, lane: _Lane) -> None:
        with self._lock:
            self._lanes.discard(lane)
        lane.executor.shutdown(wait=False, cancel_futures=True)

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

    def shutdown(self) -> None:
        """Let the decodes in progress finish (each within the deadline), then stop every worker."""
        with self._lock:
            self._closed = True
            lanes, waiting = list(self._lanes), list(self._waiting)
            self._waiting.clear()
        for waiter in waiting:
            waiter.cancel()
        for lane in lanes:
            lane.executor.shutdown(wait=True, cancel_futures=True)
        self._spill_dir.cleanup()
