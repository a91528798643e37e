"""Scheduler behaviour the server relies on."""

from __future__ import annotations

import numpy as np
import pytest

from sensevoice_serve.batching import Utterance
from sensevoice_serve.errors import Overloaded
from sensevoice_serve.scheduler import Scheduler


def test_stop_finishes_admitted_requests_then_refuses_new_ones(tiny_engine) -> None:
    scheduler = Scheduler(tiny_engine, max_batch_frames=3000)
    scheduler.start()
    admitted = scheduler.submit([Utterance(np.zeros(16000, dtype=np.float32))])
    scheduler.stop()
    assert len(admitted.result(timeout=30).segments) == 1
    with pytest.raises(Overloaded, match="shutting down"):
        scheduler.submit([Utterance(np.zeros(16000, dtype=np.float32))])
