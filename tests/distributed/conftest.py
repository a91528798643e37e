"""Tests on Ray: the commands under test (``serve --ray``, ``transcribe --ray``) start a local cluster in
subprocesses, on loopback. Every process they start inherits a marker in its environment, so a test can find
them all, and tell that none is left: what a test leaves behind is killed (by pid) and fails it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# Each test module skips itself when it needs the ray extra and it is missing (a skip here would stop pytest).
RAY_MISSING = "the ray extra is not installed (pip install -e '.[ray]')"
MARKER = "SENSEVOICE_TEST_RAY_RUN"


@dataclass
class RayRun:
    """The environment for commands whose processes (Ray's included) a test wants to find."""

    marker: str
    ray_dir: Path  # RAY_TMPDIR: short, since Ray puts Unix sockets in it

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            MARKER: self.marker,
            "RAY_TMPDIR": str(self.ray_dir),
            "SENSEVOICE_PROFILE": os.devnull,  # the rules, not a profile of the machine running the tests
            # Exact, so Ray's answers compare with the plain CLI's and server's whatever the CPU (auto is
            # int8 on a VNNI CPU, whose batches share an activation scale: batched apart, tokens may differ).
            "SENSEVOICE_DTYPE": "fp32",
            "HF_HUB_OFFLINE": "1",
        }

    def start(self, *args: str, log: Path) -> subprocess.Popen:
        """``sensevoice ARGS`` in its own process group, output to ``log``."""
        with log.open("ab") as output:
            return subprocess.Popen(
                [sys.executable, "-m", "sensevoice_serve.cli", *args],
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def processes(self) -> dict[int, bytes]:
        """Live processes (zombies aside) that carry this run's marker: pid -> command line."""
        needle = f"{MARKER}={self.marker}".encode()
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z" and needle in (entry / "environ").read_bytes().split(b"\0"):
                    found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except (OSError, IndexError):
                continue
        return found


@pytest.fixture(scope="module")
def ray_run() -> Iterator[RayRun]:
    run = RayRun(uuid.uuid4().hex, Path(tempfile.mkdtemp(prefix="svray-", dir="/tmp")))
    yield run
    left = run.processes()
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(run.ray_dir, ignore_errors=True)
    assert not left, f"processes left behind: {left}"
