"""Runs the app under uvicorn, with draining on SIGTERM/SIGINT and an exit code for a model that fails."""

from __future__ import annotations

import logging
import socket
from types import FrameType

import uvicorn

from ..settings import Settings
from . import EXIT_LOAD_FAILED, EXIT_OK
from .app import create_app
from .protocol import http_protocol
from .service import Service


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT: refuse new work (503) and say so on /ready at once; uvicorn then stops accepting
    connections and waits for the in-flight requests, and the lifespan drains the inference worker."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.service.begin_drain()
        super().handle_exit(sig, frame)


def serve(settings: Settings, listener: socket.socket | None = None) -> int:
    """Serve until stopped, on ``listener`` when given (a supervisor's socket), else on a port bound here."""
    # A server's operator wants to see it become ready, whatever the CLI's default log level.
    logging.getLogger("sensevoice_serve").setLevel(logging.INFO)
    server: DrainingServer | None = None

    def stop_serving() -> None:
        server.should_exit = True

    app = create_app(settings, on_load_failure=stop_serving)
    service: Service = app.state.service
    # No graceful-shutdown cap: the request timeout already bounds how long an in-flight request can take.
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=http_protocol(settings),
        timeout_graceful_shutdown=None,
    )
    server = DrainingServer(config, service)
    server.run(sockets=None if listener is None else [listener])
    return EXIT_LOAD_FAILED if service.load_error is not None else EXIT_OK
