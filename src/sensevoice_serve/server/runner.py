"""Runs the app under uvicorn, with draining on SIGTERM/SIGINT and an exit code for a model that fails."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from types import FrameType

import uvicorn

from ..settings import Settings
from . import EXIT_LOAD_FAILED, EXIT_OK
from .app import create_app
from .protocol import http_protocol
from .routes import realtime
from .service import Service


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT: refuse new work (503) and say so on /ready at once; stop accepting connections and
    let the realtime sessions finish (``drain_sessions``); uvicorn then closes their sockets and waits for
    the in-flight requests, and the lifespan drains the inference worker."""

    def __init__(
        self, config: uvicorn.Config, service: Service, drain_sessions: Callable[[], Awaitable[None]]
    ) -> None:
        super().__init__(config)
        self.service = service
        self.drain_sessions = drain_sessions

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.service.begin_drain()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn's shutdown closes every WebSocket at once: the sessions finish before it starts. Nothing is
        # accepted meanwhile (uvicorn closing the listeners again does no harm).
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        draining = asyncio.ensure_future(self.drain_sessions())
        while not (draining.done() or self.force_exit):  # a second Ctrl-C cuts it short, as uvicorn's wait
            await asyncio.wait([draining], timeout=0.1)
        draining.cancel()
        await super().shutdown(sockets)


def serve(settings: Settings, listener: socket.socket | None = None) -> int:
    """Serve until stopped, on ``listener`` when given (a supervisor's socket), else on a port bound here."""
    # A server's operator wants to see it become ready, whatever the CLI's default log level.
    logging.getLogger("sensevoice_serve").setLevel(logging.INFO)
    server: DrainingServer | None = None

    def stop_serving() -> None:
        server.should_exit = True

    app = create_app(settings, on_load_failure=stop_serving)
    service: Service = app.state.service
    # No graceful-shutdown cap: the request timeout already bounds how long an in-flight request can take,
    # and bounds the realtime sessions' drain likewise (their finals are requests, their turns uploads).
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=http_protocol(settings),
        timeout_graceful_shutdown=None,
    )
    timeout = settings.request_timeout_seconds
    server = DrainingServer(config, service, lambda: realtime.drain(app, timeout))
    server.run(sockets=None if listener is None else [listener])
    return EXIT_LOAD_FAILED if service.load_error is not None else EXIT_OK
