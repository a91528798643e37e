"""The FastAPI app: ``create_app`` wires the ``Service``, the routers, the error handlers and the middleware.

The port is bound at once: the model loads in a background thread started by the lifespan, and ``/ready``
says 200 only once it has run on generated audio. On shutdown the lifespan drains the inference worker.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import SenseVoiceError
from ..settings import Settings
from .errors import error_response, sensevoice_error_response
from .gate import RequestGate
from .metrics import Metrics, RequestMetrics
from .routes import health, native, openai, page, realtime
from .service import Service

ROUTES = (openai, native, health, page, realtime)


def create_app(settings: Settings, on_load_failure: Callable[[], None] | None = None) -> FastAPI:
    metrics = Metrics()
    service = Service(settings, metrics, on_load_failure)
    # No /docs or /redoc: those pages load their scripts from a CDN, and this server must work offline.
    # The API description stays at /openapi.json.
    app = FastAPI(title="sensevoice-serve", version="1", lifespan=_lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.state.metrics = metrics
    app.add_exception_handler(SenseVoiceError, _sensevoice_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(Exception, _unexpected)
    for routes in ROUTES:
        app.include_router(routes.router)
    # With an API key, what the server runs and how it is used are the key holders' business too, unless the
    # operator opens them (a Prometheus that cannot send the key, a public API description).
    private_paths = frozenset() if settings.public_metrics else frozenset({"/metrics", app.openapi_url})
    app.add_middleware(
        RequestGate,
        service=service,
        work_paths=frozenset({openai.OPENAI_PATH, native.NATIVE_PATH}),
        private_paths=private_paths,
    )
    # Outermost, so the gate's refusals are counted too.
    endpoints = frozenset(
        {app.openapi_url, *(route.path for routes in ROUTES for route in routes.router.routes)}
    )
    app.add_middleware(RequestMetrics, metrics=metrics, endpoints=endpoints)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    service: Service = app.state.service
    threading.Thread(target=service.start, name="model-loader", daemon=True).start()
    yield
    await asyncio.to_thread(service.stop)


async def _sensevoice_error(request: Request, error: SenseVoiceError) -> JSONResponse:
    return sensevoice_error_response(error)


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    return error_response(error.status_code, str(error.detail))


async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    problems = "; ".join(
        f"{'.'.join(str(part) for part in problem['loc'][1:])}: {problem['msg']}"
        for problem in error.errors()
    )
    return error_response(400, problems, "invalid_request")


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    # Starlette re-raises the error after this response, so uvicorn logs its traceback.
    return error_response(500, f"internal error ({type(error).__name__}); the server keeps running")
