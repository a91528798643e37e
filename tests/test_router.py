"""Routing requests over several schedulers (one per device), here two on the CPU sharing the tiny engine."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future

import numpy as np
import pytest

from sensevoice_serve.batching import BatchTimings, Utterance
from sensevoice_serve.errors import Overloaded
from sensevoice_serve.pipeline import SenseVoice
from sensevoice_serve.results import Segment
from sensevoice_serve.router import Router, device_labels
from sensevoice_serve.scheduler import Scheduler


class GatedEngine:
    """The tiny engine behind a gate: batches wait until it opens, and each records what it ran."""

    def __init__(self, engine: SenseVoice) -> None:
        self.engine = engine
        self.device = engine.device
        self.gate = threading.Event()
        self.seconds: list[float] = []  # durations of the utterances run here

    def run_batch(
        self, utterances: Sequence[Utterance], timings: BatchTimings | None = None
    ) -> list[Segment]:
        assert self.gate.wait(timeout=60), "the test never opened the gate"
        self.seconds += [u.duration for u in utterances]
        return self.engine.run_batch(utterances, timings)


def speech(seconds: float) -> list[Utterance]:
    return [Utterance(np.random.default_rng(0).normal(0, 0.1, int(seconds * 16000)).astype(np.float32))]


def settled(future: Future) -> threading.Event:
    """Set once the future's earlier callbacks (the router's accounting) have run."""
    event = threading.Event()
    future.add_done_callback(lambda _: event.set())
    return event


@pytest.fixture
def engines(tiny_engine: SenseVoice) -> list[GatedEngine]:
    return [GatedEngine(tiny_engine), GatedEngine(tiny_engine)]


@pytest.fixture
def router(engines: list[GatedEngine]) -> Iterator[Router]:
    router = Router([Scheduler(engine, max_batch_frames=3000, max_pending=3) for engine in engines])
    router.start()
    yield router
    for engine in engines:
        engine.gate.set()
    router.stop()


def test_each_request_goes_to_the_device_with_the_least_audio_outstanding(
    router: Router, engines: list[GatedEngine]
) -> None:
    # 10 s to the first; then the second has less audio waiting until it holds 1 + 1 + 9.5 s.
    futures = [router.submit(speech(seconds)) for seconds in (10, 1, 1, 9.5, 1)]
    frames = {seconds: speech(seconds)[0].frames for seconds in (1, 9.5, 10)}
    assert router.outstanding_frames(0) == frames[10] + frames[1]
    assert router.outstanding_frames(1) == 2 * frames[1] + frames[9.5]
    for engine in engines:
        engine.gate.set()
    for future in futures:
        assert len(future.result(timeout=60).segments) == 1
    assert sorted(engines[0].seconds) == [1, 10]
    assert sorted(engines[1].seconds) == [1, 1, 9.5]
    for future in futures:
        assert settled(future).wait(timeout=10)
    assert [router.outstanding_frames(i) for i in (0, 1)] == [0, 0]


def test_a_device_whose_queue_is_full_passes_the_request_on(
    router: Router, engines: list[GatedEngine]
) -> None:
    first = [router.submit(speech(1)) for _ in range(6)]  # three each: both queues full (max_pending 3)
    with pytest.raises(Overloaded, match="limit 3"):
        router.submit(speech(1))
    assert [router.outstanding_frames(i) for i in (0, 1)] == [3 * speech(1)[0].frames] * 2
    engines[1].gate.set()
    for future in first[1::2]:  # the second device's
        future.result(timeout=60)
        assert settled(future).wait(timeout=10)
    # The first device still holds its three; a short request goes to the second, a long one too.
    later = [router.submit(speech(seconds)) for seconds in (1, 20)]
    for future in later:
        future.result(timeout=60)
    assert sorted(engines[1].seconds) == [1, 1, 1, 1, 20]
    engines[0].gate.set()


def test_a_device_whose_worker_is_down_gets_no_work_while_another_runs(
    tiny_engine: SenseVoice,
) -> None:
    down, up = Scheduler(tiny_engine, max_batch_frames=3000), Scheduler(tiny_engine, max_batch_frames=3000)
    up.start()  # the other is never started: as while its worker restarts
    router = Router([down, up])
    try:
        assert not router.healthy and router.unhealthy_devices() == ["cpu#0"]
        assert [len(router.submit(speech(1)).result(timeout=60).segments) for _ in range(3)] == [1, 1, 1]
        assert down.pending == 0
    finally:
        router.stop()


def test_labels_tell_a_device_listed_twice_apart(tiny_engine: SenseVoice) -> None:
    one = Scheduler(tiny_engine, max_batch_frames=3000)
    assert device_labels([one]) == ["cpu"]
    assert device_labels([one, one, one]) == ["cpu#0", "cpu#1", "cpu#2"]
