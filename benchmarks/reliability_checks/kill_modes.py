"""kill -9, measured: the serving process under load, and a bulk CLI run.

Serving process: clients keep sending while the supervisor's child is SIGKILLed. From the kill, a prober
opens a fresh connection every 0.2 s (GET /health): with the supervisor holding the listening socket these
must wait in its backlog and be answered, never refused. Recovery is the time from the kill to /ready 200.
Load requests that fail are those in flight at the kill or sent on the dead process's kept-alive
connections. Kills are spaced so that each replacement has served for ``QUICK_DEATH_SECONDS`` (the
supervisor delays restarts of a process that keeps dying young).

Bulk run: ``sensevoice transcribe DIR --output results.jsonl`` over many short files is SIGKILLed at
several points and rerun until it finishes; every file must be in the results exactly once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from sensevoice_serve.server.supervisor import QUICK_DEATH_SECONDS

from .load import Body, Outcome, closed_loop
from .material import Clip
from .processes import alive
from .server import Server

PROBE_EVERY = 0.2
RECOVERY_LIMIT = 120


def _probe_until_ready(server: Server, killed_at: float) -> dict:
    """Fresh connections to /health every PROBE_EVERY from the kill until /ready is 200 again."""
    refused, answered, waits = 0, 0, []
    while True:
        sent = time.monotonic()
        try:
            with httpx.Client(timeout=RECOVERY_LIMIT) as client:
                client.get(server.url + "/health")
            answered += 1
            waits.append(time.monotonic() - sent)
        except httpx.ConnectError:
            refused += 1
        if server.ready(timeout=1):
            break
        if time.monotonic() - killed_at > RECOVERY_LIMIT:
            raise TimeoutError(f"not ready {RECOVERY_LIMIT} s after the kill; log: {server.log_path}")
        time.sleep(max(0.0, sent + PROBE_EVERY - time.monotonic()))
    return {
        "recovery_seconds": time.monotonic() - killed_at,
        "probes_answered": answered,
        "probes_refused": refused,
        "longest_probe_wait_seconds": max(waits, default=None),
    }


def _kill_once(server: Server) -> tuple[float, dict]:
    victim = server.serving_pid()
    if victim is None:
        raise RuntimeError("no serving process to kill")
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    figures = _probe_until_ready(server, killed_at)
    replacement = server.serving_pid()
    return killed_at, {**figures, "killed_pid": victim, "replaced": replacement not in (None, victim)}


def _failed_between(outcomes: list[Outcome], start: float, end: float) -> Counter:
    """Load requests that did not get a 200 and were in flight at some point between start and end."""
    failed = Counter()
    for outcome in outcomes:
        if outcome.status != 200 and outcome.sent_at <= end and outcome.sent_at + outcome.seconds >= start:
            failed["no answer" if outcome.status is None else str(outcome.status)] += 1
    return failed


def run_server_kills(server: Server, bodies: list[Body], kills: int, clients: int) -> dict:
    stop = threading.Event()
    outcomes: list[Outcome] = []

    def load() -> None:
        outcomes.extend(
            asyncio.run(
                closed_loop(server.url, bodies, clients, stop=stop, timeout=RECOVERY_LIMIT, retry_after=True)
            )
        )

    loader = threading.Thread(target=load, name="load")
    loader.start()
    rows, windows = [], []
    try:
        for index in range(kills):
            time.sleep(QUICK_DEATH_SECONDS + 2 if index else 5)
            killed_at, row = _kill_once(server)
            rows.append(row)
            windows.append((killed_at, killed_at + row["recovery_seconds"]))
            print(f"kill -9 #{index + 1}: ready again in {row['recovery_seconds']:.1f} s", file=sys.stderr)
        time.sleep(5)
    finally:
        stop.set()
        loader.join()
    for row, (start, end) in zip(rows, windows, strict=True):
        row["failed_requests"] = dict(_failed_between(outcomes, start, end))
    return {
        "kills": rows,
        "clients": clients,
        "load_requests": len(outcomes),
        "load_statuses": dict(Counter(str(outcome.status) for outcome in outcomes)),
        "ready_after": server.ready(timeout=30),
    }


def write_bulk_folder(folder: Path, clips: list[Clip], count: int) -> list[str]:
    """``count`` files (the clips in turn, every 50th one damaged) and their names."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for index in range(count):
        clip = clips[index % len(clips)]
        name = f"{index:05d}-{clip.name}"
        data = clip.data if index % 50 != 49 else rng.bytes(2048)
        (folder / name).write_bytes(data)
        names.append(name)
    return names


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _run_until(command: list[str], manifest: Path, lines: int | None, log: Path) -> dict:
    """Run the bulk command; SIGKILL it once the manifest has ``lines`` lines (None: let it finish)."""
    started = time.monotonic()
    with open(log, "ab") as output:
        run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=output)
        try:
            while lines is not None and _lines(manifest) < lines and run.poll() is None:
                time.sleep(0.01)
            if run.poll() is None and lines is not None:
                os.kill(run.pid, signal.SIGKILL)
            code = run.wait()
        finally:
            if alive(run.pid) and run.poll() is None:
                run.kill()
                run.wait()
    return {"exit_code": code, "lines_after": _lines(manifest), "seconds": time.monotonic() - started}


def run_bulk_kills(model: Path, work_dir: Path, clips: list[Clip], files: int, kills: int) -> dict:
    folder = work_dir / "bulk-input"
    names = write_bulk_folder(folder, clips, files)
    manifest = work_dir / "bulk-results.jsonl"
    manifest.unlink(missing_ok=True)
    command = [sys.executable, "-m", "sensevoice_serve.cli", "transcribe", "--model", str(model)]
    command += ["--output", str(manifest), str(folder)]
    runs = []
    for index in range(kills):
        target = (index + 1) * files // (kills + 1)
        runs.append({"kill_at_lines": target, **_run_until(command, manifest, target, work_dir / "bulk.log")})
        print(f"bulk: killed at {runs[-1]['lines_after']} lines", file=sys.stderr, flush=True)
    runs.append({"kill_at_lines": None, **_run_until(command, manifest, None, work_dir / "bulk.log")})
    records = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    counts = Counter(Path(record["path"]).name for record in records)
    return {
        "files": files,
        "runs": runs,
        "records": len(records),
        "missing": sorted(set(names) - set(counts))[:10],
        "twice_or_more": sorted(name for name, count in counts.items() if count > 1)[:10],
        "failures_recorded": sum("error" in record for record in records),
        "damaged_files": sum(index % 50 == 49 for index in range(files)),
    }
