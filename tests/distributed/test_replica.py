"""A Serve replica is routed to only once warm: Serve's first health check waits for the model, and fails
when the model could not load."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from sensevoice_serve.server.service import State

from .conftest import RAY_MISSING

serve = pytest.importorskip("sensevoice_serve.ray.serve", reason=RAY_MISSING)
check_health = serve.SenseVoiceReplica.func_or_class.check_health


def test_the_health_check_waits_while_the_model_loads() -> None:
    service = SimpleNamespace(state=State.LOADING, load_error=None)

    async def scenario() -> None:
        check = asyncio.ensure_future(check_health(SimpleNamespace(_service=service)))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not check.done()  # loading: however long, the check has not passed
        service.state = State.READY
        await asyncio.wait_for(check, timeout=30)

    asyncio.run(scenario())


def test_the_health_check_fails_a_model_that_did_not_load() -> None:
    service = SimpleNamespace(state=State.FAILED, load_error="model.pt: no such file")
    with pytest.raises(RuntimeError, match="no such file"):
        asyncio.run(check_health(SimpleNamespace(_service=service)))
