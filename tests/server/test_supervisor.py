"""``sensevoice serve`` supervises its serving process: a serving process killed outright is replaced while
new connections wait, and neither outlives the other."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from sensevoice_serve.server.supervisor import settings_environment
from sensevoice_serve.settings import Settings, load_settings

from .conftest import LiveServer, launch, wait_ready

RESTART_SECONDS = 30


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue  # ended while we looked
    return found


def wait_gone(pids: list[int], seconds: float = 10) -> list[int]:
    """The processes among ``pids`` still there after ``seconds`` (an exited child of ours is reaped)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        if not alive:
            return []
        time.sleep(0.05)
    return alive


def serving_process(server: LiveServer) -> int:
    [serving] = children(server.process.pid)
    return serving


def temp_dirs(server: LiveServer) -> set[Path]:
    """The serving processes' own temp directories, inside the supervisor's TMPDIR."""
    return set(server.temp_dir.glob("sensevoice-serve-*"))


def test_a_killed_serving_process_is_replaced_while_new_connections_wait(tiny_model_dir: Path) -> None:
    server = wait_ready(launch(tiny_model_dir))
    try:
        killed_process = serving_process(server)
        [killed_temp_dir] = temp_dirs(server)
        (killed_temp_dir / "upload-in-flight").write_bytes(b"left by a killed process")
        os.kill(killed_process, signal.SIGKILL)
        killed = time.monotonic()
        assert wait_gone([killed_process]) == []
        # Made while nothing serves: it waits in the supervisor's backlog and is answered, not refused.
        assert httpx.get(server.url + "/health", timeout=RESTART_SECONDS).status_code == 200
        while httpx.get(server.url + "/ready", timeout=RESTART_SECONDS).status_code != 200:
            assert time.monotonic() - killed < RESTART_SECONDS
            time.sleep(0.1)
        print(f"ready again {time.monotonic() - killed:.1f} s after SIGKILL")
        replacement = serving_process(server)
        assert replacement != killed_process
        assert not killed_temp_dir.exists() and len(temp_dirs(server)) == 1
        decoders = children(replacement)

        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
        assert wait_gone([replacement, *decoders]) == []
    finally:
        server.stop()


def test_the_serving_process_does_not_outlive_its_supervisor(tiny_model_dir: Path) -> None:
    server = wait_ready(launch(tiny_model_dir))
    try:
        serving = serving_process(server)
        decoders = children(serving)
        server.process.kill()
        server.process.wait()
        assert wait_gone([serving, *decoders]) == []
    finally:
        server.stop()


def test_the_serving_process_reads_the_supervisors_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = load_settings(api_key="k", max_upload_mb="1.5", vad="off", supervise=False, port=0)
    for name, value in settings_environment(chosen).items():
        monkeypatch.setenv(name, value)
    assert Settings() == chosen
