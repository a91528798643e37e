"""The FastAPI app: routes stay thin; ``Service`` does the work, ``RequestGate`` the refusals.

The port is bound at once: the model loads in a background thread started by the lifespan, and ``/ready``
says 200 only once it has run on generated audio. On shutdown the lifespan drains the inference worker.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, BinaryIO, Literal

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from ..decoding import DecodeOptions
from ..errors import InvalidOption, SenseVoiceError
from ..longform import SegmentationOptions
from ..settings import Settings
from . import openai_format
from .errors import error_body, error_code, error_response, json_response, sensevoice_error_response
from .gate import RequestGate
from .metrics import Metrics, RequestMetrics
from .service import Service

MODEL_NAME = "sensevoice-small"
OPENAI_PATH = "/v1/audio/transcriptions"
NATIVE_PATH = "/v1/transcribe"


def create_app(settings: Settings, on_load_failure: Callable[[], None] | None = None) -> FastAPI:
    metrics = Metrics()
    service = Service(settings, metrics, on_load_failure)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=service.start, name="model-loader", daemon=True).start()
        yield
        await asyncio.to_thread(service.stop)

    # No /docs or /redoc: those pages load their scripts from a CDN, and this server must work offline.
    # The API description stays at /openapi.json.
    app = FastAPI(title="sensevoice-serve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service

    @app.exception_handler(SenseVoiceError)
    async def sensevoice_error(request: Request, error: SenseVoiceError) -> JSONResponse:
        return sensevoice_error_response(error)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc'][1:])}: {problem['msg']}"
            for problem in error.errors()
        )
        return error_response(400, problems, "invalid_request")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # Starlette re-raises the error after this response, so uvicorn logs its traceback.
        return error_response(500, f"internal error ({type(error).__name__}); the server keeps running")

    @app.get("/health")
    async def health() -> dict:
        """The process is alive (200 while the model is still loading, too)."""
        return {"status": "ok", "warm": service.warm}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """200 once warm; 503 while loading, while every admission place is taken, and while draining."""
        if service.ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready", "reason": service.not_ready_reason()}, status_code=503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict:
        return {
            "object": "list",
            "data": [{"id": MODEL_NAME, "object": "model", "owned_by": "sensevoice-serve"}],
        }

    @app.post(OPENAI_PATH)
    async def openai_transcription(
        file: Annotated[UploadFile, File()],
        model: Annotated[str, Form(description="any name is accepted; answered by this server's model")] = "",
        language: Annotated[str | None, Form()] = None,
        response_format: Annotated[openai_format.ResponseFormat, Form()] = "json",
        timestamp_granularities: Annotated[
            list[openai_format.Granularity], Form(alias="timestamp_granularities[]")
        ] = [],  # noqa: B006 - FastAPI copies defaults per request
    ) -> Response:
        """OpenAI's audio transcription API (``prompt`` and ``temperature`` are accepted and ignored)."""
        options = DecodeOptions(
            (language or settings.language).lower(), settings.use_itn, settings.ban_emo_unk
        )
        result, _ = await service.transcribe(
            file.file, file.filename or "upload", options, service.default_segmentation()
        )
        return openai_format.render(result, response_format, timestamp_granularities)

    @app.post(NATIVE_PATH)
    async def transcribe_files(
        files: Annotated[list[UploadFile], File()],
        language: Annotated[str | None, Form()] = None,
        use_itn: Annotated[bool | None, Form()] = None,
        ban_emo_unk: Annotated[bool | None, Form()] = None,
        vad: Annotated[Literal["auto", "on", "off"] | None, Form()] = None,
        max_segment_seconds: Annotated[float | None, Form()] = None,
        split_channels: Annotated[bool | None, Form()] = None,
    ) -> JSONResponse:
        """The full result per file, with timings; a file that fails gets its own error entry."""
        service.check_file_count(len(files))
        options = DecodeOptions(
            language or settings.language,
            settings.use_itn if use_itn is None else use_itn,
            settings.ban_emo_unk if ban_emo_unk is None else ban_emo_unk,
        )
        if max_segment_seconds is not None and max_segment_seconds > settings.max_segment_seconds:
            # Attention grows with the square of a segment's length: the operator's cap is a memory bound.
            raise InvalidOption(
                f"max_segment_seconds may be at most this server's {settings.max_segment_seconds:g}"
            )
        segmentation = SegmentationOptions(
            vad or settings.vad,
            settings.max_segment_seconds if max_segment_seconds is None else max_segment_seconds,
            settings.split_channels if split_channels is None else split_channels,
        )
        uploads = [(upload.filename or f"file{index}", upload.file) for index, upload in enumerate(files)]
        entries = await asyncio.gather(
            *(_file_entry(service, name, data, options, segmentation) for name, data in uploads)
        )
        return _native_response(entries)

    page_html = (resources.files(__package__) / "static" / "index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return page_html

    app.add_middleware(RequestGate, service=service, work_paths=frozenset({OPENAI_PATH, NATIVE_PATH}))
    # Outermost, so the gate's refusals are counted too.
    app.add_middleware(
        RequestMetrics, metrics=metrics, endpoints=frozenset(route.path for route in app.routes)
    )
    return app


async def _file_entry(
    service: Service,
    name: str,
    data: bytes | BinaryIO,
    options: DecodeOptions,
    segmentation: SegmentationOptions,
) -> dict:
    try:
        result, timings = await service.transcribe(data, name, options, segmentation)
    except SenseVoiceError as error:
        return {
            "source": name,
            "status": error.http_status,
            **error_body(error.http_status, str(error), error_code(error)),
        }
    return {**result.to_dict(), "status": 200, "timings": vars(timings)}


def _native_response(entries: list[dict]) -> JSONResponse:
    """200 when any file succeeded; when none did, the first failure's status and error, so a client
    sending one bad file gets a 4xx like from the OpenAI endpoint."""
    body: dict = {"model": MODEL_NAME, "results": entries}
    failures = [entry for entry in entries if entry["status"] != 200]
    if failures and len(failures) == len(entries):
        body["error"] = failures[0]["error"]
        return json_response(body, failures[0]["status"])
    return json_response(body, 200)
