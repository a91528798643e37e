"""Prometheus metrics, one registry per app so several apps (tests) can live in one process."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..scheduler import BatchReport

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sensevoice_http_requests",
            "HTTP responses by endpoint (route template) and status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "sensevoice_http_request_seconds",
            "HTTP request latency by endpoint, upload included",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_progress = Gauge(
            "sensevoice_requests_in_progress",
            "transcription requests admitted (upload complete): decoding, queued or running",
            registry=self.registry,
        )
        self.uploads_in_progress = Gauge(
            "sensevoice_uploads_in_progress", "request bodies being received", registry=self.registry
        )
        self.decoding = Gauge(
            "sensevoice_decode_workers_busy", "decode workers decoding an upload", registry=self.registry
        )
        self.upload_bytes = Gauge(
            "sensevoice_upload_temp_bytes",
            "bytes of uploads in the temp directory (received or being decoded)",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "sensevoice_queue_depth",
            "decoded uploads waiting for, or in, the inference worker",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "sensevoice_batch_size", "utterances per model forward", buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.audio_seconds = Counter(
            "sensevoice_audio_seconds", "audio seconds run through the model", registry=self.registry
        )
        self.decode_seconds = self._latency(
            "decode", "upload decoding and VAD segmentation, pool wait included"
        )
        self.queue_seconds = self._latency("queue", "waiting for the inference worker")
        self.inference_seconds = self._latency("inference", "features, model and CTC decoding of a request")
        self.realtime_sessions = Gauge(
            "sensevoice_realtime_sessions", "open realtime (WebSocket) sessions", registry=self.registry
        )
        self.realtime_partials = Counter(
            "sensevoice_realtime_partials",
            "partial results by outcome: sent, or skipped (no room in the next batch)",
            ["outcome"],
            registry=self.registry,
        )
        self.realtime_partial_seconds = self._latency(
            "realtime_partial", "a partial result, from its request to its delta (queue and decode)"
        )
        self.realtime_final_seconds = self._latency(
            "realtime_final", "from the end of an utterance (VAD end or commit) to its completed transcript"
        )

    def _latency(self, name: str, what: str) -> Histogram:
        return Histogram(f"sensevoice_{name}_seconds", what, buckets=LATENCY_BUCKETS, registry=self.registry)

    def watch(self, **sources: Callable[[], float]) -> None:
        """Gauges read at scrape time, so they never go stale: the gauge attribute named, and its source."""
        for name, source in sources.items():
            getattr(self, name).set_function(source)

    def record_batch(self, report: BatchReport) -> None:
        self.batch_size.observe(report.size)
        self.audio_seconds.inc(report.audio_seconds)


class RequestMetrics:
    """ASGI middleware counting every response by endpoint and status, rejections before routing included.

    Paths that are not endpoints share one label, so the label set stays bounded whatever clients try.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, endpoints: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: str | None = None
        started = time.perf_counter()

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        failed = True
        try:
            await self.app(scope, receive, send_noting_status)
            failed = False
        finally:
            # No answer sent: the app failed (500), or the client left first (499, as nginx logs it).
            status = status or ("500" if failed else "499")
            endpoint = scope["path"] if scope["path"] in self.endpoints else "unmatched"
            self.metrics.requests.labels(endpoint, status).inc()
            self.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - started)
