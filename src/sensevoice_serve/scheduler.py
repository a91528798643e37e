"""One inference worker per device: waiting requests are run together as length-sorted batches.

Callers submit a request (one or more utterances, e.g. the VAD segments of a file) and get a Future. The
worker thread takes whatever is waiting, lingers at most ``max_wait`` for company so a lone request is not
delayed, plans batches within the frame budget with the same ``plan_batches`` the CLI uses, and routes each
segment back to its request. A failing batch fails only the requests in it; the worker keeps serving. A
batch that runs out of device memory is split and retried, and the frame budget shrinks for a while.

Two priorities. ``HIGH`` (files, realtime finals) waits its turn, bounded by ``max_pending``. ``LOW``
(realtime partial results, which a newer one soon replaces) never waits beyond the worker's next round:
that round's high-priority requests are planned first, low ones fill only the frame budget they leave, in
batches of at most a quarter of it and of what the device runs in 0.3 s at its recent pace, run after the
high ones and only while no high request waits. A low request that does not get in fails at once with
``Skipped`` (nothing ran for it): under load partial results are dropped instead of queued, and they delay
other work by one forward at most, short unless a single low request is long.
"""

from __future__ import annotations

import enum
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

from .batching import plan_batches
from .errors import DeviceOutOfMemory, InferenceWorkerDied, Overloaded, SenseVoiceError, ShuttingDown
from .overlap import BatchStages
from .pipeline import BatchTimings, SenseVoice, Utterance
from .results import Segment

logger = logging.getLogger(__name__)

# After running out of device memory the frame budget halves; every RECOVERY_BATCHES forwards that fit, it
# grows back by 1/RECOVERY_STEPS of the configured maximum (memory freed elsewhere is used again).
RECOVERY_BATCHES = 16
RECOVERY_STEPS = 8
# Forwards cannot be interrupted, so low-priority ones are kept short: batches of at most this share of the
# frame budget and of what the device runs in LOW_FORWARD_SECONDS at its recent pace (one request longer
# than that still runs, alone). High-priority work that arrives meanwhile waits that long.
LOW_BATCH_SHARE = 4
LOW_FORWARD_SECONDS = 0.3
PACE_SMOOTHING = 0.2  # weight of the latest forward in the running seconds-per-frame estimate


class Priority(enum.IntEnum):
    HIGH = 0  # files and realtime finals: wait their turn
    LOW = 1  # realtime partials: only leftover room in the next round, else Skipped


class Skipped(Exception):
    """A low-priority request found no room in the worker's next round: nothing was run for it."""


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
    priority: Priority = Priority.HIGH
    submitted: float = field(default_factory=time.perf_counter)
    segments: list[Segment | None] = field(default_factory=list)
    remaining: int = 0
    started: float | None = None  # when its first batch began: queue time ends there
    timings: BatchTimings = field(default_factory=BatchTimings)
    finished: bool = False

    def __post_init__(self) -> None:
        self.segments = [None] * len(self.utterances)
        self.remaining = len(self.utterances)

    @property
    def frames(self) -> int:
        return sum(u.frames for u in self.utterances)


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
        overlap: bool | None = None,
    ):
        """``overlap``: finish a batch on a thread of its own while the next runs (default: on a GPU)."""
        self.engine = engine
        self._stages = BatchStages(engine, overlap)
        self.max_batch_frames = max_batch_frames
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.max_pending = max_pending
        self.on_batch = on_batch
        self._high: deque[_Request] = deque()
        self._low: deque[_Request] = deque()
        self._pending = 0  # admitted high-priority requests not yet finished
        self._stopping = False
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)  # notified on each submission and on stop()
        self._thread: threading.Thread | None = None
        self._alive = False  # false from the moment the worker dies until it runs again
        self._held: list[_Request] = []  # what the worker has taken off the queue and not finished
        self._budget = max_batch_frames
        self._successes = 0  # forwards since the budget last changed
        self._seconds_per_frame: float | None = None  # inference time per padded frame, recently

    @property
    def pending(self) -> int:
        """High-priority requests admitted and not finished (low ones never wait long enough to count)."""
        return self._pending

    @property
    def healthy(self) -> bool:
        """The inference worker is running: False before start(), after stop() and while it restarts."""
        return self._alive and self._thread is not None and self._thread.is_alive() and self._stages.alive

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
            self._stopping = True
            self._wakeup.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self._alive = False
        self._stages.close()

    def submit(
        self, utterances: Sequence[Utterance], priority: Priority = Priority.HIGH
    ) -> Future[RequestResult]:
        """Admit a request, or raise at once: ``ShuttingDown`` after stop(), ``Overloaded`` when
        ``max_pending`` high-priority requests wait. A low-priority request's future fails with ``Skipped``
        when the worker's next round has no room for it."""
        future: Future[RequestResult] = Future()
        if not utterances:
            future.set_result(RequestResult([], 0.0, BatchTimings()))
            return future
        request = _Request(utterances, future, priority)
        with self._lock:
            if self._stopping:
                raise ShuttingDown("shutting down: no new requests are admitted")
            if priority is Priority.LOW:
                self._low.append(request)
            elif self._pending >= self.max_pending:
                raise Overloaded(f"server busy: {self._pending} requests queued (limit {self.max_pending})")
            else:
                self._pending += 1
                self._high.append(request)
            self._wakeup.notify()
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
                self._alive = True

    def _work(self) -> None:
        """Rounds until stop() and nothing admitted before it is left, so no caller is left waiting."""
        while (taken := self._take()) is not None:
            high, low = taken
            self._held = high + low
            low = self._fit_low(high, low)
            self._run(high)
            self._run(low, low_priority=True)
            self._held = []

    def _take(self) -> tuple[list[_Request], list[_Request]] | None:
        """The next round: the high-priority requests that arrive within max_wait, up to the frame budget,
        and every low-priority one waiting; None once stopped with nothing left."""
        with self._wakeup:
            while not (self._high or self._low):
                if self._stopping:
                    return None
                self._wakeup.wait()
            high: list[_Request] = []
            frames = 0
            deadline = time.perf_counter() + self.max_wait
            while True:
                while self._high and frames < self._budget:
                    high.append(self._high.popleft())
                    frames += high[-1].frames
                timeout = deadline - time.perf_counter()
                if frames >= self._budget or timeout <= 0 or self._stopping:
                    break
                self._wakeup.wait(timeout)
            low = list(self._low)
            self._low.clear()
        return high, low

    def _fit_low(self, high: list[_Request], low: list[_Request]) -> list[_Request]:
        """The low-priority requests that fit in the frame budget the high ones leave, oldest first; the
        others are skipped now rather than kept for a later round."""
        room = self._budget - sum(request.frames for request in high)
        fitting = []
        for request in low:
            if request.frames <= room and not request.future.done():
                fitting.append(request)
                room -= request.frames
            else:
                self._finish(request, Skipped("no room for this low-priority request in the next batch"))
        return fitting

    def _run(self, requests: list[_Request], low_priority: bool = False) -> None:
        items = [(request, index) for request in requests for index in range(len(request.utterances))]
        batches = deque(self._plan(items, low_priority))
        while batches:
            # Read without the lock: a deque's length is safe to read, and a request that lands just after
            # only waits for this one batch.
            if low_priority and self._high:
                for request, _ in (member for batch in batches for member in batch):
                    self._finish(request, Skipped("high-priority work arrived before this batch"))
                return
            members = self._still_wanted(batches.popleft())
            if not members or self._forward(members):
                continue
            if len(members) > 1:
                self._shrink_budget(members)
                batches.extendleft(reversed(self._plan(members, low_priority)))
                continue
            [(request, index)] = members
            seconds = request.utterances[index].duration
            message = (
                f"the {self.engine.device} device ran out of memory on a {seconds:.1f} s piece of this audio "
                "alone; shorter segments (max_segment_seconds) need less memory"
            )
            self._finish(request, DeviceOutOfMemory(message))

    def _plan(self, items: list[_Member], low_priority: bool) -> list[list[_Member]]:
        frames = [request.utterances[index].frames for request, index in items]
        budget = self._budget
        if low_priority:
            budget //= LOW_BATCH_SHARE
            if self._seconds_per_frame:
                budget = min(budget, int(LOW_FORWARD_SECONDS / self._seconds_per_frame))
            budget = max(1, budget)
        return [[items[i] for i in batch] for batch in plan_batches(frames, budget, self.max_batch_size)]

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
        """Run one batch and deliver it (its CPU half maybe on the finishing thread, see ``overlap``);
        False when the device ran out of memory (nothing delivered)."""
        started = time.perf_counter()
        for request, _ in members:
            request.started = request.started or started
        timings = BatchTimings()
        out_of_memory = False
        try:
            finish = self._stages.start([r.utterances[i] for r, i in members], timings)
        except Exception as error:  # one bad batch must not take the worker down
            if not _out_of_memory(error):
                self._fail(members, error)
                return True
            # Retried outside this block: the exception's traceback still holds the batch's tensors.
            out_of_memory = True
        if out_of_memory:
            if self.engine.device.startswith("cuda"):
                sys.modules["torch"].cuda.empty_cache()
            return False
        self._grow_budget()
        self._stages.then(
            finish,
            lambda segments: self._deliver(members, timings, segments),
            lambda error: self._fail(members, error),
        )
        return True

    def _fail(self, members: list[_Member], error: Exception) -> None:
        logger.error("batch of %d failed", len(members), exc_info=error)
        if not isinstance(error, SenseVoiceError):
            error = SenseVoiceError(f"inference failed: {error}")
        for request, _ in members:
            self._finish(request, error)

    def _deliver(self, members: list[_Member], timings: BatchTimings, segments: list[Segment]) -> None:
        self._note_pace(members, timings)
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

    def _note_pace(self, members: list[_Member], timings: BatchTimings) -> None:
        padded = len(members) * max(request.utterances[index].frames for request, index in members)
        pace = (timings.features + timings.model + timings.decoding) / max(padded, 1)
        previous = self._seconds_per_frame
        self._seconds_per_frame = pace if previous is None else previous + PACE_SMOOTHING * (pace - previous)

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
        with self._lock:  # the worker and the finishing thread may both end a request (see overlap)
            if request.finished:
                return
            request.finished = True
            if request.priority is Priority.HIGH:
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


def _out_of_memory(error: Exception) -> bool:
    """torch's out-of-memory error; only the torch runtime raises it, so torch is not imported to ask."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(error, torch.OutOfMemoryError)
