"""Decode workers that die or hang: the request they held gets a clear error, the pool is whole again, and
no other request is lost."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from .conftest import LiveServer, stopped, wait_until, wav

DEADLINE = 3


@pytest.fixture(scope="module")
def decoder_server(start_server) -> LiveServer:
    return start_server(decode_workers=1, decode_timeout_seconds=DEADLINE)


def gone(pid: int) -> bool:
    """The process has exited and been reaped by the server (so the server knows it is gone)."""
    return not Path(f"/proc/{pid}").exists()


def leftovers(server: LiveServer) -> list[Path]:
    return [path for path in server.temp_dir.rglob("*") if path.is_file()]


def test_a_decode_that_hangs_is_stopped_at_the_deadline(
    decoder_server: LiveServer, speech: np.ndarray
) -> None:
    server, clip = decoder_server, wav(speech[:16000])
    [decoder] = server.decode_worker_pids()
    with ThreadPoolExecutor(2) as clients, stopped([decoder]):  # a decoder that never finishes its upload
        hung = clients.submit(server.transcribe, clip)
        wait_until(lambda: server.metric("sensevoice_decode_workers_busy") == 1, "the upload is decoding")
        behind = clients.submit(server.transcribe, clip)  # waits for the only decode worker
        wait_until(lambda: server.metric("sensevoice_requests_in_progress") == 2, "the next one waits")
        response = hung.result()
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "decode_timeout"
        assert f"decoding took longer than {DEADLINE} s" in response.json()["error"]["message"]
        assert behind.result().status_code == 200  # served by the worker that replaced the killed one
    assert gone(decoder)
    assert server.transcribe(clip).status_code == 200
    assert leftovers(server) == []


def test_a_dying_worker_takes_only_its_own_upload(start_server, speech: np.ndarray) -> None:
    server, clip = start_server(decode_workers=2), wav(speech[:16000])
    first, second = server.decode_worker_pids()
    with ThreadPoolExecutor(2) as clients, stopped([first, second]):
        requests = [clients.submit(server.transcribe, clip) for _ in range(2)]
        wait_until(lambda: server.metric("sensevoice_decode_workers_busy") == 2, "one upload in each worker")
        os.kill(first, signal.SIGKILL)
    statuses = sorted(request.result().status_code for request in requests)
    assert statuses == [200, 503]  # the other worker's upload is decoded as if nothing happened
    assert server.transcribe(clip).status_code == 200


def test_killed_decode_worker_is_replaced(decoder_server: LiveServer, speech: np.ndarray) -> None:
    server, clip = decoder_server, wav(speech[:16000])
    [idle] = server.decode_worker_pids()
    os.kill(idle, signal.SIGKILL)
    wait_until(lambda: gone(idle), "the pool has seen its worker die")
    assert server.transcribe(clip).status_code == 200  # arriving after the death, it is not to blame

    [busy] = server.decode_worker_pids()
    with (
        ThreadPoolExecutor(1) as client,
        stopped([busy]),
    ):  # frozen, so the upload is surely in it when it dies
        in_flight = client.submit(server.transcribe, clip)
        wait_until(lambda: server.metric("sensevoice_decode_workers_busy") == 1, "the upload is decoding")
        os.kill(busy, signal.SIGKILL)
        died = in_flight.result()
    assert died.status_code == 503 and died.headers["Retry-After"] == "1"
    assert "decoder process died" in died.json()["error"]["message"]
    assert server.transcribe(clip).status_code == 200
    [replacement] = server.decode_worker_pids()
    assert leftovers(server) == []  # nothing of the uploads whose worker died stays in the temp directory

    # A server killed outright leaves no decode process behind.
    server.process.kill()
    server.process.wait()
    wait_until(lambda: gone(replacement), "the orphaned decode worker exits", timeout=10)
