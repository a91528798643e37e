"""The parts of ``anchor.py`` about ours alone: cold start and memory as users start it (``sensevoice serve``
and ``sensevoice transcribe`` in fresh processes), and the int8 models' fidelity to our float32 one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

READY_TIMEOUT_S = 900
TIME = "/usr/bin/time"  # GNU time
IDLE_SECONDS = 2.0  # after /ready: the idle server's memory is read once its start-up work has settled
DTYPES = ("fp32", "int8")


def _environment(threads: int) -> dict[str, str]:
    # No tuning profile of this machine: the rules, the threads given, the dtype on the command line.
    return {**os.environ, "SENSEVOICE_TORCH_THREADS": str(threads), "SENSEVOICE_PROFILE": os.devnull}


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below ``pid``."""
    children: dict[int, list[int]] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append((child, commands.get(child, "")))
            queue.append(child)
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def measure_serve(model_dir: Path, threads: int, dtype: str) -> dict:
    """``sensevoice serve`` (supervised, as by default): seconds from launch to /ready 200, then idle memory
    of the serving process, the supervisor and the decode workers."""
    port = _free_port()
    command = [sys.executable, "-m", "sensevoice_serve.cli", "serve", "--model", str(model_dir),
               "--dtype", dtype, "--port", str(port)]  # fmt: skip
    launched = time.monotonic()
    process = subprocess.Popen(
        command, env=_environment(threads), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        while not _ready(f"http://127.0.0.1:{port}/ready"):
            if process.poll() is not None or time.monotonic() - launched > READY_TIMEOUT_S:
                raise RuntimeError(
                    f"serve --dtype {dtype} did not get ready: {process.stderr.read()[-400:]!r}"
                )
            time.sleep(0.02)
        ready = time.monotonic() - launched
        time.sleep(IDLE_SECONDS)
        tree = _descendants(process.pid)
        serving = [pid for pid, line in tree if "--listen-fd" in line] or [process.pid]
        workers = [pid for pid, line in tree if "spawn_main" in line]
        return {
            "ready_s": ready,
            "serving_mb": _peak_rss_mb(serving[0]),
            "supervisor_mb": _peak_rss_mb(process.pid) if serving[0] != process.pid else None,
            "decode_worker_mb": max((_peak_rss_mb(pid) for pid in workers), default=None),
        }
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def measure_transcribe(model_dir: Path, threads: int, dtype: str, clip: Path) -> dict:
    """``sensevoice transcribe CLIP``: wall seconds and peak RSS of the fresh process.

    GNU time reads the peak: a child forked from this (large) process would count this one's memory at
    the fork in its own ``ru_maxrss``; time's child is forked from time, which is small.
    """
    with tempfile.NamedTemporaryFile("r") as peak:
        command = [TIME, "-f", "%M", "-o", peak.name, sys.executable, "-m", "sensevoice_serve.cli",
                   "transcribe", "--model", str(model_dir), "--dtype", dtype, str(clip)]  # fmt: skip
        started = time.monotonic()
        completed = subprocess.run(command, env=_environment(threads), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)  # fmt: skip
        wall = time.monotonic() - started
        if completed.returncode != 0:
            raise RuntimeError(f"transcribe --dtype {dtype} failed: {completed.stderr[-400:]!r}")
        return {"wall_s": wall, "peak_mb": int(peak.read().split()[-1]) / 1024}


def serve_and_transcribe(model_dir: Path, threads: int, clip: Path) -> str:
    """A markdown table: fp32 and int8 as users start them (the int8 model already built and cached)."""
    for dtype in DTYPES:  # the int8 build (first use) and page cache warm-up are not what is measured
        measure_transcribe(model_dir, threads, dtype, clip)
    serve = {dtype: measure_serve(model_dir, threads, dtype) for dtype in DTYPES}
    cli = {dtype: measure_transcribe(model_dir, threads, dtype, clip) for dtype in DTYPES}
    lines = [
        f"| ours, fresh processes ({threads} threads) | fp32 | int8 | target for int8 |",
        "|---|---|---|---|",
        "| `serve`: launch to /ready 200 | "
        + " | ".join(f"{serve[d]['ready_s']:.2f} s" for d in DTYPES)
        + f" | <= 2 s: {'met' if serve['int8']['ready_s'] <= 2 else 'NOT met'} |",
        "| `serve` idle: serving process peak RSS | "
        + " | ".join(f"{serve[d]['serving_mb']:.0f} MB" for d in DTYPES)
        + f" | <= 600 MB: {'met' if serve['int8']['serving_mb'] <= 600 else 'NOT met'} |",
        "| `serve` idle: supervisor / largest decode worker | "
        + " | ".join(
            f"{serve[d]['supervisor_mb'] or 0:.0f} / {serve[d]['decode_worker_mb'] or 0:.0f} MB"
            for d in DTYPES
        )
        + " | |",
        f"| `transcribe {clip.name}`: wall | "
        + " | ".join(f"{cli[d]['wall_s']:.2f} s" for d in DTYPES)
        + f" | <= 3 s: {'met' if cli['int8']['wall_s'] <= 3 else 'NOT met'} |",
        f"| `transcribe {clip.name}`: peak RSS | "
        + " | ".join(f"{cli[d]['peak_mb']:.0f} MB" for d in DTYPES)
        + f" | <= 600 MB: {'met' if cli['int8']['peak_mb'] <= 600 else 'NOT met'} |",
    ]
    return "\n".join(lines)


def fidelity_rows(model_dir: Path, sherpa_model: Path, speech_dir: Path, threads: int) -> str:
    """A markdown table: ours int8 and sherpa-onnx's int8 model against our fp32, on every recording."""
    from sensevoice_serve.bench.fidelity import (
        measure_fidelity,
        onnx_logits,
        recording_pieces,
        runtime_logits,
    )
    from sensevoice_serve.pipeline import SenseVoice

    fp32 = SenseVoice.from_pretrained(model_dir, device="cpu", dtype="fp32", threads=threads)
    int8 = SenseVoice.from_pretrained(model_dir, device="cpu", dtype="int8", threads=threads)
    paths = sorted(p for p in speech_dir.iterdir() if p.suffix in {".wav", ".flac", ".mp3"})
    candidates = {
        "ours int8": runtime_logits(int8.model),
        "sherpa-onnx int8": onnx_logits(sherpa_model, threads),
    }
    results = measure_fidelity(fp32.features, recording_pieces(paths), runtime_logits(fp32.model), candidates)
    lines = [
        f"Fidelity to our fp32 over {', '.join(p.name for p in paths)} (pieces of <= 30 s, same features):",
        "",
        "| int8 model | frames with the same best token | token agreement | logits relative error |",
        "|---|---|---|---|",
    ]
    for name, fidelity in results.items():
        lines.append(
            f"| {name} | {fidelity.frame_agreement:.2%} | {fidelity.token_agreement:.2%} | "
            f"{fidelity.logits_relative_error:.3f} |"
        )
    return "\n".join(lines)
