"""One inference worker per device: waiting requests are run together as length-sorted batches.

Callers submit a request (one or more utterances, e.g. the VAD segments of a file) and get a Future. The
worker thread takes whatever is waiting, lingers at most ``max_wait`` for company so a lone request is not
delayed, plans batches within the frame budget with the same ``plan_batches`` the CLI uses, and routes each
segment back to its request. A failing batch fails only the requests in it; the worker keeps serving.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from .batching import plan_batches
from .errors import Overloaded, SenseVoiceError, ShuttingDown
from .pipeline import BatchTimings, SenseVoice, Utterance
from .results import Segment

logger = logging.getLogger(__name__)


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

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def healthy(self) -> bool:
        """The inference worker is running: False before start(), after stop() and once it has died."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(
                target=self._work, name=f"inference-{self.engine.device}", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Finish everything admitted so far, then end the worker."""
        with self._lock:
            # A request admitted after the stop marker would never run: its caller would wait forever.
            self._stopping = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

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

    def _collect(self, first: _Request) -> tuple[list[_Request], bool]:
        """The first request plus whatever arrives within max_wait, up to the frame budget."""
        requests = [first]
        frames = sum(u.frames for u in first.utterances)
        deadline = time.perf_counter() + self.max_wait
        while frames < self.max_batch_frames:
            timeout = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return requests, True
            requests.append(item)
            frames += sum(u.frames for u in item.utterances)
        return requests, False

    def _work(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            requests, stopping = self._collect(first)
            self._run(requests)
        # Drain what was admitted before stop() so no caller is left waiting.
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                self._run([item])

    def _run(self, requests: list[_Request]) -> None:
        items = [(request, index) for request in requests for index in range(len(request.utterances))]
        utterances = [request.utterances[index] for request, index in items]
        for batch in plan_batches([u.frames for u in utterances], self.max_batch_frames, self.max_batch_size):
            members = [items[i] for i in batch]
            alive = []
            for request, index in members:
                if request.future.done():  # cancelled by its caller: release its queue slot
                    self._finish(request)
                else:
                    alive.append((request, index))
            if not alive:
                continue
            started = time.perf_counter()
            for request, _ in alive:
                request.started = request.started or started
            timings = BatchTimings()
            try:
                segments = self.engine.run_batch([r.utterances[i] for r, i in alive], timings)
            except Exception as error:  # one bad batch must not take the worker down
                logger.exception("batch of %d failed", len(alive))
                failure = (
                    error
                    if isinstance(error, SenseVoiceError)
                    else SenseVoiceError(f"inference failed: {error}")
                )
                for request, _ in alive:
                    self._finish(request, failure)
                continue
            self._report(alive, timings)
            # A request waits for the whole batch once, however many of its utterances are in it.
            for request in {id(r): r for r, _ in alive}.values():
                for name in ("features", "model", "decoding"):
                    setattr(request.timings, name, getattr(request.timings, name) + getattr(timings, name))
            for (request, index), segment in zip(alive, segments, strict=True):
                request.segments[index] = segment
                request.remaining -= 1
                if request.remaining == 0:
                    self._finish(request)

    def _report(self, members: list[tuple[_Request, int]], timings: BatchTimings) -> None:
        if self.on_batch is None:
            return
        batch = [r.utterances[i] for r, i in members]
        self.on_batch(
            BatchReport(
                len(batch), max(u.frames for u in batch) * len(batch), sum(u.duration for u in batch), timings
            )
        )

    def _finish(self, request: _Request, error: BaseException | None = None) -> None:
        if request.finished:
            return
        request.finished = True
        with self._lock:
            self._pending -= 1
        if request.future.done():
            return
        if error is not None:
            request.future.set_exception(error)
            return
        queue_seconds = (request.started or time.perf_counter()) - request.submitted
        request.future.set_result(RequestResult(list(request.segments), queue_seconds, request.timings))  # type: ignore[arg-type]
