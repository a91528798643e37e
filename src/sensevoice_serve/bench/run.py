"""One bench run: for each clip its cold start, latency, throughput, peak memory and errors, as a report."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

from ..errors import SenseVoiceError
from ..tuning import TunedSettings
from .cold_start import measure_cold_start
from .drive import ServiceClient, Stability, measure_latency, measure_throughput
from .layout import BENCH_REPORT
from .material import BenchClip
from .memory import PeakMemory
from .provenance import describe_run

Progress = Callable[[str], None]


def run_bench(
    model_dir: Path,
    clips: Sequence[BenchClip],
    settings: TunedSettings,
    requests: int,
    concurrency: Sequence[int],
    progress: Progress,
    devices: str | None = None,
) -> dict:
    """Cold start, latency, throughput, memory and stability for each clip; the report as a dict. With
    ``devices``, an engine on each (cold starts stay on one), and what each device did."""
    rows = [{"label": clip.label, "seconds": clip.seconds} for clip in clips]
    stabilities = [Stability() for _ in clips]
    # Cold starts first, while no model of ours is loaded here to compete for memory and cores.
    for clip, row, stability in zip(clips, rows, stabilities, strict=True):
        progress(f"cold start, {clip.label}")
        row["cold_start"] = _cold_start(model_dir, settings, clip, stability)
    with ServiceClient(model_dir, settings, devices) as client:
        engine = client.engine
        peaks: list[list[float | None]] = [[] for _ in client.engines]
        for clip, row, stability in zip(clips, rows, stabilities, strict=True):
            with ExitStack() as stack:
                memories = [stack.enter_context(PeakMemory(e.device)) for e in client.engines]
                progress(f"latency, {clip.label}: {requests} requests one at a time")
                row["latency"] = measure_latency(client, clip, requests, stability)
                row["throughput"] = _throughputs(client, clip, requests, concurrency, stability, progress)
            row["memory"] = memories[0].result
            row["stability"] = stability.to_dict()
            for peak, memory in zip(peaks, memories, strict=True):
                peak.append(memory.result["gpu_max_allocated_mb"])
        per_device = client.device_report()
    for device, peak in zip(per_device, peaks, strict=True):
        device["gpu_max_allocated_mb"] = max(peak) if None not in peak else None
    return {
        **describe_run(BENCH_REPORT, model_dir),
        "settings": asdict(settings),
        "device": engine.device,
        "dtype": engine.dtype,
        "requests": requests,
        "concurrency": list(concurrency),
        "clips": rows,
        "devices": per_device,
    }


def _cold_start(
    model_dir: Path, settings: TunedSettings, clip: BenchClip, stability: Stability
) -> dict | None:
    with tempfile.TemporaryDirectory(prefix="sensevoice-bench-") as scratch:
        clip_file = Path(scratch) / f"clip{clip.suffix}"
        clip_file.write_bytes(clip.encoded)
        try:
            return measure_cold_start(model_dir, settings, clip_file)
        except (SenseVoiceError, subprocess.TimeoutExpired) as error:
            stability.fail(f"cold start: {error}")
            return None


def _throughputs(
    client: ServiceClient,
    clip: BenchClip,
    requests: int,
    concurrency: Sequence[int],
    stability: Stability,
    progress: Progress,
) -> list[dict]:
    rows = []
    for clients in concurrency:
        total = max(requests, clients)
        progress(f"throughput, {clip.label}: {total} requests from {clients} clients")
        rate = measure_throughput(client, [clip], clients, total, stability)
        rows.append({"concurrency": clients, "requests": total, "audio_seconds_per_second": rate})
    return rows
