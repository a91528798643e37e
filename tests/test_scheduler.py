"""Scheduler behaviour the server relies on."""

from __future__ import annotations

import numpy as np
import pytest

from sensevoice_serve.batching import Utterance
from sensevoice_serve.errors import Overloaded, ShuttingDown
from sensevoice_serve.scheduler import Scheduler


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
