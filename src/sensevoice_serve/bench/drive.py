"""The request driver: the server's ``Service`` called as a route calls it, from client threads, without HTTP.

A request is what a route does: ``admit``, ``Service.transcribe`` (decode and VAD in the pool, the pieces
through the Scheduler, the file result assembled, the metrics counted), ``release``. The figures are those
users get, and the parts reported are ``transcribe``'s own timings.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..decoding import DecodeOptions
from ..errors import SenseVoiceError
from ..server.service import Service, Timings
from ..settings import load_settings
from ..tuning import TunedSettings
from .layout import PARTS
from .material import BenchClip

MAX_ERROR_MESSAGES = 3


@dataclass
class RequestTiming:
    total: float
    parts: dict[str, float]


class ServiceClient:
    """A started ``Service`` with these settings and an event loop of its own, as ``serve`` would run it."""

    def __init__(self, model_dir: Path, settings: TunedSettings, devices: str | None = None):
        values = {k: v for k, v in asdict(settings).items() if k != "source"}
        if devices is not None:
            del values["device"]  # an engine on each of ``devices``, as serve --devices runs
        server_settings = load_settings(model=str(model_dir), devices=devices, **values)
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="bench-loop", daemon=True)
        self._loop_thread.start()
        self.service = Service(server_settings)
        self.service.start()
        if not self.service.warm:
            self.close()
            raise SenseVoiceError(f"the server did not start: {self.service.load_error}")
        self.engine = self.service.engine
        self.engines = self.service.engines

    def device_report(self) -> list[dict]:
        """Each device's batches and audio seconds since the warm-up."""
        return self.service.device_metrics.snapshot(self.service.scheduler)

    def request(self, clip: BenchClip) -> RequestTiming:
        """One upload that asks for nothing special, end to end; blocks this thread until its result."""
        started = time.perf_counter()
        timings = asyncio.run_coroutine_threadsafe(self._route(clip), self._loop).result()
        return RequestTiming(time.perf_counter() - started, {name: getattr(timings, name) for name in PARTS})

    async def _route(self, clip: BenchClip) -> Timings:
        service = self.service
        service.admit()
        try:
            _, timings = await service.transcribe(
                clip.encoded, clip.label, DecodeOptions(), service.default_segmentation()
            )
        finally:
            service.release()
        return timings

    def close(self) -> None:
        self.service.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join()
        self._loop.close()

    def __enter__(self) -> ServiceClient:
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


def measure_latency(
    client: ServiceClient, clip: BenchClip, requests: int, stability: Stability
) -> dict | None:
    """One request at a time: percentiles of the end-to-end time and the mean of each part."""
    # Warm-up: the first request of a length pays one-off costs (allocator growth, kernel selection).
    stability.record(lambda: client.request(clip))
    timings = [t for t in (stability.record(lambda: client.request(clip)) for _ in range(requests)) if t]
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
    client: ServiceClient, clips: Sequence[BenchClip], concurrency: int, requests: int, stability: Stability
) -> float:
    """Audio seconds transcribed per second of wall time, ``concurrency`` clients sending back to back."""
    tickets = itertools.count()  # next() on a count is atomic under the GIL: each ticket goes to one client
    done_seconds: list[float] = []

    def sender() -> None:
        while (ticket := next(tickets)) < requests:
            clip = clips[ticket % len(clips)]
            if stability.record(lambda clip=clip: client.request(clip)) is not None:
                done_seconds.append(clip.seconds)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency, thread_name_prefix="bench-client") as senders:
        for running in [senders.submit(sender) for _ in range(concurrency)]:
            running.result()
    return sum(done_seconds) / (time.perf_counter() - started)
