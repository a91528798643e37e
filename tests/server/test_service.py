"""``Service`` without HTTP: its lifecycle is one state, and each refusal says which."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sensevoice_serve.errors import ModelLoading, ShuttingDown, Unavailable
from sensevoice_serve.server.service import Service, State
from sensevoice_serve.settings import load_settings


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
