"""``Service`` without HTTP: its lifecycle is one state, and each refusal says which."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from sensevoice_serve.decoding import DecodeOptions
from sensevoice_serve.errors import ModelLoading, ShuttingDown, Unavailable
from sensevoice_serve.server.service import Service, State
from sensevoice_serve.settings import load_settings

from ..conftest import shared_audio


@pytest.fixture(autouse=True)
def no_machine_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENSEVOICE_PROFILE", os.devnull)


def test_a_drain_that_begins_while_loading_outlasts_the_load(tiny_model_dir: Path) -> None:
    service = Service(load_settings(model=str(tiny_model_dir), decode_workers=1, torch_threads=1))
    with pytest.raises(ModelLoading, match="still loading"):
        service.admit()
    assert service.state is State.LOADING and not service.ready
    service.begin_drain()  # SIGTERM while the model loads
    service.start()
    try:
        assert service.warm and service.state is State.DRAINING and not service.ready
        with pytest.raises(ShuttingDown, match="shutting down"):
            service.admit()
        assert service.not_ready_reason() == "the server is shutting down"
    finally:
        service.stop()
    assert service.state is State.STOPPED


def test_a_model_that_cannot_load_fails_the_service(tmp_path: Path) -> None:
    failures: list[bool] = []
    service = Service(
        load_settings(model=str(tmp_path / "nothing"), decode_workers=1), None, lambda: failures.append(True)
    )
    service.start()
    try:
        assert failures == [True] and service.state is State.FAILED and not service.warm
        service.begin_drain()  # a failure is not turned into a drain
        assert service.state is State.FAILED
        with pytest.raises(Unavailable, match="failed to load") as refused:
            service.admit()
        assert type(refused.value) is Unavailable
    finally:
        service.stop()
    assert service.state is State.FAILED


def test_two_devices_each_get_an_engine_a_scheduler_and_metrics(tiny_model_dir: Path) -> None:
    """Two CPU "devices" stand for two GPUs (they share torch's threads, which are the process's)."""
    settings = load_settings(model=str(tiny_model_dir), devices="cpu,cpu", decode_workers=1, torch_threads=1)
    service = Service(settings)
    service.start()
    try:
        assert service.ready and [str(e.device) for e in service.engines] == ["cpu", "cpu"]
        assert service.engines[0] is not service.engines[1] and service.engine is service.engines[0]
        assert service.scheduler.labels == ["cpu#0", "cpu#1"]
        data = shared_audio("zh_sample.wav").read_bytes()
        result, _ = asyncio.run(
            service.transcribe(data, "zh", DecodeOptions(), service.default_segmentation())
        )
        assert len(result.segments) == 1
        exposition = generate_latest(service.metrics.registry).decode()
        assert 'sensevoice_device_batches_total{device="cpu#0"} 1.0' in exposition  # the first of two idle
        assert 'sensevoice_device_batches_total{device="cpu#1"} 0.0' in exposition
        assert 'sensevoice_device_healthy{device="cpu#1"} 1.0' in exposition
        assert [d["batches"] for d in service.device_metrics.snapshot(service.scheduler)] == [1, 0]
        service.scheduler.schedulers[1].stop()  # as while its worker restarts: the service is not ready
        assert not service.ready
        assert service.not_ready_reason() == "the inference worker of cpu#1 died; restarting"
        assert (
            'sensevoice_device_healthy{device="cpu#1"} 0.0'
            in generate_latest(service.metrics.registry).decode()
        )
    finally:
        service.stop()
