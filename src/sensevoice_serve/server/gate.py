"""Everything decided about an API request around its body, so that refusing it costs next to nothing and a
slow upload holds nothing but its own connection.

For every ``/v1/`` call, and ``private_paths``: the API key. For a transcription request (``work_paths``),
before its body is read: the declared size (413), whether the server takes work now (503 when loading,
draining or busy), room for that size in the uploads' temp space (503) and an upload place (503 beyond
``max_uploads``). While the body streams in: its size, counted (413), and its pace: an upload that stalls for
``upload_idle_timeout_seconds``, or averages under ``upload_min_rate_kb`` beyond that grace, gets 408.
Uploads hold no inference place: the route takes one once its upload is complete. From then on the request
timeout runs (504), and a client that goes away cancels the request's work. An answer sent before the whole
body came closes the connection.

An ASGI middleware, so that these hold whatever a route does with the body, and cost nothing when refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import Overloaded, RequestTimeout, SenseVoiceError, UploadTimeout, UploadTooLarge
from ..settings import Settings
from .errors import sensevoice_error_response
from .service import Service

API_PREFIX = "/v1/"
KB = 1024


class RequestGate:
    """``private_paths``: outside ``/v1/`` but behind the API key too (``/metrics``, ``/openapi.json``)."""

    def __init__(
        self, app: ASGIApp, service: Service, work_paths: frozenset[str], private_paths: frozenset[str]
    ) -> None:
        self.app = app
        self.service = service
        self.work_paths = work_paths
        self.private_paths = private_paths
        self.uploading = 0  # bodies being received; only touched on the event loop
        service.metrics.uploads_in_progress.set_function(lambda: self.uploading)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (
            scope["path"].startswith(API_PREFIX) or scope["path"] in self.private_paths
        ):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        is_work = scope["method"] == "POST" and scope["path"] in self.work_paths
        try:
            self.service.check_key(headers.get("authorization"))
            if is_work:
                declared = self._declared_size(headers.get("content-length"))
                self.service.check_accepting()
                self.service.upload_space.check_room(declared)
                self._check_upload_places()
        except SenseVoiceError as error:
            await sensevoice_error_response(error, close=is_work)(scope, receive, send)
            return
        if not is_work:
            await self.app(scope, receive, send)
            return
        await _WorkRequest(self, scope, receive, send).run()

    @property
    def settings(self) -> Settings:
        return self.service.settings

    def _declared_size(self, content_length: str | None) -> int:
        """The body's size by its Content-Length (0 when not given); 413 when over the limit."""
        declared = int(content_length) if content_length is not None and content_length.isdigit() else 0
        if declared > self.settings.max_upload_mb * 1024 * 1024:
            raise _too_large(self.settings)
        return declared

    def _check_upload_places(self) -> None:
        if self.uploading >= self.settings.max_uploads:
            raise Overloaded(
                f"server busy: {self.uploading} uploads in progress (limit {self.settings.max_uploads})"
            )


class _WorkRequest:
    """One transcription request under the gate's limits: its upload's pace and size, then its timeout."""

    def __init__(self, gate: RequestGate, scope: Scope, receive: Receive, send: Send) -> None:
        self.gate, self.scope, self.receive, self.send = gate, scope, receive, send
        settings = gate.settings
        self.max_bytes = int(settings.max_upload_mb * 1024 * 1024)
        self.idle_timeout = settings.upload_idle_timeout_seconds
        self.min_rate = settings.upload_min_rate_kb * KB
        self.started = time.monotonic()
        self.received = 0
        self.body_read = asyncio.Event()  # the whole body: the request timeout and disconnect watch begin
        self.responded = False
        self.uploading = True
        gate.uploading += 1

    def _stop_uploading(self) -> None:
        """The upload place goes back: the body is complete, refused, or the request is over."""
        if self.uploading:
            self.uploading = False
            self.gate.uploading -= 1

    def _receive_within(self) -> float:
        """Seconds the next piece of the body may take: the idle timeout, or less where the upload's average
        would fall under the minimum rate."""
        if not self.min_rate:
            return self.idle_timeout
        deadline = self.started + self.idle_timeout + self.received / self.min_rate
        return min(self.idle_timeout, deadline - time.monotonic())

    async def app_receive(self) -> Message:
        if self.body_read.is_set():
            return await self.receive()
        within = self._receive_within()
        try:
            message = await asyncio.wait_for(self.receive(), max(within, 0))
        except asyncio.TimeoutError:
            self._stop_uploading()
            raise self._too_slow(within) from None
        self.received += len(message.get("body", b""))
        if self.received > self.max_bytes:
            self._stop_uploading()
            raise _too_large(self.gate.settings)
        if message["type"] != "http.request" or not message.get("more_body", False):
            self._stop_uploading()
            self.body_read.set()
        return message

    def _too_slow(self, within: float) -> UploadTimeout:
        if within >= self.idle_timeout:
            return UploadTimeout(f"the upload sent nothing for {self.idle_timeout:g} s")
        rate = self.gate.settings.upload_min_rate_kb
        return UploadTimeout(f"the upload was slower than this server's minimum of {rate:g} KB/s")

    async def app_send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.responded = True
            if not self.body_read.is_set():
                # Answered before the whole body came (a refusal): the rest of it is not worth reading.
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        await self.send(message)

    async def run(self) -> None:
        """The request under its limits, and cancelled when the client goes away: nobody would read the
        result, and a client that retries after its own timeout would otherwise double the load."""
        work = asyncio.ensure_future(self.gate.app(self.scope, self.app_receive, self.app_send))
        watcher = asyncio.ensure_future(self._cancel_on_disconnect(work))
        deadline = asyncio.ensure_future(self._deadline())
        try:
            await asyncio.wait({work, deadline}, return_when=asyncio.FIRST_COMPLETED)
            timed_out = not work.done()
        finally:
            watcher.cancel()
            deadline.cancel()
            self._stop_uploading()
            if not work.done():  # the timeout, or this request's own task is being cancelled
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
        if timed_out:
            if not self.responded:
                timeout = self.gate.settings.request_timeout_seconds
                error = RequestTimeout(
                    f"the request took longer than the {timeout:g} s timeout and was cancelled"
                )
                await sensevoice_error_response(error)(self.scope, self.receive, self.send)
        elif not work.cancelled():  # cancelled: the client went away and there is nobody to answer
            with contextlib.suppress(ClientDisconnect):  # gone in mid-upload: nobody to answer either
                work.result()  # an error of the app goes on to the outer middleware

    async def _deadline(self) -> None:
        """The request timeout, counted from the end of the upload (which is bounded on its own)."""
        await self.body_read.wait()
        await asyncio.sleep(self.gate.settings.request_timeout_seconds)

    async def _cancel_on_disconnect(self, work: asyncio.Future) -> None:
        await self.body_read.wait()
        # Once the body is read, the next message from the server is the client's disconnect.
        if (await self.receive())["type"] == "http.disconnect" and not self.responded:
            work.cancel()


def _too_large(settings: Settings) -> UploadTooLarge:
    return UploadTooLarge(f"the upload is larger than the {settings.max_upload_mb:g} MB limit")
