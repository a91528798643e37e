"""Per-device metrics (label ``device``: ``cuda:0``, ``cuda:1``…) beside the server-wide ones, so a device
that lags, fails or idles shows on its own."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from ..router import Router
from ..scheduler import BatchReport


class DeviceMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.healthy = Gauge(
            "sensevoice_device_healthy",
            "1 while the device's inference worker runs",
            ["device"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "sensevoice_device_queue_depth", "requests waiting for, or in, the device's worker", ["device"],
            registry=registry,
        )  # fmt: skip
        self.outstanding_frames = Gauge(
            "sensevoice_device_outstanding_frames",
            "audio routed to the device and not yet answered, in 60 ms frames (what routing balances)",
            ["device"],
            registry=registry,
        )
        self.batches = Counter(
            "sensevoice_device_batches", "model forwards on the device", ["device"], registry=registry
        )
        self.audio_seconds = Counter(
            "sensevoice_device_audio_seconds", "audio seconds run through the device's model", ["device"],
            registry=registry,
        )  # fmt: skip

    def watch(self, router: Router) -> None:
        """Gauges read from ``router``'s schedulers at scrape time; counters shown from 0, so that a device
        that never ran is seen as such rather than missing."""
        for index, (label, scheduler) in enumerate(zip(router.labels, router.schedulers, strict=True)):
            self.batches.labels(label)
            self.audio_seconds.labels(label)
            self.healthy.labels(label).set_function(lambda s=scheduler: float(s.healthy))
            self.queue_depth.labels(label).set_function(lambda s=scheduler: s.pending)
            self.outstanding_frames.labels(label).set_function(lambda i=index: router.outstanding_frames(i))

    def recorder(self, label: str, also: Callable[[BatchReport], None]) -> Callable[[BatchReport], None]:
        """A scheduler's ``on_batch``: the device's counters, then ``also`` (the server-wide ones)."""

        def record(report: BatchReport) -> None:
            self.batches.labels(label).inc()
            self.audio_seconds.labels(label).inc(report.audio_seconds)
            also(report)

        return record

    def snapshot(self, router: Router) -> list[dict]:
        """Each device's batches and audio seconds so far (for ``bench``'s per-device report)."""
        read = self.registry.get_sample_value
        return [
            {
                "device": label,
                "batches": int(read("sensevoice_device_batches_total", {"device": label}) or 0),
                "audio_seconds": read("sensevoice_device_audio_seconds_total", {"device": label}) or 0.0,
            }
            for label in router.labels
        ]
