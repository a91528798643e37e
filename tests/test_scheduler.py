"""Scheduler behaviour the server relies on."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np
import pytest
import torch

from sensevoice_serve import scheduler as scheduler_module
from sensevoice_serve.batching import BatchTimings, Utterance
from sensevoice_serve.errors import DeviceOutOfMemory, InferenceWorkerDied, Overloaded, ShuttingDown
from sensevoice_serve.pipeline import SenseVoice
from sensevoice_serve.results import Segment
from sensevoice_serve.scheduler import (
    LOW_FORWARD_SECONDS,
    RECOVERY_BATCHES,
    RECOVERY_STEPS,
    BatchReport,
    Priority,
    Scheduler,
    Skipped,
)


def second_of_silence() -> list[Utterance]:
    return [Utterance(np.zeros(16000, dtype=np.float32))]


def test_stop_finishes_admitted_requests_then_refuses_new_ones(tiny_engine) -> None:
    scheduler = Scheduler(tiny_engine, max_batch_frames=3000)
    scheduler.start()
    admitted = scheduler.submit(second_of_silence())
    scheduler.stop()
    assert len(admitted.result(timeout=30).segments) == 1
    with pytest.raises(ShuttingDown, match="shutting down"):
        scheduler.submit(second_of_silence())


def test_max_pending_bounds_the_requests_waiting(tiny_engine) -> None:
    scheduler = Scheduler(tiny_engine, max_batch_frames=3000, max_pending=1)
    waiting = scheduler.submit(second_of_silence())  # not started: it stays pending
    with pytest.raises(Overloaded, match=r"1 requests queued \(limit 1\)"):
        scheduler.submit(second_of_silence())
    scheduler.start()
    assert len(waiting.result(timeout=30).segments) == 1
    assert len(scheduler.submit(second_of_silence()).result(timeout=30).segments) == 1
    scheduler.stop()


def test_healthy_while_the_worker_runs(tiny_engine) -> None:
    scheduler = Scheduler(tiny_engine, max_batch_frames=3000)
    assert not scheduler.healthy
    scheduler.start()
    assert scheduler.healthy
    scheduler.stop()
    assert not scheduler.healthy


class WorkerKiller(BaseException):
    """Not an Exception: it escapes the per-batch handler, as a bug in the worker itself would."""


class FlakyEngine:
    """The tiny engine behind injected faults: out of memory above ``memory_frames`` padded frames, and
    ``before_forward`` called with each batch first (to block or raise)."""

    def __init__(
        self,
        engine: SenseVoice,
        memory_frames: int | None = None,
        before_forward: Callable[[Sequence[Utterance]], None] | None = None,
    ) -> None:
        self.engine = engine
        self.device = engine.device
        self.memory_frames = memory_frames
        self.before_forward = before_forward
        self.forwards: list[int] = []  # sizes of the batches that ran

    def run_batch(
        self, utterances: Sequence[Utterance], timings: BatchTimings | None = None
    ) -> list[Segment]:
        if self.before_forward is not None:
            self.before_forward(utterances)
        padded = len(utterances) * max(u.frames for u in utterances)
        if self.memory_frames is not None and padded > self.memory_frames:
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected): {padded} frames")
        self.forwards.append(len(utterances))
        return self.engine.run_batch(utterances, timings)


def noise(seconds: float, seed: int = 0) -> list[Utterance]:
    samples = np.random.default_rng(seed).normal(0, 0.1, int(seconds * 16000)).astype(np.float32)
    return [Utterance(samples)]


class CancelledOnDelivery(Future):
    """A caller that gives up (client gone, timeout) just as the worker delivers: after its last check."""

    def set_result(self, result: object) -> None:
        self.cancel()
        super().set_result(result)


def test_a_request_cancelled_during_delivery_leaves_the_worker_serving(
    tiny_engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = Scheduler(tiny_engine, max_batch_frames=3000)
    monkeypatch.setattr(scheduler_module, "Future", CancelledOnDelivery)
    cancelled = scheduler.submit(second_of_silence())
    monkeypatch.undo()
    scheduler.start()
    later = scheduler.submit(second_of_silence())
    assert len(later.result(timeout=10).segments) == 1
    assert cancelled.cancelled() and scheduler.healthy and scheduler.pending == 0
    assert "died" not in caplog.text
    scheduler.stop()


def test_a_dead_worker_fails_what_it_held_and_is_restarted(tiny_engine) -> None:
    crashes = [WorkerKiller("injected")]

    def crash_once(utterances: Sequence[Utterance]) -> None:
        if crashes:
            raise crashes.pop()

    scheduler = Scheduler(FlakyEngine(tiny_engine, before_forward=crash_once), max_batch_frames=3000)
    held = scheduler.submit(second_of_silence())
    health_when_failed: list[bool] = []
    held.add_done_callback(lambda _: health_when_failed.append(scheduler.healthy))  # runs in the worker
    scheduler.start()
    with pytest.raises(InferenceWorkerDied, match="WorkerKiller.*restarted"):
        held.result(timeout=10)
    assert health_when_failed == [False]
    assert len(scheduler.submit(second_of_silence()).result(timeout=10).segments) == 1
    assert scheduler.healthy and scheduler.pending == 0
    scheduler.stop()


def test_stop_finishes_when_the_worker_dies_after_taking_the_stop_marker(tiny_engine) -> None:
    entered, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def block_then_crash(utterances: Sequence[Utterance]) -> None:
        calls.append(len(utterances))
        if len(calls) == 1:
            entered.set()
            release.wait()
        else:
            raise WorkerKiller("injected")

    scheduler = Scheduler(FlakyEngine(tiny_engine, before_forward=block_then_crash), max_batch_frames=3000)
    scheduler.start()
    first = scheduler.submit(second_of_silence())
    assert entered.wait(timeout=10)
    second = scheduler.submit(second_of_silence())  # queued before the stop marker: taken together with it
    stopper = threading.Thread(target=scheduler.stop)
    stopper.start()
    while True:  # stop() has queued its marker once submissions are refused
        try:
            scheduler.submit(second_of_silence())
        except ShuttingDown:
            break
    release.set()
    stopper.join(timeout=10)
    assert not stopper.is_alive()
    assert len(first.result(timeout=1).segments) == 1
    with pytest.raises(InferenceWorkerDied):
        second.result(timeout=1)
    assert not scheduler.healthy and scheduler.pending == 0


def test_a_failing_batch_report_costs_no_request_its_result(tiny_engine) -> None:
    def broken_metrics(report: BatchReport) -> None:
        raise ValueError("metrics bug")

    scheduler = Scheduler(tiny_engine, max_batch_frames=3000, on_batch=broken_metrics)
    scheduler.start()
    assert len(scheduler.submit(second_of_silence()).result(timeout=10).segments) == 1
    assert len(scheduler.submit(second_of_silence()).result(timeout=10).segments) == 1
    scheduler.stop()


def test_a_batch_out_of_memory_is_split_until_it_fits(tiny_engine, caplog: pytest.LogCaptureFixture) -> None:
    frames = noise(1)[0].frames
    engine = FlakyEngine(tiny_engine, memory_frames=2 * frames)
    scheduler = Scheduler(engine, max_batch_frames=3000)
    requests = [scheduler.submit(noise(1, seed)) for seed in range(5)]  # all waiting: one batch of 5
    scheduler.start()
    assert [len(r.result(timeout=30).segments) for r in requests] == [1] * 5
    scheduler.stop()
    assert sorted(engine.forwards) == [1, 2, 2]
    assert scheduler.frame_budget == 5 * frames // 2
    shrinks = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert shrinks == [f"out of memory on a batch of 5 utterances ({5 * frames} padded frames): "
                       f"frame budget 3000 -> {5 * frames // 2}"]  # fmt: skip


def test_an_utterance_out_of_memory_alone_fails_only_its_request(tiny_engine) -> None:
    engine = FlakyEngine(tiny_engine, memory_frames=2 * noise(1)[0].frames)
    scheduler = Scheduler(engine, max_batch_frames=3000)
    too_long, short = scheduler.submit(noise(3)), scheduler.submit(noise(1))
    scheduler.start()
    assert len(short.result(timeout=30).segments) == 1
    with pytest.raises(DeviceOutOfMemory, match=r"ran out of memory on a 3\.0 s piece of this audio alone"):
        too_long.result(timeout=30)
    scheduler.stop()


def test_the_frame_budget_recovers_gradually_up_to_the_maximum(tiny_engine) -> None:
    clip = noise(0.2)
    frames = clip[0].frames
    maximum = RECOVERY_STEPS * frames
    engine = FlakyEngine(tiny_engine, memory_frames=frames)
    scheduler = Scheduler(engine, max_batch_frames=maximum, max_wait=0)
    together = [scheduler.submit(clip) for _ in range(2)]
    scheduler.start()
    for request in together:
        request.result(timeout=30)
    shrunk = scheduler.frame_budget
    assert shrunk == frames  # half of the two utterances that did not fit
    engine.memory_frames = None  # the memory is free again
    budgets = []
    for _ in range(RECOVERY_BATCHES * RECOVERY_STEPS):
        scheduler.submit(clip).result(timeout=30)
        budgets.append(scheduler.frame_budget)
    scheduler.stop()
    # One step up every RECOVERY_BATCHES forwards that fit, until the maximum, never beyond it.
    steps = sorted(set(budgets))
    assert steps == list(range(shrunk, maximum + 1, maximum // RECOVERY_STEPS))
    assert [budgets.count(budget) for budget in steps[1:-1]] == [RECOVERY_BATCHES] * (len(steps) - 2)
    assert budgets[-1] == maximum


class Recorder:
    """``before_forward`` hook naming each batch's utterances, in the order the worker runs them."""

    def __init__(self, names: dict[int, str], block_first: bool = False) -> None:
        self.names = names
        self.batches: list[list[str]] = []
        self.entered, self.release = threading.Event(), threading.Event()
        if not block_first:
            self.release.set()

    def __call__(self, utterances: Sequence[Utterance]) -> None:
        self.batches.append(sorted(self.names[id(u)] for u in utterances))
        self.entered.set()
        self.release.wait()


def named(names: dict[int, str], name: str, seconds: float) -> list[Utterance]:
    utterances = noise(seconds, seed=len(names))
    names[id(utterances[0])] = name
    return utterances


def test_low_priority_fills_only_the_room_high_priority_leaves(tiny_engine) -> None:
    names: dict[int, str] = {}
    high, lows = named(names, "high", 2), [named(names, f"low{i}", 1) for i in range(3)]
    budget = high[0].frames + 2 * lows[0][0].frames
    recorder = Recorder(names)
    scheduler = Scheduler(FlakyEngine(tiny_engine, before_forward=recorder), max_batch_frames=budget)
    high_future = scheduler.submit(high)
    low_futures = [scheduler.submit(low, priority=Priority.LOW) for low in lows]
    scheduler.start()
    assert len(high_future.result(timeout=30).segments) == 1
    assert [len(f.result(timeout=30).segments) for f in low_futures[:2]] == [1, 1]
    with pytest.raises(Skipped, match="no room"):
        low_futures[2].result(timeout=30)
    scheduler.stop()
    assert recorder.batches[0] == ["high"]  # high-priority work runs first
    assert sorted(name for batch in recorder.batches[1:] for name in batch) == ["low0", "low1"]


def test_a_low_priority_request_is_skipped_rather_than_queued_behind_a_full_round(tiny_engine) -> None:
    names: dict[int, str] = {}
    recorder = Recorder(names, block_first=True)
    first, full = named(names, "first", 1), named(names, "full", 2)
    scheduler = Scheduler(
        FlakyEngine(tiny_engine, before_forward=recorder), max_batch_frames=full[0].frames, max_wait=0
    )
    scheduler.start()
    running = scheduler.submit(first)
    assert recorder.entered.wait(timeout=10)
    queued = scheduler.submit(full)  # fills the next round's budget
    partial = scheduler.submit(named(names, "partial", 1), priority=Priority.LOW)
    recorder.release.set()
    with pytest.raises(Skipped):
        partial.result(timeout=30)
    assert len(running.result(timeout=30).segments) == len(queued.result(timeout=30).segments) == 1
    scheduler.stop()
    assert recorder.batches == [["first"], ["full"]]


def test_low_priority_batches_give_way_to_high_priority_work(tiny_engine) -> None:
    names: dict[int, str] = {}
    recorder = Recorder(names, block_first=True)
    scheduler = Scheduler(FlakyEngine(tiny_engine, before_forward=recorder), max_batch_frames=3000)
    # Lengths far apart: two low-priority batches, the longer first.
    long_low = scheduler.submit(named(names, "long", 3), priority=Priority.LOW)
    short_low = scheduler.submit(named(names, "short", 1), priority=Priority.LOW)
    scheduler.start()
    assert recorder.entered.wait(timeout=10)
    high = scheduler.submit(named(names, "high", 1))
    recorder.release.set()
    assert len(long_low.result(timeout=30).segments) == 1
    with pytest.raises(Skipped, match="high-priority work arrived"):
        short_low.result(timeout=30)
    assert len(high.result(timeout=30).segments) == 1
    scheduler.stop()
    assert recorder.batches == [["long"], ["high"]]


def test_low_priority_requests_neither_count_against_max_pending_nor_outlive_stop(tiny_engine) -> None:
    scheduler = Scheduler(tiny_engine, max_batch_frames=3000, max_pending=1)
    waiting = scheduler.submit(second_of_silence())
    partial = scheduler.submit(second_of_silence(), priority=Priority.LOW)
    assert scheduler.pending == 1
    scheduler.start()
    scheduler.stop()
    assert len(waiting.result(timeout=1).segments) == len(partial.result(timeout=1).segments) == 1
    with pytest.raises(ShuttingDown):
        scheduler.submit(second_of_silence(), priority=Priority.LOW)


class PacedEngine(FlakyEngine):
    """Reports ``seconds_per_frame`` of model time per padded frame, whatever the machine's speed."""

    def __init__(self, engine: SenseVoice, seconds_per_frame: float, recorder: Recorder) -> None:
        super().__init__(engine, before_forward=recorder)
        self.seconds_per_frame = seconds_per_frame

    def run_batch(
        self, utterances: Sequence[Utterance], timings: BatchTimings | None = None
    ) -> list[Segment]:
        segments = super().run_batch(utterances, timings)
        timings.features, timings.decoding = 0.0, 0.0
        timings.model = self.seconds_per_frame * len(utterances) * max(u.frames for u in utterances)
        return segments


def test_low_priority_forwards_stay_short_at_the_devices_pace(tiny_engine) -> None:
    names: dict[int, str] = {}
    recorder = Recorder(names, block_first=True)
    first, lows = named(names, "first", 1), [named(names, f"low{i}", 1) for i in range(4)]
    frames = first[0].frames
    # Two of these one-second utterances take a little under LOW_FORWARD_SECONDS: low-priority batches of
    # two, though a quarter of the frame budget would hold eight.
    engine = PacedEngine(tiny_engine, LOW_FORWARD_SECONDS / (2 * frames) * 0.99, recorder)
    scheduler = Scheduler(engine, max_batch_frames=32 * frames)
    scheduler.start()
    running = scheduler.submit(first)  # its forward tells the scheduler the pace
    assert recorder.entered.wait(timeout=10)
    futures = [scheduler.submit(low, priority=Priority.LOW) for low in lows]
    recorder.release.set()
    assert all(len(f.result(timeout=30).segments) == 1 for f in [running, *futures])
    scheduler.stop()
    assert [len(batch) for batch in recorder.batches] == [1, 2, 2]
