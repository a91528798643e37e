"""What the routes share: the engines with their inference workers, the decode pool, admission and timings.

``start`` loads the model (the server calls it in a background thread, so the port answers ``/health`` at
once), one engine and scheduler per device (``Settings.devices``: every usable GPU by default) behind a
``Router``; the service is ready only after every engine has run on generated audio and a decode worker has
loaded, and stays ready while every device's worker runs (a dead worker restarts itself at once).
``bench`` drives the same object without HTTP. The lifecycle is one ``State``, changed under a lock by
``start``, ``begin_drain`` (the SIGTERM handler) and ``stop``, since those run on different threads.
"""

from __future__ import annotations

import asyncio
import enum
import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..batching import Utterance
from ..decoding import DecodeOptions
from ..errors import ModelLoading, Overloaded, ShuttingDown, Unauthorized, Unavailable
from ..longform import SegmentationOptions, assemble
from ..pipeline import SenseVoice
from ..results import Transcription
from ..router import Router
from ..scheduler import Scheduler
from ..settings import Settings
from ..tuning import TunedSettings
from .decode_pool import DecodePool
from .device_metrics import DeviceMetrics
from .metrics import Metrics
from .uploads import MB, UploadedFile, UploadSpace

logger = logging.getLogger(__name__)

WARMUP_SECONDS = 2.0


class State(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"  # no new work; what was admitted finishes
    FAILED = "failed"  # the model could not be loaded
    STOPPED = "stopped"


@dataclass
class Timings:
    """Seconds a request spent in each part; ``inference`` is features + model + decoding."""

    decode: float = 0.0
    queue: float = 0.0
    inference: float = 0.0
    features: float = 0.0
    model: float = 0.0
    decoding: float = 0.0


class Service:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        on_load_failure: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.on_load_failure = on_load_failure
        self.engines: list[SenseVoice] = []
        self.scheduler: Router | None = None  # what requests are submitted to: one scheduler per engine
        self.device_metrics = DeviceMetrics(self.metrics.registry)
        self.pool: DecodePool | None = None
        self._lock = threading.Lock()
        self._state = State.LOADING
        self._warm = False
        self.load_error: str | None = None
        self.in_flight = 0
        self.upload_space = UploadSpace(int(settings.max_upload_temp_mb * MB))
        self.metrics.watch(
            in_progress=lambda: self.in_flight,
            queue_depth=lambda: self.scheduler.pending if self.scheduler else 0,
            upload_bytes=lambda: self.upload_space.used,
            decoding=lambda: self.pool.busy if self.pool else 0,
        )

    @property
    def engine(self) -> SenseVoice | None:
        """The first device's engine (the only one unless several devices serve)."""
        return self.engines[0] if self.engines else None

    def start(self) -> None:
        """Load and warm up (the server runs this in a background thread); a failure is kept in
        ``load_error`` and reported through ``on_load_failure``."""
        try:
            devices = self.settings.tuned_devices()
            tuned = devices[0]
            self.pool = DecodePool(tuned.decode_workers, self.settings.decode_timeout_seconds)
            self.engines = self._load_engines(devices)
            for reason in self.prepare_now(self.settings.decode_options()):
                logger.warning("server hotwords: %s", reason)
            self.scheduler = Router(
                [self._scheduler(engine, tuned) for engine, tuned in zip(self.engines, devices, strict=True)]
            )
            self.device_metrics.watch(self.scheduler)
            self.scheduler.start()
            self._warm_up(self.scheduler)
            self.pool.wait_started()
            self._become_ready()
            logger.info(
                "ready: %s on %s (%s), %d torch threads, %d decode processes",
                self.settings.model, ", ".join(self.scheduler.labels), self.engines[0].dtype,
                tuned.torch_threads, tuned.decode_workers,
            )  # fmt: skip
        except Exception as error:
            logger.exception("the model could not be loaded; stopping")
            with self._lock:
                self.load_error = str(error) or type(error).__name__
                self._state = State.FAILED
            if self.on_load_failure is not None:
                self.on_load_failure()

    def _load_engines(self, devices: list[TunedSettings]) -> list[SenseVoice]:
        """One engine per device, loaded side by side (each reads the weights and moves them over)."""

        def load(tuned: TunedSettings) -> SenseVoice:
            # Model threads and decode processes share the cores: tuned together, since model threads that
            # compete with a busy decoder for a core run many times slower. torch's threads are the
            # process's, whatever the number of devices: two CPU engines (devices "cpu,cpu") share them.
            return SenseVoice.from_pretrained(
                self.settings.model,
                device=tuned.device,
                dtype=tuned.dtype,
                cache_dir=self.settings.cache_dir,
                threads=tuned.torch_threads,
            )

        if len(devices) == 1:
            return [load(devices[0])]
        with ThreadPoolExecutor(len(devices), thread_name_prefix="engine-loader") as loaders:
            return list(loaders.map(load, devices))

    def _scheduler(self, engine: SenseVoice, tuned: TunedSettings) -> Scheduler:
        return Scheduler(
            engine,
            max_batch_frames=tuned.max_batch_frames,
            max_batch_size=self.settings.batch_size,
            max_wait=tuned.max_wait_ms / 1000,
            # Admission is bounded per request in admit(); this bound is only a backstop for the files of
            # native requests, each of which is one scheduler request.
            max_pending=self.settings.max_queue * self.settings.max_files_per_request,
        )

    def _warm_up(self, router: Router) -> None:
        """Every engine runs once on generated audio; from then on the metrics count user traffic only."""
        noise = np.random.default_rng(0).normal(0, 0.05, int(WARMUP_SECONDS * 16000)).astype(np.float32)
        for future in [scheduler.submit([Utterance(noise)]) for scheduler in router.schedulers]:
            future.result()
        for label, scheduler in zip(router.labels, router.schedulers, strict=True):
            scheduler.on_batch = self.device_metrics.recorder(label, self.metrics.record_batch)

    def _become_ready(self) -> None:
        with self._lock:
            self._warm = True
            if self._state is State.LOADING:  # a drain that began during the load stays a drain
                self._state = State.READY

    def begin_drain(self) -> None:
        """Refuse new work from now on (SIGTERM); admitted requests still finish."""
        with self._lock:
            if self._state in (State.LOADING, State.READY):
                self._state = State.DRAINING

    def stop(self) -> None:
        """Finish what was admitted, then release the worker and the decode processes."""
        self.begin_drain()
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.pool is not None:
            self.pool.shutdown()
        with self._lock:
            if self._state is not State.FAILED:
                self._state = State.STOPPED

    @property
    def state(self) -> State:
        return self._state

    @property
    def warm(self) -> bool:
        """The model has been loaded and has run (it stays warm while draining)."""
        return self._warm

    @property
    def ready(self) -> bool:
        return self._refusal() is None

    def not_ready_reason(self) -> str:
        refusal = self._refusal()
        return str(refusal) if refusal is not None else "ready"

    def _refusal(self) -> Unavailable | None:
        """Why a new request would be refused now, or None."""
        state = self._state
        if state is State.FAILED:
            return Unavailable(f"the model failed to load: {self.load_error}")
        if state is State.LOADING:
            return ModelLoading("the model is still loading")
        if state is not State.READY:
            return ShuttingDown("the server is shutting down")
        if not self.scheduler.healthy:
            devices = ", ".join(self.scheduler.unhealthy_devices()) or "a device"
            return Unavailable(f"the inference worker of {devices} died; restarting")
        if self.in_flight >= self.settings.max_queue:
            return self._busy()
        return None

    def _busy(self) -> Overloaded:
        return Overloaded(
            f"server busy: {self.in_flight} requests in progress (limit {self.settings.max_queue})"
        )

    def check_key(self, authorization: str | None) -> None:
        expected = self.settings.api_key
        if not expected:
            return
        scheme, _, token = (authorization or "").partition(" ")
        # Constant time, so the key cannot be guessed byte by byte from response times.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
            raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")

    def check_accepting(self) -> None:
        """Raise why a new request would be refused now (503: loading, draining, failed or busy)."""
        refusal = self._refusal()
        if refusal is not None:
            raise refusal

    def admit(self) -> None:
        """Take one of ``max_queue`` places for a new transcription request (give it back with ``release``),
        or refuse it at once: 503, instead of queueing without bound."""
        with self._lock:
            self.check_accepting()
            self.in_flight += 1

    @contextmanager
    def inference_place(self) -> Iterator[None]:
        """A place for a request whose upload is complete. It was accepted before any drain began, and a
        drain finishes what it accepted: refused (503) only when all ``max_queue`` places are taken."""
        with self._lock:
            if self.in_flight >= self.settings.max_queue:
                raise self._busy()
            self.in_flight += 1
        try:
            yield
        finally:
            self.release()

    def release(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def default_segmentation(self) -> SegmentationOptions:
        return SegmentationOptions(
            self.settings.vad, self.settings.max_segment_seconds, self.settings.split_channels
        )

    async def prepare(self, options: DecodeOptions) -> list[str]:
        """Compile the options' hotwords before their audio is submitted (a large list takes a while: in a
        thread, not on the event loop, nor on an inference worker, whose whole batch would wait); why phrases
        were skipped, for the response's warnings."""
        if not options.hotwords:
            return []
        return await asyncio.to_thread(self.prepare_now, options)

    def prepare_now(self, options: DecodeOptions) -> list[str]:
        """``prepare`` in this thread, on every engine: the router picks one only when the audio comes."""
        reasons: list[str] = []
        for engine in self.engines:
            reasons = engine.decoder.prepare(options)
        return reasons

    async def transcribe(
        self,
        data: bytes | UploadedFile,
        name: str,
        options: DecodeOptions,
        segmentation: SegmentationOptions,
    ) -> tuple[Transcription, Timings]:
        """Decode in the pool (which takes an ``UploadedFile`` over), run in the inference worker; cancelling
        the caller gives up the queue slot."""
        started = time.perf_counter()
        decoded = await self.pool.decode(data, self.settings.max_duration_seconds, segmentation)
        timings = Timings(decode=time.perf_counter() - started)
        self.metrics.decode_seconds.observe(timings.decode)
        future = self.scheduler.submit([Utterance(p.samples, options, p.offset) for p in decoded.pieces])
        try:
            result = await asyncio.wrap_future(future)
        finally:
            future.cancel()  # a no-op once done; otherwise the worker skips this request
        timings.queue = result.queue_seconds
        timings.features, timings.model, timings.decoding = (
            result.timings.features,
            result.timings.model,
            result.timings.decoding,
        )
        timings.inference = timings.features + timings.model + timings.decoding
        self.metrics.queue_seconds.observe(timings.queue)
        self.metrics.inference_seconds.observe(timings.inference)
        for piece, segment in zip(decoded.pieces, result.segments, strict=True):
            segment.channel = piece.channel
        return assemble(name, decoded.duration, decoded.warnings, result.segments), timings
