"""The header read timeout, on a uvicorn server in this process with a trivial app."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest
import uvicorn

from sensevoice_serve.server.protocol import http_protocol
from sensevoice_serve.settings import load_settings

HEADER_TIMEOUT = 0.5


async def slow_app(scope, receive, send) -> None:
    """Answers after the number of seconds in its query string: longer than the header timeout is fine."""
    await asyncio.sleep(float(scope["query_string"] or 0))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    settings = load_settings(header_timeout_seconds=HEADER_TIMEOUT)
    config = uvicorn.Config(
        slow_app, host="127.0.0.1", port=0, http=http_protocol(settings), lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    started = threading.Event()
    while not server.started and thread.is_alive():
        started.wait(0.01)
    yield server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    thread.join()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def read_until_closed(client: socket.socket) -> bytes:
    """Everything the server sends until it closes (a socket timeout, failing the test, if it never does)."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := client.recv(65536):
            received += chunk
    return received


def test_a_connection_that_never_completes_its_headers_is_closed(port: int) -> None:
    with connect(port) as client:
        client.sendall(b"POST /v1/transcribe HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        assert read_until_closed(client) == b""


def test_the_next_request_on_a_kept_alive_connection_is_timed_too(port: int) -> None:
    with connect(port) as client:
        client.sendall(b"GET /?1 HTTP/1.1\r\nHost: x\r\n\r\n")  # the app takes longer than the timeout
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # a second request, never finished
        answered = read_until_closed(client)
    assert answered.startswith(b"HTTP/1.1 200") and answered.endswith(b"ok")


def test_sensevoice_serve_uses_the_header_timeout(start_server) -> None:
    live = start_server(header_timeout_seconds=1)
    with connect(int(live.url.rsplit(":", 1)[1])) as client:
        client.sendall(b"POST /v1/transcribe HTTP/1.1\r\nHost: x\r\n")
        assert read_until_closed(client) == b""
