"""``sensevoice bench``: this machine measured the way users compare GPUs, through the path users get.

Requests run through the server's own ``Service`` (its start-up, warm-up, decode pool and Scheduler),
only without HTTP: the encoded file (mp3) is decoded and split by the VAD in the server's process pool, and
its pieces are submitted to the Scheduler that batches whatever is waiting. So the figures are those users
see, and the parts reported (decode, queue, features, model, decoding) are the parts of real requests.

Per clip length: cold start in a fresh process (start -> model ready -> first result), warm latency
percentiles one request at a time with their breakdown, throughput at several concurrencies, peak memory,
and every error seen. ``--tune`` measures a few settings candidates and writes the best as the profile that
serve and transcribe load; ``--compare A.json B.json`` sets two runs side by side.

Imports of torch and the engine live inside functions, so the CLI registers this command without them.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InvalidOption, SenseVoiceError

if TYPE_CHECKING:
    import numpy as np

    from .tuning import TunedSettings

DEFAULT_CLIP_SECONDS = (5.0, 10.0, 30.0, 60.0)
DEFAULT_CONCURRENCY = (1, 4, 16, 64)
DEFAULT_REQUESTS = 20
SAMPLE_RATE = 16000
MP3_BIT_RATE = 64000
PARTS = ("decode", "queue", "features", "model", "decoding")
REPORT_VERSION = 1  # of the JSON layout, so --compare can refuse files it cannot read
COLD_START_TIMEOUT_S = 600
NVML_SAMPLE_INTERVAL_S = 0.02
MAX_ERROR_MESSAGES = 3
# --tune keeps a candidate only if it is this much faster (run-to-run noise is a few per cent) and its
# one-at-a-time latency stays within this factor of the untuned settings' (throughput must not cost users).
TUNE_MIN_GAIN = 0.03
TUNE_LATENCY_LIMIT = 1.2
EXIT_OK, EXIT_REQUEST_ERRORS = 0, 1
SETTINGS_SOURCES = {"rules": "automatic", "profile": "tuned profile", "user": "given on the command line"}


# ---------------------------------------------------------------------------------------------- clips


@dataclass(frozen=True)
class BenchClip:
    """What every request of one row sends: an encoded file, as users upload them."""

    label: str
    seconds: float
    encoded: bytes
    suffix: str


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sensevoice-serve"


def shared_speech_dir() -> Path | None:
    """``../shared/audio`` beside a source checkout (the project's real recordings), when it is there."""
    candidate = Path(__file__).resolve().parents[3] / "shared" / "audio"
    return candidate if candidate.is_dir() else None


def random_full_checkpoint(cache_dir: Path) -> Path:
    """The full-size RANDOM-weight checkpoint, generated once into the cache (about 0.9 GB)."""
    from .checkpoint import RANDOM_WEIGHTS_MARKER
    from .random_checkpoint import write_random_checkpoint

    directory = cache_dir / "random-full"
    if (directory / RANDOM_WEIGHTS_MARKER).is_file():  # the marker is written last
        return directory
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Written beside it and renamed, so an interrupted run never leaves a half checkpoint that looks whole.
    staging = Path(tempfile.mkdtemp(prefix="random-full.partial.", dir=cache_dir))
    write_random_checkpoint(staging, "full", seed=0)
    if directory.exists():
        shutil.rmtree(directory)
    staging.rename(directory)
    return directory


def decodable_recordings(directory: Path) -> Iterator[np.ndarray]:
    """The 16 kHz samples of each decodable recording in ``directory``, by name."""
    from .audio import decode_audio
    from .errors import AudioDecodeError

    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        try:
            yield decode_audio(path).samples
        except AudioDecodeError:
            continue  # READMEs, transcripts and anything else that is not audio


def speech_material(directory: Path, seconds_needed: float) -> np.ndarray:
    """The decodable recordings in ``directory`` (by name) joined into one stretch of 16 kHz speech."""
    import numpy as np

    pieces: list[np.ndarray] = []
    total = 0
    for samples in decodable_recordings(directory):
        pieces.append(samples)
        total += len(samples)
        if total >= seconds_needed * SAMPLE_RATE:
            break
    if not pieces:
        raise InvalidOption(f"no decodable audio in {directory}")
    return np.concatenate(pieces)


def encode_mp3(samples: np.ndarray) -> bytes:
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=SAMPLE_RATE)
        stream.layout = "mono"
        stream.bit_rate = MP3_BIT_RATE
        frame = av.AudioFrame.from_ndarray(samples[None], format="flt", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = 0
        frame.time_base = Fraction(1, SAMPLE_RATE)
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def speech_clips(lengths: Sequence[float], material: np.ndarray) -> list[BenchClip]:
    """One mp3 per length, cut from the start of the material (repeated when the material is shorter)."""
    import numpy as np

    clips = []
    for seconds in lengths:
        count = round(seconds * SAMPLE_RATE)
        samples = np.tile(material, math.ceil(count / len(material)))[:count]
        clips.append(BenchClip(f"{seconds:g} s", count / SAMPLE_RATE, encode_mp3(samples), ".mp3"))
    return clips


def file_clips(paths: Sequence[str]) -> list[BenchClip]:
    from .audio import decode_audio

    clips = []
    for raw in paths:
        path = Path(raw)
        encoded = path.read_bytes()
        clips.append(BenchClip(path.name, decode_audio(encoded).duration, encoded, path.suffix))
    return clips


# ---------------------------------------------------------------------------------------------- requests


@dataclass
class RequestTiming:
    total: float
    parts: dict[str, float]


class RequestPath:
    """The server's ``Service`` (decode pool, engine, Scheduler, warm-up), driven by threads without HTTP.

    A request is what a route does: admission, decode and segment in the pool, the pieces to the Scheduler,
    on the one event loop. Only the assembly of a file result and the metrics are left out, so that the
    Scheduler's per-part timings can be reported.
    """

    def __init__(self, model_dir: Path, settings: TunedSettings):
        import asyncio

        from .decoding import DecodeOptions
        from .server.service import Service
        from .settings import load_settings

        server_settings = load_settings(
            model=str(model_dir), **{k: v for k, v in asdict(settings).items() if k != "source"}
        )
        self.options = DecodeOptions()  # what an upload that asks for nothing gets
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="bench-loop", daemon=True)
        self._loop_thread.start()
        self.service = Service(server_settings)
        self.service.start()
        if not self.service.warm:
            self.close()
            raise SenseVoiceError(f"the server did not start: {self.service.load_error}")
        self.engine = self.service.engine

    def run(self, clip: BenchClip) -> RequestTiming:
        import asyncio

        started = time.perf_counter()
        parts = asyncio.run_coroutine_threadsafe(self._request(clip.encoded), self._loop).result()
        return RequestTiming(time.perf_counter() - started, parts)

    async def _request(self, data: bytes) -> dict[str, float]:
        import asyncio

        from .batching import Utterance

        service = self.service
        service.admit()
        try:
            started = time.perf_counter()
            decoded = await service.pool.decode(
                data, service.settings.max_duration_seconds, service.default_segmentation()
            )
            decode_seconds = time.perf_counter() - started
            utterances = [Utterance(piece.samples, self.options, piece.offset) for piece in decoded.pieces]
            result = await asyncio.wrap_future(service.scheduler.submit(utterances))
        finally:
            service.release()
        return {
            "decode": decode_seconds,
            "queue": result.queue_seconds,
            "features": result.timings.features,
            "model": result.timings.model,
            "decoding": result.timings.decoding,
        }

    def close(self) -> None:
        self.service.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join()
        self._loop.close()

    def __enter__(self) -> RequestPath:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass
class Stability:
    """Every request sent and how many failed; a failure is a finding to report, not a reason to stop."""

    requests: int = 0
    errors: int = 0
    out_of_memory: int = 0
    messages: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, request: Callable[[], RequestTiming]) -> RequestTiming | None:
        try:
            timing = request()
        except Exception as error:  # noqa: BLE001 - whatever a request raises is counted and reported
            self.fail(f"{type(error).__name__}: {error}")
            return None
        with self._lock:
            self.requests += 1
        return timing

    def fail(self, message: str) -> None:
        with self._lock:
            self.requests += 1
            self.errors += 1
            # CUDA says "out of memory"; the CPU allocator "can't allocate memory".
            if "out of memory" in message.lower() or "can't allocate memory" in message.lower():
                self.out_of_memory += 1
            if message not in self.messages and len(self.messages) < MAX_ERROR_MESSAGES:
                self.messages.append(message)

    def to_dict(self) -> dict:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "out_of_memory": self.out_of_memory,
            "messages": list(self.messages),
        }


def percentile(values: Sequence[float], share: float) -> float:
    """Linear interpolation between closest ranks, as numpy's default does."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * share
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def measure_latency(path: RequestPath, clip: BenchClip, requests: int, stability: Stability) -> dict | None:
    """One request at a time: percentiles of the end-to-end time and the mean of each part."""
    # Warm-up: the first request of a length pays one-off costs (allocator growth, kernel selection).
    stability.record(lambda: path.run(clip))
    timings = [t for t in (stability.record(lambda: path.run(clip)) for _ in range(requests)) if t]
    if not timings:
        return None
    totals = [t.total for t in timings]
    parts = {name: sum(t.parts[name] for t in timings) / len(timings) for name in PARTS}
    mean = sum(totals) / len(totals)
    return {
        "requests": len(timings),
        "p50_s": percentile(totals, 0.5),
        "p90_s": percentile(totals, 0.9),
        "p99_s": percentile(totals, 0.99),
        "mean_s": mean,
        "parts_s": parts,
        "parts_over_total": sum(parts.values()) / mean,
    }


def measure_throughput(
    path: RequestPath, clips: Sequence[BenchClip], concurrency: int, requests: int, stability: Stability
) -> float:
    """Audio seconds transcribed per second of wall time, ``concurrency`` clients sending back to back."""
    tickets = itertools.count()  # next() on a count is atomic under the GIL: each ticket goes to one client
    done_seconds: list[float] = []

    def client() -> None:
        while (ticket := next(tickets)) < requests:
            clip = clips[ticket % len(clips)]
            if stability.record(lambda clip=clip: path.run(clip)) is not None:
                done_seconds.append(clip.seconds)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency, thread_name_prefix="bench-client") as clients:
        for running in [clients.submit(client) for _ in range(concurrency)]:
            running.result()
    return sum(done_seconds) / (time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------- memory


def _reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux); False where the peak can only be read since process start."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB elsewhere


class _NvmlPeak:
    """Samples NVML's view of GPU memory (this process's, else the whole device's) and keeps the peak.

    NVML sees what torch's allocator does not: the CUDA context, cuBLAS/cuDNN workspaces, fragmentation.
    """

    def __init__(self, device_index: int):
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        self.scope = "process"
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="nvml-sampler", daemon=True)
        self._thread.start()

    def _used_mb(self) -> float:
        pid = os.getpid()
        for process in self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle):
            if process.pid == pid and process.usedGpuMemory is not None:
                return process.usedGpuMemory / 2**20
        # In a container NVML reports host pids, so our own is not found: fall back to the device.
        self.scope = "device"
        return self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._used_mb())
            self._stop.wait(NVML_SAMPLE_INTERVAL_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._nvml.nvmlShutdown()


class PeakMemory:
    """Peak resident memory of this process and peak GPU memory (torch's count and NVML's) over a block."""

    def __init__(self, device: object):
        self.device = device
        self.rss_window = False
        self._nvml: _NvmlPeak | None = None
        self.result: dict = {}

    def __enter__(self) -> PeakMemory:
        import torch

        self.rss_window = _reset_peak_rss()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            try:
                self._nvml = _NvmlPeak(self.device.index or 0)
            except Exception:  # noqa: BLE001 - nvidia-ml-py missing or NVML unusable: torch's count remains
                self._nvml = None
        return self

    def __exit__(self, *exc_info: object) -> None:
        import torch

        self.result = {
            "peak_rss_mb": _peak_rss_mb(),
            "peak_rss_scope": "clip" if self.rss_window else "process",
            "gpu_max_allocated_mb": None,
            "gpu_nvml_peak_mb": None,
            "gpu_nvml_scope": None,
        }
        if self.device.type == "cuda":
            self.result["gpu_max_allocated_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        if self._nvml is not None:
            self._nvml.stop()
            self.result["gpu_nvml_peak_mb"] = self._nvml.peak_mb
            self.result["gpu_nvml_scope"] = self._nvml.scope


# ---------------------------------------------------------------------------------------------- cold start


def measure_cold_start(model_dir: Path, settings: TunedSettings, clip_file: Path) -> dict:
    """A fresh Python process: seconds from its start to model ready, and to its first result."""
    command = [
        sys.executable,
        "-m",
        "sensevoice_serve.bench",
        "--model",
        str(model_dir),
        "--clip",
        str(clip_file),
        "--settings",
        json.dumps(asdict(settings)),
    ]
    started = time.time()  # wall clock: the child reports its marks on the same clock
    completed = subprocess.run(command, capture_output=True, text=True, timeout=COLD_START_TIMEOUT_S)
    if completed.returncode != 0:
        tail = completed.stderr.strip().splitlines()[-1:] or ["no output"]
        raise SenseVoiceError(f"cold-start process exited with {completed.returncode}: {tail[0]}")
    marks = json.loads(completed.stdout.strip().splitlines()[-1])
    return {"ready_s": marks["ready"] - started, "first_result_s": marks["first_result"] - started}


def _cold_start_process(argv: Sequence[str]) -> int:
    """Child of ``measure_cold_start``: start as the server does (ready = its /ready), answer one request."""
    from .tuning import TunedSettings

    parser = argparse.ArgumentParser(prog="python -m sensevoice_serve.bench")
    parser.add_argument("--model", required=True)
    parser.add_argument("--clip", required=True)
    parser.add_argument("--settings", required=True, help="TunedSettings as JSON")
    args = parser.parse_args(argv)
    settings = TunedSettings(**json.loads(args.settings))
    clip_path = Path(args.clip)
    with RequestPath(Path(args.model), settings) as path:
        ready = time.time()
        path.run(BenchClip(clip_path.name, 0.0, clip_path.read_bytes(), clip_path.suffix))
        first_result = time.time()
    print(json.dumps({"ready": ready, "first_result": first_result}))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- runs


def cpu_model() -> str:
    """The CPU's marketing name, which is how people tell machines apart in posted tables."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_report() -> dict:
    """What the JSON needs to compare runs across machines: hardware, driver and software versions.

    ``doctor`` holds every check of ``sensevoice doctor`` (driver, CUDA build, GPUs with a real matmul,
    CPU flags, codecs), so a surprising figure can be traced to the machine.
    """
    from importlib import metadata

    from .doctor import run_checks
    from .tuning import probe_machine

    versions = {}
    for package in ("sensevoice-serve", "torch", "numpy", "av", "onnxruntime", "nvidia-ml-py"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "machine": asdict(probe_machine()),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "doctor": [asdict(check) for check in run_checks(None)],
    }


def model_report(model_dir: Path) -> dict:
    from .checkpoint import resolve_model

    files = resolve_model(model_dir)
    encoder = files.config.get("encoder_conf", {})
    return {
        "path": str(model_dir),
        "random_weights": files.random_weights,
        "num_blocks": encoder.get("num_blocks"),
        "output_size": encoder.get("output_size"),
    }


def run_bench(
    model_dir: Path,
    clips: Sequence[BenchClip],
    settings: TunedSettings,
    requests: int,
    concurrency: Sequence[int],
    progress: Callable[[str], None],
) -> dict:
    """Cold start, latency, throughput, memory and stability for each clip; the report as a dict."""
    rows = [{"label": clip.label, "seconds": clip.seconds} for clip in clips]
    stabilities = [Stability() for _ in clips]
    # Cold starts first, while no model of ours is loaded here to compete for memory and cores.
    with tempfile.TemporaryDirectory(prefix="sensevoice-bench-") as scratch:
        for clip, row, stability in zip(clips, rows, stabilities, strict=True):
            progress(f"cold start, {clip.label}")
            clip_file = Path(scratch) / f"clip{clip.suffix}"
            clip_file.write_bytes(clip.encoded)
            try:
                row["cold_start"] = measure_cold_start(model_dir, settings, clip_file)
            except (SenseVoiceError, subprocess.TimeoutExpired) as error:
                row["cold_start"] = None
                stability.fail(f"cold start: {error}")

    with RequestPath(model_dir, settings) as path:
        engine = path.engine
        for clip, row, stability in zip(clips, rows, stabilities, strict=True):
            with PeakMemory(engine.device) as memory:
                progress(f"latency, {clip.label}: {requests} requests one at a time")
                row["latency"] = measure_latency(path, clip, requests, stability)
                row["throughput"] = []
                for clients in concurrency:
                    total = max(requests, clients)
                    progress(f"throughput, {clip.label}: {total} requests from {clients} clients")
                    rate = measure_throughput(path, [clip], clients, total, stability)
                    row["throughput"].append(
                        {"concurrency": clients, "requests": total, "audio_seconds_per_second": rate}
                    )
            row["memory"] = memory.result
            row["stability"] = stability.to_dict()
    return {
        "report": "sensevoice-bench",
        "version": REPORT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model_report(model_dir),
        "settings": asdict(settings),
        "device": str(engine.device),
        "dtype": str(engine.dtype).removeprefix("torch."),
        "requests": requests,
        "concurrency": list(concurrency),
        **machine_report(),
        "clips": rows,
    }


# ---------------------------------------------------------------------------------------------- tuning


def tuning_steps(baseline: TunedSettings, cores: int, gpu: bool) -> list[list[dict]]:
    """Alternatives to try, one dimension at a time (coordinate search), each a set of overrides."""
    if gpu:
        # The GPU does the model; the cores decode. More workers is the lever, and fp16 vs bf16.
        splits = [(baseline.torch_threads, max(1, baseline.decode_workers * 2))]
    else:
        # Torch's threads and the decode workers share the cores.
        splits = [(cores, 1), (max(1, cores - 1), 1), (max(1, cores - 2), 2)]
    steps = [
        [{"torch_threads": threads, "decode_workers": workers} for threads, workers in splits],
        [
            {"max_batch_frames": baseline.max_batch_frames // 2},
            {"max_batch_frames": baseline.max_batch_frames * 2},
        ],
        [{"max_wait_ms": baseline.max_wait_ms / 2}, {"max_wait_ms": baseline.max_wait_ms * 2}],
    ]
    if gpu:
        steps.append([{"dtype": "fp16"}, {"dtype": "bf16"}])
    return steps


def measure_candidate(
    model_dir: Path, settings: TunedSettings, clips: Sequence[BenchClip], requests: int, concurrency: int
) -> dict:
    """One candidate on a mixed workload (every clip in turn): one-at-a-time p50 and throughput.

    Each candidate is a server started afresh with these settings, as a profile would start it.
    """
    stability = Stability()
    with RequestPath(model_dir, settings) as path:
        for clip in clips:
            stability.record(lambda clip=clip: path.run(clip))  # warm-up per length
        timings = [stability.record(lambda i=i: path.run(clips[i % len(clips)])) for i in range(requests)]
        totals = [t.total for t in timings if t]
        rate = measure_throughput(path, clips, concurrency, max(requests, concurrency), stability)
    return {
        "settings": asdict(settings),
        "p50_s": percentile(totals, 0.5) if totals else None,
        "audio_seconds_per_second": rate,
        "errors": stability.errors,
    }


def _better(candidate: dict, best: dict, untuned: dict) -> bool:
    """Faster than ``best`` by more than noise, without errors, and without costing users latency."""
    return (
        candidate["errors"] == 0
        and candidate["p50_s"] is not None
        and untuned["p50_s"] is not None
        and candidate["p50_s"] <= TUNE_LATENCY_LIMIT * untuned["p50_s"]
        and candidate["audio_seconds_per_second"] > best["audio_seconds_per_second"] * (1 + TUNE_MIN_GAIN)
    )


def _averaged(first: dict, second: dict) -> dict:
    p50 = [m["p50_s"] for m in (first, second) if m["p50_s"] is not None]
    return {
        "settings": first["settings"],
        "p50_s": sum(p50) / len(p50) if p50 else None,
        "audio_seconds_per_second": (first["audio_seconds_per_second"] + second["audio_seconds_per_second"])
        / 2,
        "errors": first["errors"] + second["errors"],
    }


def run_tune(
    model_dir: Path,
    clips: Sequence[BenchClip],
    baseline: TunedSettings,
    requests: int,
    concurrency: int,
    progress: Callable[[str], None],
) -> tuple[dict, TunedSettings]:
    """Coordinate search from the untuned settings, then the winner confirmed against them once more."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    candidates: list[dict] = []
    measured: set[TunedSettings] = set()

    def measure(settings: TunedSettings, again: bool = False) -> dict:
        progress(f"candidate {len(candidates) + 1}: {_settings_text(asdict(settings))}")
        measured.add(settings)
        candidates.append(
            {**measure_candidate(model_dir, settings, clips, requests, concurrency), "again": again}
        )
        return candidates[-1]

    untuned = measure(baseline)
    best_settings, best = baseline, untuned
    for step in tuning_steps(baseline, cores, baseline.device.startswith("cuda")):
        for overrides in step:
            candidate_settings = replace(best_settings, **overrides)
            if candidate_settings not in measured:
                candidate = measure(candidate_settings)
                if _better(candidate, best, untuned):
                    best_settings, best = candidate_settings, candidate
    # One lucky run must not make the profile: both are measured again and judged on their averages.
    untuned_figures, best_figures = untuned, best
    if best is not untuned:
        untuned_figures = _averaged(untuned, measure(baseline, again=True))
        best_figures = _averaged(best, measure(best_settings, again=True))
        if not _better(best_figures, untuned_figures, untuned_figures):
            best_settings, best, best_figures = baseline, untuned, untuned_figures
    change = (
        best_figures["p50_s"] / untuned_figures["p50_s"] - 1
        if best_figures["p50_s"] and untuned_figures["p50_s"]
        else None
    )
    report = {
        "report": "sensevoice-bench-tune",
        "version": REPORT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model_report(model_dir),
        "clips": [{"label": clip.label, "seconds": clip.seconds} for clip in clips],
        "requests": requests,
        "concurrency": concurrency,
        **machine_report(),
        "candidates": candidates,
        "baseline": 0,
        "best": candidates.index(best),
        "throughput_gain": best_figures["audio_seconds_per_second"]
        / untuned_figures["audio_seconds_per_second"]
        - 1,
        "latency_change": change,
    }
    return report, best_settings


# ---------------------------------------------------------------------------------------------- output


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _s(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds:.2f} s"


def _mb(megabytes: float | None) -> str:
    return "–" if megabytes is None else f"{megabytes:,.0f} MB"


def _times(rate: float | None) -> str:
    return "–" if rate is None else f"{rate:.1f}×"


def _settings_text(settings: dict) -> str:
    return (
        f"{settings['device']} {settings['dtype']}, torch threads {settings['torch_threads']}, "
        f"decode workers {settings['decode_workers']}, {settings['max_batch_frames']} frames/batch, "
        f"max wait {settings['max_wait_ms']:g} ms"
    )


def machine_label(report: dict) -> str:
    gpus = report["machine"]["gpus"]
    if gpus:
        return ", ".join(gpu["name"] for gpu in gpus)
    return f"{report['cpu_model']} ({report['machine']['cpu_count']} cores)"


def _header(report: dict) -> list[str]:
    model = report["model"]
    lines = [f"### sensevoice bench: {model['path']} on {machine_label(report)}", ""]
    if model["random_weights"]:
        lines += [
            f"**RANDOM weights** ({model['num_blocks']} blocks, width {model['output_size']}): speed and "
            "memory are representative, transcripts are meaningless.",
            "",
        ]
    versions = ", ".join(f"{name} {version}" for name, version in report["versions"].items())
    lines += [f"Machine: {report['platform']}, Python {report['python']}; {versions}", ""]
    return lines


def render_markdown(report: dict) -> str:
    """The bench report as the tables users post when comparing machines."""
    lines = _header(report)
    lines += [
        f"Settings ({SETTINGS_SOURCES[report['settings']['source']]}): {_settings_text(report['settings'])} "
        f"(ran on {report['device']}, {report['dtype']}). "
        f"Latency: {report['requests']} requests one at a time, end to end from mp3 to result; the parts "
        "are their means.",
        "",
        "| clip | cold: ready | cold: first result | p50 | p90 | p99 | decode+VAD | queue | features "
        "| model | decoding | parts/total |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["clips"]:
        cold = row["cold_start"] or {}
        latency = row["latency"]
        if latency is None:
            cells = ["–"] * (3 + len(PARTS) + 1)
        else:
            parts = latency["parts_s"]
            cells = [_ms(latency[k]) for k in ("p50_s", "p90_s", "p99_s")]
            cells += [_ms(parts[name]) for name in PARTS]
            cells.append(f"{latency['parts_over_total']:.0%}")
        lines.append(
            "| "
            + " | ".join([row["label"], _s(cold.get("ready_s")), _s(cold.get("first_result_s")), *cells])
            + " |"
        )
    concurrency = report["concurrency"]
    lines += [
        "",
        "| clip | "
        + " | ".join(f"× real time @{c}" for c in concurrency)
        + " | peak RSS | peak GPU (torch) | peak GPU (NVML) | stable |",
        "|---|" + "---|" * (len(concurrency) + 4),
    ]
    for row in report["clips"]:
        rates = {t["concurrency"]: t["audio_seconds_per_second"] for t in row["throughput"]}
        memory, stability = row["memory"], row["stability"]
        if stability["errors"]:
            stable = f"no: {stability['errors']} of {stability['requests']} failed"
            if stability["out_of_memory"]:
                stable += f" ({stability['out_of_memory']} OOM)"
        else:
            stable = f"yes ({stability['requests']} requests)"
        cells = [_times(rates.get(c)) for c in concurrency]
        cells += [_mb(memory["peak_rss_mb"]), _mb(memory["gpu_max_allocated_mb"])]
        cells += [_mb(memory["gpu_nvml_peak_mb"]), stable]
        lines.append("| " + " | ".join([row["label"], *cells]) + " |")
    errors = [m for row in report["clips"] for m in row["stability"]["messages"]]
    if errors:
        lines += ["", "Errors seen:", *(f"- {message}" for message in errors)]
    return "\n".join(lines) + "\n"


def render_tune_markdown(report: dict) -> str:
    lines = _header(report)
    clips = ", ".join(clip["label"] for clip in report["clips"])
    lines += [
        f"Tuning on a mixed workload ({clips}): p50 of {report['requests']} requests one at a time, "
        f"throughput with {report['concurrency']} concurrent clients.",
        "",
        "| # | settings | p50 | × real time | errors | |",
        "|---|---|---|---|---|---|",
    ]
    for index, candidate in enumerate(report["candidates"]):
        marks = ["measured again"] if candidate["again"] else []
        if index == report["baseline"]:
            marks.append("untuned")
        if index == report["best"]:
            marks.append("**best**")
        lines.append(
            f"| {index + 1} | {_settings_text(candidate['settings'])} | {_ms(candidate['p50_s'])} | "
            f"{_times(candidate['audio_seconds_per_second'])} | {candidate['errors']} | {', '.join(marks)} |"
        )
    change = report["latency_change"]
    confirmed = any(candidate["again"] for candidate in report["candidates"])
    averaged = " (each measured twice, averaged)" if confirmed else ""
    lines += [
        "",
        f"Gain over the untuned settings{averaged}: throughput {report['throughput_gain']:+.0%}"
        + (f", one-at-a-time p50 {change:+.0%}" if change is not None else "")
        + ".",
    ]
    return "\n".join(lines) + "\n"


def load_report(path: str | Path) -> dict:
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InvalidOption(f"cannot read bench results {path}: {error}") from error
    if report.get("report") != "sensevoice-bench" or report.get("version") != REPORT_VERSION:
        raise InvalidOption(f"{path} is not a sensevoice bench --json file (version {REPORT_VERSION})")
    return report


def render_comparison(first: dict, second: dict) -> str:
    """Two runs side by side with B/A for every figure both have; arrows say which way is better."""
    a, b = machine_label(first), machine_label(second)
    lines = [
        f"### sensevoice bench: A = {a} ({first['device']}, {first['dtype']}) vs "
        f"B = {b} ({second['device']}, {second['dtype']})",
        "",
    ]
    if first["model"]["random_weights"] != second["model"]["random_weights"]:
        lines += ["Note: one run used RANDOM weights and the other did not.", ""]
    lines += ["| clip | figure | A | B | B/A |", "|---|---|---|---|---|"]
    rows_b = {row["label"]: row for row in second["clips"]}
    for row_a in first["clips"]:
        row_b = rows_b.get(row_a["label"])
        if row_b is None:
            continue
        for name, unit_format, value_a, value_b in _comparable_figures(row_a, row_b):
            ratio = f"{value_b / value_a:.2f}" if value_a and value_b is not None else "–"
            lines.append(
                f"| {row_a['label']} | {name} | {unit_format(value_a)} | {unit_format(value_b)} | {ratio} |"
            )
    return "\n".join(lines) + "\n"


def _comparable_figures(row_a: dict, row_b: dict) -> list[tuple[str, Callable, float | None, float | None]]:
    def nested(row: dict, *keys: str) -> float | None:
        value = row
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    figures = [
        ("cold first result ↓", _s, ("cold_start", "first_result_s")),
        ("p50 latency ↓", _ms, ("latency", "p50_s")),
        ("p90 latency ↓", _ms, ("latency", "p90_s")),
        ("p99 latency ↓", _ms, ("latency", "p99_s")),
    ]
    result = [(name, fmt, nested(row_a, *keys), nested(row_b, *keys)) for name, fmt, keys in figures]
    rates_b = {t["concurrency"]: t["audio_seconds_per_second"] for t in row_b["throughput"]}
    for entry in row_a["throughput"]:
        if entry["concurrency"] in rates_b:
            result.append(
                (
                    f"× real time @{entry['concurrency']} ↑",
                    _times,
                    entry["audio_seconds_per_second"],
                    rates_b[entry["concurrency"]],
                )
            )
    for name, key in (("peak RSS ↓", "peak_rss_mb"), ("peak GPU (torch) ↓", "gpu_max_allocated_mb")):
        result.append((name, _mb, row_a["memory"][key], row_b["memory"][key]))
    result.append(("errors ↓", str, row_a["stability"]["errors"], row_b["stability"]["errors"]))
    return result


# ---------------------------------------------------------------------------------------------- command


def _numbers(kind: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from error
        if not values or any(value <= 0 for value in values):
            raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
        return values

    return parse


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "bench",
        help="measure latency, throughput and memory on this machine (--tune, --compare)",
        description="Measure this machine through the path the server uses; see benchmarks/README.md.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="model directory or hub id (default: the configured model)")
    source.add_argument(
        "--random-weights",
        action="store_true",
        help="a generated full-size RANDOM-weight checkpoint, cached in ~/.cache/sensevoice-serve/"
        "random-full (speed does not depend on weight values; results are labelled)",
    )
    parser.add_argument(
        "--clip-seconds",
        type=_numbers(float),
        default=DEFAULT_CLIP_SECONDS,
        metavar="S,S,...",
        help="clip lengths cut from real speech and encoded to mp3 (default: 5,10,30,60)",
    )
    parser.add_argument(
        "--clips", nargs="+", metavar="FILE", help="benchmark these files instead, a row each"
    )
    parser.add_argument(
        "--clips-dir", help="recordings to cut clips from (default: ../shared/audio beside the checkout)"
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=DEFAULT_REQUESTS,
        help=f"one-at-a-time requests per clip for the latency percentiles, and the least sent at each "
        f"concurrency (default {DEFAULT_REQUESTS})",
    )
    parser.add_argument(
        "--concurrency",
        type=_numbers(int),
        default=DEFAULT_CONCURRENCY,
        metavar="N,N,...",
        help="concurrent clients for throughput (default: 1,4,16,64)",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="also write the results as JSON to PATH; alone, print JSON instead of the tables",
    )
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: tuned / automatic)")
    parser.add_argument("--dtype", help="auto | fp32 | fp16 | bf16 (default: tuned / automatic)")
    parser.add_argument("--torch-threads", type=int, help="torch's intra-op threads")
    parser.add_argument("--decode-workers", type=int, help="audio decoding processes")
    parser.add_argument("--max-batch-frames", type=int, help="padded 60 ms frames per forward")
    parser.add_argument("--max-wait-ms", type=float, help="how long a request waits for company")
    parser.add_argument(
        "--tune",
        action="store_true",
        help="measure a few settings candidates and write the best to the profile serve and transcribe load",
    )
    parser.add_argument(
        "--profile",
        help="where --tune writes the profile (default: the one serve and transcribe load, "
        "~/.config/sensevoice-serve/profile.json or $SENSEVOICE_PROFILE)",
    )
    parser.add_argument(
        "--compare", nargs=2, metavar=("A.json", "B.json"), help="print two --json results side by side"
    )
    parser.set_defaults(handler=_bench_command)


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _emit(report: dict, markdown: str, json_target: str | None) -> None:
    text = json.dumps(report, indent=2)
    if json_target == "-":
        print(text)
        return
    if json_target:
        Path(json_target).write_text(text + "\n")
    print(markdown, end="")


def _bench_command(args: argparse.Namespace) -> int:
    if args.compare:
        print(render_comparison(load_report(args.compare[0]), load_report(args.compare[1])), end="")
        return EXIT_OK
    if args.requests < 1:
        raise InvalidOption("--requests must be at least 1")
    from .checkpoint import resolve_model
    from .settings import load_settings
    from .tuning import (
        auto_settings,
        default_profile_path,
        probe_machine,
        resolve_tuned_settings,
        save_profile,
    )

    if args.random_weights:
        _progress("using the full-size RANDOM-weight checkpoint (generated once, ~0.9 GB)")
        model_dir = random_full_checkpoint(default_cache_dir())
    else:
        # A hub id becomes its local directory once, here, so every process below loads the same files.
        model_dir = resolve_model(args.model or load_settings().model).directory
    if args.clips:
        clips = file_clips(args.clips)
    else:
        speech_dir = Path(args.clips_dir) if args.clips_dir else shared_speech_dir()
        if speech_dir is None:
            raise InvalidOption("no recordings to cut clips from: pass --clips-dir DIR or --clips FILE...")
        clips = speech_clips(args.clip_seconds, speech_material(speech_dir, max(args.clip_seconds)))
    explicit = {
        name: getattr(args, name)
        for name in ("device", "dtype", "torch_threads", "decode_workers", "max_batch_frames", "max_wait_ms")
        if getattr(args, name) not in (None, "auto")
    }

    if args.tune:
        # The untuned settings: what serve uses with no profile, whatever profile exists now.
        baseline = replace(auto_settings(probe_machine()), **explicit)
        report, best = run_tune(model_dir, clips, baseline, args.requests, max(args.concurrency), _progress)
        profile = save_profile(Path(args.profile) if args.profile else default_profile_path(), best)
        markdown = render_tune_markdown(report) + f"\nWrote the best settings to {profile}.\n"
        _emit(report, markdown, args.json)
        return EXIT_OK

    settings = resolve_tuned_settings(explicit)
    report = run_bench(model_dir, clips, settings, args.requests, args.concurrency, _progress)
    _emit(report, render_markdown(report), args.json)
    return EXIT_REQUEST_ERRORS if any(row["stability"]["errors"] for row in report["clips"]) else EXIT_OK


if __name__ == "__main__":
    sys.exit(_cold_start_process(sys.argv[1:]))
