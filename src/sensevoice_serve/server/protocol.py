"""uvicorn's HTTP/1.1 protocol with a header read timeout, which uvicorn lacks.

A connection that sends part of a request line or headers and then nothing (or a byte now and then) would
otherwise be kept forever: enough of them exhaust the server's connections before any request reaches the
app, where the upload limits are enforced.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from uvicorn.protocols.http.h11_impl import H11Protocol

from ..settings import Settings


class HeaderTimeoutProtocol(H11Protocol):
    """Closes a connection whose next request's headers are not complete within ``header_timeout`` seconds,
    timed from the connection's start and from the end of each response on it."""

    def __init__(self, *args: object, header_timeout: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self.transport.close)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's headers were complete: the app has it now
            self._disarm()

    def handle_websocket_upgrade(self, event: object) -> None:
        # The connection now belongs to a WebSocket protocol, with its own idle timeout: no more headers come.
        self._disarm()
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        # Armed first: the response's end may hand a pipelined request to the app at once (handle_events).
        self._arm()
        super().on_response_complete()


def http_protocol(settings: Settings) -> Callable[..., asyncio.Protocol]:
    """What ``uvicorn.Config(http=...)`` takes to serve with this protocol."""
    return functools.partial(HeaderTimeoutProtocol, header_timeout=settings.header_timeout_seconds)
