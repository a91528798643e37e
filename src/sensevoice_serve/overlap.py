"""A batch's two halves on two threads, so that the CPU's part of one batch overlaps the device's part of
the next.

The scheduler's worker runs ``start``: features, forward and CTC scores, everything that touches the device
and the only part that can run out of its memory (the worker still splits a batch that does). It hands the
rest (``finish``: tags, text, token times, beam search, on the CPU alone) with what to do with the result to
a finishing thread, which delivers it while the worker already runs the next batch on the device. The
hand-over holds one batch: a worker that gets two batches ahead waits, so work never piles up between the
halves.

Off, both halves run on the worker, one after the other. That is the default on a CPU, where the model
takes every core torch is given and a finishing thread only competes with it; on by default on a GPU, where
the device runs while the CPU finishes. benchmarks/overlap.py on 2 busy cores (medians of interleaved runs,
whose wall times varied 2-5x with the machine's load): full-size model, decoding is 2 % of the engine's
time, so there is nothing to hide, and the process's CPU time was the same (73 s either way); tiny model,
decoding 16 %, overlap took 26 % more CPU time (6.9 s against 5.5 s) for no wall-time gain.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence

from .batching import BatchTimings, Utterance
from .pipeline import SenseVoice
from .results import Segment

logger = logging.getLogger(__name__)

Finish = Callable[[], list[Segment]]


class BatchStages:
    def __init__(self, engine: SenseVoice, overlap: bool | None = None) -> None:
        self.engine = engine
        self.overlap = engine.device.startswith("cuda") if overlap is None else overlap
        self._handoff: queue.Queue[tuple[Finish, Callable, Callable] | None] = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        """False only if the finishing thread died (it fails a batch that raises, and goes on)."""
        return self._thread is None or self._thread.is_alive()

    def start(self, utterances: Sequence[Utterance], timings: BatchTimings) -> Finish:
        """The device's half now (it raises what the engine raises, out of memory included); the rest,
        to hand to ``then``."""
        if not self.overlap:
            segments = self.engine.run_batch(utterances, timings)
            return lambda: segments
        return self.engine.start_batch(utterances, timings).finish

    def then(
        self,
        finish: Finish,
        deliver: Callable[[list[Segment]], None],
        fail: Callable[[Exception], None],
    ) -> None:
        """``deliver(finish())``, or ``fail(error)`` if finishing raises: at once without overlap, else on
        the finishing thread (waiting while a batch is already waiting for it)."""
        if not self.overlap:
            deliver(finish())
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._finish_batches, name="finish-batches", daemon=True)
            self._thread.start()
        self._handoff.put((finish, deliver, fail))

    def close(self) -> None:
        """Return once every batch handed over has been delivered; the finishing thread ends."""
        if self._thread is not None:
            self._handoff.put(None)
            self._thread.join()
            self._thread = None

    def _finish_batches(self) -> None:
        while (work := self._handoff.get()) is not None:
            finish, deliver, fail = work
            try:
                segments = finish()
            except Exception as error:  # one batch's failure is its requests' alone
                fail(error)
                continue
            try:
                deliver(segments)
            except Exception as error:  # a bug in delivery: the batch's requests still get an answer
                logger.exception("delivering a finished batch failed")
                fail(error)
