"""Bench requests are the server's requests: ``Service`` driven as a route drives it; failures are counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from sensevoice_serve.bench.drive import RequestTiming, ServiceClient, Stability
from sensevoice_serve.bench.layout import PARTS
from sensevoice_serve.bench.material import BenchClip
from sensevoice_serve.tuning import TunedSettings

from ..conftest import shared_audio


def test_a_bench_request_is_a_server_request(tiny_model_dir: Path) -> None:
    recording = shared_audio("jfk.flac")
    clip = BenchClip("jfk", 11.0, recording.read_bytes(), recording.suffix)
    with ServiceClient(tiny_model_dir, TunedSettings(torch_threads=1, decode_workers=1)) as client:
        metrics = client.service.metrics.registry
        timing = client.request(clip)
        # Service.transcribe ran: it counts each part of a request in the server's own metrics.
        for part in ("decode", "queue", "inference"):
            assert metrics.get_sample_value(f"sensevoice_{part}_seconds_count") == 1, part
        inference = sum(timing.parts[name] for name in ("features", "model", "decoding"))
        assert metrics.get_sample_value("sensevoice_inference_seconds_sum") == pytest.approx(inference)
        assert client.service.in_flight == 0  # admitted, then released
    assert set(timing.parts) == set(PARTS)
    assert 0 < sum(timing.parts.values()) <= timing.total


def test_stability_counts_errors_and_out_of_memory() -> None:
    stability = Stability()

    def out_of_memory():
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def broken():
        raise ValueError("bad input")

    for request in (out_of_memory, broken, broken):
        assert stability.record(request) is None
    assert stability.record(lambda: RequestTiming(1.0, {})) is not None
    assert stability.to_dict() == {
        "requests": 4,
        "errors": 3,
        "out_of_memory": 1,
        "messages": ["RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB", "ValueError: bad input"],
    }
