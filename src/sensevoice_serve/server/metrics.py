"""Prometheus metrics, one registry per app so several apps (tests) can live in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..scheduler import BatchReport

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sensevoice_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "sensevoice_queue_depth", "requests admitted and not finished", registry=self.registry
        )
        self.batch_size = Histogram(
            "sensevoice_batch_size", "utterances per model forward", buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )  # fmt: skip
        self.audio_seconds = Counter(
            "sensevoice_audio_seconds", "audio seconds transcribed", registry=self.registry
        )
        self.decode_seconds = self._latency("decode", "upload decoding and segmentation")
        self.queue_seconds = self._latency("queue", "waiting for the inference worker")
        self.inference_seconds = self._latency("inference", "features, model and CTC decoding")

    def _latency(self, name: str, what: str) -> Histogram:
        return Histogram(f"sensevoice_{name}_seconds", what, buckets=LATENCY_BUCKETS, registry=self.registry)

    def record_batch(self, report: BatchReport) -> None:
        self.batch_size.observe(report.size)
        self.audio_seconds.inc(report.audio_seconds)
