"""The scheduler with a batch's CPU half on a finishing thread (``overlap``), forced on for the CPU here."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch

from sensevoice_serve.batching import BatchTimings, Utterance
from sensevoice_serve.decoding import DecodeOptions
from sensevoice_serve.errors import SenseVoiceError
from sensevoice_serve.pipeline import ScoredBatch, SenseVoice
from sensevoice_serve.results import Segment
from sensevoice_serve.scheduler import Scheduler


class HookedEngine:
    """The tiny engine, with ``on_finish(batch index)`` called as each batch's CPU half begins, an optional
    out-of-memory above ``memory_frames`` padded frames, and an event set as each batch's device half ends."""

    def __init__(
        self,
        engine: SenseVoice,
        on_finish: Callable[[int], None] | None = None,
        memory_frames: int | None = None,
    ) -> None:
        self.engine = engine
        self.device = engine.device
        self.on_finish = on_finish
        self.memory_frames = memory_frames
        self.started: list[threading.Event] = [threading.Event() for _ in range(16)]
        self.sizes: list[int] = []  # of the batches whose device half ran
        self.finishing_threads: set[str] = set()

    def run_batch(
        self, utterances: Sequence[Utterance], timings: BatchTimings | None = None
    ) -> list[Segment]:
        return self.start_batch(utterances, timings).finish()

    def start_batch(
        self, utterances: Sequence[Utterance], timings: BatchTimings | None = None
    ) -> ScoredBatch:
        padded = len(utterances) * max(u.frames for u in utterances)
        if self.memory_frames is not None and padded > self.memory_frames:
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected): {padded} frames")
        scored = self.engine.start_batch(utterances, timings)
        index = len(self.sizes)
        self.sizes.append(len(utterances))
        self.started[index].set()
        finish = scored.finish

        def hooked_finish() -> list[Segment]:
            self.finishing_threads.add(threading.current_thread().name)
            if self.on_finish is not None:
                self.on_finish(index)
            return finish()

        scored.finish = hooked_finish  # type: ignore[method-assign]
        return scored


def clip(seconds: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, int(seconds * 16000)).astype(np.float32)


def run(scheduler: Scheduler, requests: list[list[Utterance]]) -> list:
    """Submit every request before the worker starts (so they share its first round), then the results."""
    futures = [scheduler.submit(request) for request in requests]
    scheduler.start()
    try:
        return [future.result(timeout=120) for future in futures]
    finally:
        scheduler.stop()


@pytest.mark.parametrize("overlap", [True, False])
def test_the_next_batch_runs_on_the_device_while_the_last_one_finishes(
    tiny_engine: SenseVoice, overlap: bool
) -> None:
    seen: list[bool] = []

    def first_finish_sees_the_second_start(index: int) -> None:
        if index == 0:
            # With overlap the worker starts batch 1 while this thread still holds batch 0, so waiting
            # for it ends; without, batch 1 cannot have started yet (and waiting would never end).
            seen.append(engine.started[1].wait(timeout=60) if overlap else engine.started[1].is_set())

    engine = HookedEngine(tiny_engine, first_finish_sees_the_second_start)
    scheduler = Scheduler(engine, max_batch_frames=3000, max_batch_size=1, overlap=overlap)
    results = run(scheduler, [[Utterance(clip(2))], [Utterance(clip(1))]])
    assert [len(result.segments) for result in results] == [1, 1]
    assert seen == [overlap]
    assert engine.finishing_threads == ({"finish-batches"} if overlap else {f"inference-{engine.device}"})


def test_results_and_timings_are_the_same_either_way(tiny_engine: SenseVoice) -> None:
    options = [DecodeOptions(), DecodeOptions(language="en", use_itn=False), DecodeOptions(beam_size=4)]
    requests = [[Utterance(clip(1 + i, seed=i), options[i % 3])] for i in range(6)]
    results = {}
    for overlap in (False, True):
        scheduler = Scheduler(tiny_engine, max_batch_frames=3000, max_batch_size=2, overlap=overlap)
        results[overlap] = run(scheduler, requests)
    for without, with_ in zip(results[False], results[True], strict=True):
        assert [s.raw_text for s in with_.segments] == [s.raw_text for s in without.segments]
        assert [[t.id for t in s.tokens] for s in with_.segments] == [
            [t.id for t in s.tokens] for s in without.segments
        ]
        assert with_.timings.model > 0 and with_.timings.decoding > 0


def test_a_batch_that_fails_to_finish_fails_only_its_requests(tiny_engine: SenseVoice) -> None:
    def break_the_second(index: int) -> None:
        if index == 1:
            raise RuntimeError("tokenizer exploded")

    engine = HookedEngine(tiny_engine, break_the_second)
    scheduler = Scheduler(engine, max_batch_frames=3000, max_batch_size=1, overlap=True)
    futures = [scheduler.submit([Utterance(clip(1, seed))]) for seed in range(3)]
    scheduler.start()
    try:
        assert len(futures[0].result(timeout=120).segments) == 1
        with pytest.raises(SenseVoiceError, match="inference failed: tokenizer exploded"):
            futures[1].result(timeout=120)
        assert len(futures[2].result(timeout=120).segments) == 1
        assert scheduler.healthy and scheduler.pending == 0
        assert len(scheduler.submit([Utterance(clip(1))]).result(timeout=120).segments) == 1
    finally:
        scheduler.stop()


def test_a_batch_out_of_memory_is_still_split_on_the_worker(tiny_engine: SenseVoice) -> None:
    frames = Utterance(clip(1)).frames
    engine = HookedEngine(tiny_engine, memory_frames=2 * frames)  # two fit, four do not
    scheduler = Scheduler(engine, max_batch_frames=3000, overlap=True)
    results = run(scheduler, [[Utterance(clip(1, seed))] for seed in range(4)])
    assert [len(result.segments) for result in results] == [1, 1, 1, 1]
    assert engine.sizes == [2, 2]


def test_stop_returns_once_every_batch_handed_over_is_delivered(tiny_engine: SenseVoice) -> None:
    release = threading.Event()
    engine = HookedEngine(tiny_engine, lambda index: release.wait(timeout=60))
    scheduler = Scheduler(engine, max_batch_frames=3000, max_batch_size=1, overlap=True)
    scheduler.start()
    futures = [scheduler.submit([Utterance(clip(1, seed))]) for seed in range(3)]
    assert engine.started[0].wait(timeout=60)  # the first is being finished, held there
    stopping = threading.Thread(target=scheduler.stop)
    stopping.start()
    release.set()
    stopping.join(timeout=120)
    assert not stopping.is_alive()
    assert all(future.done() and len(future.result().segments) == 1 for future in futures)
