"""The FastAPI app: one engine and one inference worker per process, uploads decoded in a process pool.

The port is bound at once; the model loads and runs once on generated audio in the background, and
``/ready`` says 200 only after that. Routes stay thin: they read the upload, hand it to ``Service``, and
render the result with the same writers the CLI uses.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Annotated

import numpy as np
import torch
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..batching import Utterance
from ..decoding import DecodeOptions
from ..errors import InvalidOption, Overloaded, RequestTimeout, SenseVoiceError, Unauthorized, UploadTooLarge
from ..longform import SegmentationOptions, assemble
from ..pipeline import SenseVoice
from ..results import Transcription
from ..scheduler import Scheduler
from ..settings import Settings
from ..writers import WRITERS
from .decode_pool import DecodePool
from .metrics import Metrics

logger = logging.getLogger(__name__)

MODEL_NAME = "sensevoice-small"
WARMUP_SECONDS = 2.0
RETRY_AFTER_SECONDS = 1


@dataclass
class Timings:
    decode: float = 0.0
    queue: float = 0.0
    inference: float = 0.0


@dataclass
class Service:
    """What the routes share: settings, the engine and scheduler once loaded, the decode pool, metrics."""

    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    engine: SenseVoice | None = None
    scheduler: Scheduler | None = None
    pool: DecodePool | None = None
    warm: bool = False
    draining: bool = False
    load_error: str | None = None

    def start(self) -> None:
        """Load, warm up; runs in a background thread so the port answers /health meanwhile."""
        try:
            tuned = self.settings.tuned()
            # Decoding and torch share the cores: tuned so that they do not oversubscribe them.
            torch.set_num_threads(tuned.torch_threads)
            self.pool = DecodePool(tuned.decode_workers)
            self.engine = SenseVoice.from_pretrained(
                self.settings.model, device=tuned.device, dtype=tuned.dtype
            )
            self.scheduler = Scheduler(
                self.engine,
                max_batch_frames=tuned.max_batch_frames,
                max_batch_size=self.settings.batch_size,
                max_wait=tuned.max_wait_ms / 1000,
                max_queue=self.settings.max_queue,
                on_batch=self.metrics.record_batch,
            )
            self.scheduler.start()
            noise = np.random.default_rng(0).normal(0, 0.05, int(WARMUP_SECONDS * 16000)).astype(np.float32)
            self.scheduler.submit([Utterance(noise)]).result()
            self._warm_decoders()
            self.warm = True
            logger.info("model ready on %s (%s)", self.engine.device, self.engine.dtype)
        except Exception as error:  # a server that cannot load must say why on /ready, not die silently
            logger.exception("startup failed")
            self.load_error = str(error)

    def _warm_decoders(self) -> None:
        """Spawned workers import torch and the VAD on first use: pay that before the first request."""
        import io

        import soundfile

        buffer = io.BytesIO()
        soundfile.write(buffer, np.zeros(16000, dtype=np.float32), 16000, format="WAV")
        asyncio.run(self.pool.decode(buffer.getvalue(), 10.0, SegmentationOptions(vad="on")))

    def stop(self) -> None:
        self.draining = True
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.pool is not None:
            self.pool.shutdown()

    @property
    def ready(self) -> bool:
        return self.warm and not self.draining and not (self.scheduler and self.scheduler.saturated)

    def check_key(self, request: Request) -> None:
        expected = self.settings.api_key
        if not expected:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), expected.encode()):
            raise Unauthorized("missing or wrong API key (send 'Authorization: Bearer <key>')")

    async def read_upload(self, upload: UploadFile) -> bytes:
        limit = int(self.settings.max_upload_mb * 1024 * 1024)
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise UploadTooLarge(f"upload is larger than the {self.settings.max_upload_mb:g} MB limit")
        return data

    async def transcribe(
        self, data: bytes, name: str, options: DecodeOptions, segmentation: SegmentationOptions
    ) -> tuple[Transcription, Timings]:
        if self.draining:
            raise Overloaded("server is shutting down")
        if not self.warm:
            raise Overloaded(
                "model is still loading" if self.load_error is None else f"model failed: {self.load_error}"
            )
        timings = Timings()
        started = time.perf_counter()
        decoded = await self.pool.decode(data, self.settings.max_duration_seconds, segmentation)
        timings.decode = time.perf_counter() - started
        self.metrics.decode_seconds.observe(timings.decode)
        utterances = [Utterance(piece.samples, options, piece.offset) for piece in decoded.pieces]
        future = self.scheduler.submit(utterances)
        try:
            result = await asyncio.wrap_future(future)
        finally:
            future.cancel()  # a timed-out or disconnected request gives its queue slot back
        timings.queue, timings.inference = result.queue_seconds, sum(vars(result.timings).values())
        self.metrics.queue_seconds.observe(timings.queue)
        self.metrics.inference_seconds.observe(timings.inference)
        for piece, segment in zip(decoded.pieces, result.segments, strict=True):
            segment.channel = piece.channel
        return assemble(name, decoded.duration, decoded.warnings, result.segments), timings

    async def with_timeout(self, work):
        try:
            return await asyncio.wait_for(work, self.settings.request_timeout_seconds)
        except TimeoutError as error:
            raise RequestTimeout(
                f"request took longer than the {self.settings.request_timeout_seconds:g} s timeout"
            ) from error


def error_response(error: SenseVoiceError) -> JSONResponse:
    """OpenAI's error shape, so its clients surface the message."""
    status = error.http_status
    kind = "invalid_request_error" if 400 <= status < 500 else "server_error"
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if isinstance(error, Overloaded) else None
    body = {"error": {"message": str(error), "type": kind, "code": type(error).__name__}}
    return JSONResponse(body, status_code=status, headers=headers)


def _openai_language(language: str | None) -> str:
    if not language:
        return "auto"
    code = language.lower()
    if code not in ("auto", "zh", "en", "yue", "ja", "ko"):
        raise InvalidOption(f"language {language!r} is not supported: use zh, en, yue, ja, ko or omit it")
    return code


def _verbose_json(result: Transcription, words: bool) -> dict:
    body = {
        "task": "transcribe",
        "language": result.language or "",
        "duration": result.duration,
        "text": result.text,
        "segments": [
            {
                "id": index,
                "seek": 0,
                "start": segment.start,
                "end": segment.end,
                "text": segment.text,
                "tokens": [token.id for token in segment.tokens],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 1.0,
                "no_speech_prob": 0.0,
                "emotion": segment.emotion,
                "event": segment.event,
                "channel": segment.channel,
            }
            for index, segment in enumerate(result.segments)
        ],
    }
    if words:
        body["words"] = [
            {"word": token.text.replace("\u2581", " ").strip(), "start": token.start, "end": token.end}
            for token in result.tokens
        ]
    return body


def create_app(settings: Settings) -> FastAPI:
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=service.start, name="model-loader", daemon=True).start()
        yield
        await asyncio.to_thread(service.stop)

    app = FastAPI(title="sensevoice-serve", lifespan=lifespan)
    app.state.service = service

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        service.metrics.requests.labels(request.url.path, str(response.status_code)).inc()
        return response

    @app.exception_handler(SenseVoiceError)
    async def sensevoice_error(request: Request, error: SenseVoiceError) -> JSONResponse:
        return error_response(error)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "warm": service.warm}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        status = 200 if service.ready else 503
        detail = (
            "ready"
            if status == 200
            else ("draining" if service.draining else service.load_error or "not ready")
        )
        return JSONResponse({"status": detail}, status_code=status)

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        service.check_key(request)
        return {
            "object": "list",
            "data": [{"id": MODEL_NAME, "object": "model", "owned_by": "sensevoice-serve"}],
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        if service.scheduler is not None:
            service.metrics.queue_depth.set(service.scheduler.pending)
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/audio/transcriptions")
    async def openai_transcriptions(
        request: Request,
        file: Annotated[UploadFile, File()],
        model: Annotated[str, Form()] = MODEL_NAME,
        language: Annotated[str | None, Form()] = None,
        response_format: Annotated[str, Form()] = "json",
        granularities: Annotated[list[str] | None, Form(alias="timestamp_granularities[]")] = None,
    ) -> Response:
        service.check_key(request)
        if response_format not in ("json", "text", "srt", "vtt", "verbose_json"):
            raise InvalidOption(
                f"response_format {response_format!r}: use json, text, srt, vtt or verbose_json"
            )
        options = DecodeOptions(language=_openai_language(language), use_itn=True)
        data = await service.read_upload(file)
        result, _ = await service.with_timeout(
            service.transcribe(data, file.filename or "upload", options, SegmentationOptions())
        )
        if response_format == "json":
            return JSONResponse({"text": result.text})
        if response_format == "verbose_json":
            return JSONResponse(_verbose_json(result, "word" in (granularities or [])))
        writer = WRITERS["txt" if response_format == "text" else response_format]
        return PlainTextResponse(writer(result))

    @app.post("/v1/transcribe")
    async def native_transcribe(
        request: Request,
        files: Annotated[list[UploadFile], File()],
        language: Annotated[str, Form()] = "auto",
        use_itn: Annotated[bool, Form()] = True,
        ban_emo_unk: Annotated[bool, Form()] = False,
        vad: Annotated[str, Form()] = "auto",
        split_channels: Annotated[bool, Form()] = False,
    ) -> dict:
        """The full rich result per file; a bad file gets its own error while the others succeed."""
        service.check_key(request)
        options = DecodeOptions(language=language, use_itn=use_itn, ban_emo_unk=ban_emo_unk)
        segmentation = SegmentationOptions(vad=vad, split_channels=split_channels)
        uploads = [
            (upload.filename or f"file{i}", await service.read_upload(upload))
            for i, upload in enumerate(files)
        ]

        async def one(name: str, data: bytes) -> dict:
            try:
                result, timings = await service.transcribe(data, name, options, segmentation)
            except Overloaded:
                raise
            except SenseVoiceError as error:
                return {"source": name, "error": {"message": str(error), "code": type(error).__name__}}
            return {**result.to_dict(), "timings": vars(timings)}

        results = await service.with_timeout(asyncio.gather(*(one(name, data) for name, data in uploads)))
        return {"model": MODEL_NAME, "results": results}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return (resources.files("sensevoice_serve.server") / "static" / "index.html").read_text(
            encoding="utf-8"
        )

    return app
