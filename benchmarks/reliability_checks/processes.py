"""Processes as /proc shows them: children, resident memory."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError):
            continue  # ended while we looked
        if parent == pid:
            found.append(int(entry.name))
    return sorted(found)


def rss_mb(pids: list[int]) -> float:
    """The resident memory of ``pids`` together, in MB (a process that has ended counts 0)."""
    total_kb = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total_kb += int(line.split()[1])
    return total_kb / 1024


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


class MemoryWatch:
    """Samples ``measure()`` (MB) every ``interval`` seconds in a thread, for the peak between marks."""

    def __init__(self, measure: Callable[[], float], interval: float = 1.0) -> None:
        self._measure = measure
        self._interval = interval
        self._stop = threading.Event()
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MB)
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="memory-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.samples.append((time.monotonic() - self._started, self._measure()))

    def peak(self) -> float:
        return max((mb for _, mb in self.samples), default=0.0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
