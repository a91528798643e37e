"""A live ``sensevoice serve`` (supervised, as users start it) on a free loopback port, and its memory."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import httpx
from tests.server.conftest import LiveServer
from tests.server.conftest import launch as launch_for_tests

from .processes import children, rss_mb

STARTUP_SECONDS = 180


class Server(LiveServer):
    """``LiveServer`` (the test suite's handle) with its log in a file, and its processes."""

    def __init__(self, process: subprocess.Popen, port: int, temp_dir: Path, log_path: Path) -> None:
        super().__init__(process, port, temp_dir)
        self.port = port
        self.log_path = log_path

    def serving_pid(self) -> int | None:
        """The supervisor's one child, the process that serves (None between a death and its replacement)."""
        found = children(self.process.pid)
        return found[0] if found else None

    def serving_pids(self) -> list[int]:
        """The serving process and its decode workers: what holds the server's memory."""
        serving = self.serving_pid()
        return [] if serving is None else [serving, *self.decode_worker_pids()]

    def rss_mb(self) -> float:
        return rss_mb(self.serving_pids())

    def rss_parts_mb(self) -> tuple[float, float]:
        """(the serving process, its decode workers): which side memory growth is on."""
        pids = self.serving_pids()
        return rss_mb(pids[:1]), rss_mb(pids[1:])

    def ready(self, timeout: float = 5) -> bool:
        try:
            return httpx.get(self.url + "/ready", timeout=timeout).status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, seconds: float = STARTUP_SECONDS) -> None:
        deadline = time.monotonic() + seconds
        while not self.ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited; its log: {self.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server was not ready within {seconds:g} s; its log: {self.log_path}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _copy_to_file(stream: BinaryIO, path: Path) -> None:
    with open(path, "ab") as log:
        for line in stream:
            log.write(line)
            log.flush()


def launch(model_dir: Path, work_dir: Path, **settings: object) -> Server:
    """``sensevoice serve`` as the test suite starts it (settings as SENSEVOICE_* variables, the machine's
    rules rather than a tuning profile), its log copied to a file in ``work_dir`` as it comes."""
    started = launch_for_tests(model_dir, **settings)
    port = int(started.url.rsplit(":", 1)[1])
    work_dir.mkdir(parents=True, exist_ok=True)
    server = Server(started.process, port, started.temp_dir, work_dir / f"server-{port}.log")
    server.log_path.write_bytes(b"")
    threading.Thread(
        target=_copy_to_file, args=(started.process.stderr, server.log_path), daemon=True
    ).start()
    return server


@contextmanager
def running_server(model_dir: Path, work_dir: Path, **settings: object) -> Iterator[Server]:
    """A ready server, stopped (SIGTERM, then SIGKILL) whatever happens."""
    server = launch(model_dir, work_dir, **settings)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.temp_dir, ignore_errors=True)
