"""One inference worker per device: waiting requests are run together as length-sorted batches.

Callers submit a request (one or more utterances, e.g. the VAD segments of a file) and get a Future. The
worker thread takes whatever is waiting, lingers at most ``max_wait`` for company so a lone request is not
delayed, plans batches within the frame budget with the same ``plan_batches`` the CLI uses, and routes each
segment back to its request. A failing batch fails only the requests in it; the worker keeps serving. A
batch that runs out of device memory is split and retried, and the frame budget shrinks for a while.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import torch

from .batching import plan_batches
from .errors import DeviceOutOfMemory, InferenceWorkerDied, Overloaded, SenseVoiceError, ShuttingDown
from .pipeline import BatchTimings, SenseVoice, Utterance
from .results import Segment

logger = logging.getLogger(__name__)

# After running out of device memory the frame budget halves; every RECOVERY_BATCHES forwards that fit, it
# grows back by 1/RECOVERY_STEPS of the configured maximum (memory freed elsewhere is used again).
RECOVERY_BATCHES = 16
RECOVERY_STEPS = 8


@dataclass
class BatchReport:
    """What one forward did, for metrics."""

    size: int
    frames: int
    audio_seconds: float
    timings: BatchTimings


@dataclass
class _Request:
    utterances: Sequence[Utterance]
    future: Future
    submitted: float = field(default_factory=time.perf_counter)
    segments: list[Segment | None] = field(default_factory=list)
    remaining: int = 0
    started: float | None = None  # when its first batch began: queue time ends there
    timings: BatchTimings = field(default_factory=BatchTimings)
    finished: bool = False

    def __post_init__(self) -> None:
        self.segments = [None] * len(self.utterances)
        self.remaining = len(self.utterances)


_Member = tuple[_Request, int]  # one utterance of a request: the request and the utterance's index


@dataclass
class RequestResult:
    segments: list[Segment]
    queue_seconds: float
    timings: BatchTimings


class Scheduler:
    def __init__(
        self,
        engine: SenseVoice,
        max_batch_frames: int,
        max_batch_size: int | None = None,
        max_wait: float = 0.005,
        max_pending: int = 256,
        on_batch: Callable[[BatchReport], None] | None = None,
    ):
        self.engine = engine
        self.max_batch_frames = max_batch_frames
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.max_pending = max_pending
        self.on_batch = on_batch
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._pending = 0  # admitted requests not yet finished
        self._stopping = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._alive = False  # false from the moment the worker dies until it runs again
        self._held: list[_Request] = []  # what the worker has taken off the queue and not finished
        self._budget = max_batch_frames
        self._successes = 0  # forwards since the budget last changed

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def healthy(self) -> bool:
        """The inference worker is running: False before start(), after stop() and while it restarts."""
        return self._alive and self._thread is not None and self._thread.is_alive()

    @property
    def frame_budget(self) -> int:
        """Padded frames per forward now: ``max_batch_frames``, less for a while after an out-of-memory."""
        return self._budget

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._alive = True
            self._thread = threading.Thread(
                target=self._serve, name=f"inference-{self.engine.device}", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Finish everything admitted so far, then end the worker."""
        with self._lock:
            # A request admitted after the stop marker would never run: its caller would wait forever.
            self._stopping = True
            if self._thread is not None:
                self._queue.put(None)
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self._alive = False

    def submit(self, utterances: Sequence[Utterance]) -> Future[RequestResult]:
        """Admit a request, or raise at once: ``Overloaded`` when ``max_pending`` requests wait,
        ``ShuttingDown`` after stop()."""
        future: Future[RequestResult] = Future()
        if not utterances:
            future.set_result(RequestResult([], 0.0, BatchTimings()))
            return future
        with self._lock:
            if self._stopping:
                raise ShuttingDown("shutting down: no new requests are admitted")
            if self._pending >= self.max_pending:
                raise Overloaded(f"server busy: {self._pending} requests queued (limit {self.max_pending})")
            self._pending += 1
        self._queue.put(_Request(utterances, future))
        return future

    def _serve(self) -> None:
        """The worker thread. Whatever escapes the work loop (a bug, not a failing batch: those fail only
        their requests) fails the requests the worker held, and the loop starts over, so that later
        requests do not wait for a worker that is gone."""
        while True:
            try:
                self._work()
                return
            except BaseException as error:
                self._alive = False
                logger.exception("the inference worker died; restarting it")
                # The type only: the traceback is in the log, not for clients.
                failure = InferenceWorkerDied(
                    f"the inference worker failed ({type(error).__name__}); it has been restarted"
                )
                for request in self._held:
                    self._finish(request, failure)
                self._held = []
                with self._lock:
                    if self._stopping:  # the stop marker may have gone down with the worker
                        self._queue.put(None)
                self._alive = True

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                break
            self._held = [first]
            stopping = self._collect()
            self._run(self._held)
            self._held = []
            if stopping:
                break
        # Finish what was admitted before stop() so no caller is left waiting.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._held = [item]
                self._run(self._held)
                self._held = []

    def _collect(self) -> bool:
        """Add to the held request whatever arrives within max_wait, up to the frame budget; True once the
        stop marker has been taken."""
        frames = sum(u.frames for u in self._held[0].utterances)
        deadline = time.perf_counter() + self.max_wait
        while frames < self._budget:
            timeout = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is None:
                return True
            self._held.append(item)
            frames += sum(u.frames for u in item.utterances)
        return False

    def _run(self, requests: list[_Request]) -> None:
        items = [(request, index) for request in requests for index in range(len(request.utterances))]
        batches = deque(self._plan(items))
        while batches:
            members = self._still_wanted(batches.popleft())
            if not members or self._forward(members):
                continue
            if len(members) > 1:
                self._shrink_budget(members)
                batches.extendleft(reversed(self._plan(members)))
                continue
            [(request, index)] = members
            seconds = request.utterances[index].duration
            message = (
                f"the {self.engine.device} device ran out of memory on a {seconds:.1f} s piece of this audio "
                "alone; shorter segments (max_segment_seconds) need less memory"
            )
            self._finish(request, DeviceOutOfMemory(message))

    def _plan(self, items: list[_Member]) -> list[list[_Member]]:
        frames = [request.utterances[index].frames for request, index in items]
        return [
            [items[i] for i in batch] for batch in plan_batches(frames, self._budget, self.max_batch_size)
        ]

    def _still_wanted(self, batch: list[_Member]) -> list[_Member]:
        """The members whose request is still waiting: not cancelled by its caller, not failed already."""
        wanted = []
        for request, index in batch:
            if request.future.done():
                self._finish(request)  # a cancelled request gives its place back
            else:
                wanted.append((request, index))
        return wanted

    def _forward(self, members: list[_Member]) -> bool:
        """Run one batch and deliver it; False when the device ran out of memory (nothing delivered)."""
        started = time.perf_counter()
        for request, _ in members:
            request.started = request.started or started
        timings = BatchTimings()
        out_of_memory = False
        try:
            segments = self.engine.run_batch([r.utterances[i] for r, i in members], timings)
        except torch.OutOfMemoryError:
            # Retried outside this block: the exception's traceback still holds the batch's tensors.
            out_of_memory = True
        except Exception as error:  # one bad batch must not take the worker down
            logger.exception("batch of %d failed", len(members))
            failure = (
                error if isinstance(error, SenseVoiceError) else SenseVoiceError(f"inference failed: {error}")
            )
            for request, _ in members:
                self._finish(request, failure)
            return True
        if out_of_memory:
            if self.engine.device.type == "cuda":
                torch.cuda.empty_cache()
            return False
        self._grow_budget()
        self._report(members, timings)
        # A request waits for the whole batch once, however many of its utterances are in it.
        for request in {id(r): r for r, _ in members}.values():
            for name in ("features", "model", "decoding"):
                setattr(request.timings, name, getattr(request.timings, name) + getattr(timings, name))
        for (request, index), segment in zip(members, segments, strict=True):
            request.segments[index] = segment
            request.remaining -= 1
            if request.remaining == 0:
                self._finish(request)
        return True

    def _shrink_budget(self, failed: list[_Member]) -> None:
        padded = len(failed) * max(request.utterances[index].frames for request, index in failed)
        budget = max(1, min(self._budget, padded) // 2)
        logger.warning(
            "out of memory on a batch of %d utterances (%d padded frames): frame budget %d -> %d",
            len(failed), padded, self._budget, budget,
        )  # fmt: skip
        self._budget, self._successes = budget, 0

    def _grow_budget(self) -> None:
        """Back towards the configured maximum, one step per RECOVERY_BATCHES forwards that fitted."""
        if self._budget >= self.max_batch_frames:
            return
        self._successes += 1
        if self._successes >= RECOVERY_BATCHES:
            step = max(1, self.max_batch_frames // RECOVERY_STEPS)
            self._budget, self._successes = min(self.max_batch_frames, self._budget + step), 0
            if self._budget == self.max_batch_frames:
                logger.info("frame budget back to %d", self._budget)

    def _report(self, members: list[_Member], timings: BatchTimings) -> None:
        if self.on_batch is None:
            return
        batch = [r.utterances[i] for r, i in members]
        report = BatchReport(
            len(batch), max(u.frames for u in batch) * len(batch), sum(u.duration for u in batch), timings
        )
        try:
            self.on_batch(report)
        except Exception:  # metrics must not cost the batch its results
            logger.exception("the batch report failed")

    def _finish(self, request: _Request, error: BaseException | None = None) -> None:
        if request.finished:
            return
        request.finished = True
        with self._lock:
            self._pending -= 1
        queue_seconds = (request.started or time.perf_counter()) - request.submitted
        try:
            if error is not None:
                request.future.set_exception(error)
            else:
                request.future.set_result(
                    RequestResult(list(request.segments), queue_seconds, request.timings)
                )  # type: ignore[arg-type]
        except InvalidStateError:
            pass  # its caller cancelled it (client gone, timeout) after the worker last looked: nobody waits
