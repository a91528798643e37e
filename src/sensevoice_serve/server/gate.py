"""Everything decided about an API request before its body is read, so refusing it costs next to nothing.

An ASGI middleware rather than FastAPI dependencies: FastAPI reads the whole multipart body before it runs
any dependency, and a refusal that comes after a 200 MB upload protects nothing.
"""

from __future__ import annotations

import asyncio

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import RequestTimeout, SenseVoiceError, UploadTooLarge
from .errors import sensevoice_error_response
from .service import Service

API_PREFIX = "/v1/"


class RequestGate:
    """For every ``/v1/`` call: the API key. For transcription requests (``work_paths``) also: the upload
    size (declared, then counted while it streams in), admission (503 when loading, draining or full), the
    request timeout (504) and the client's disconnect; either cancels the request's work."""

    def __init__(self, app: ASGIApp, service: Service, work_paths: frozenset[str]) -> None:
        self.app = app
        self.service = service
        self.work_paths = work_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        is_work = scope["method"] == "POST" and scope["path"] in self.work_paths
        try:
            self.service.check_key(headers.get("authorization"))
            if is_work:
                self._check_declared_size(headers.get("content-length"))
                self.service.admit()
        except SenseVoiceError as error:
            await sensevoice_error_response(error)(scope, receive, send)
            return
        if not is_work:
            await self.app(scope, receive, send)
            return
        try:
            await self._run_work(scope, receive, send)
        finally:
            self.service.release()

    @property
    def _max_bytes(self) -> int:
        return int(self.service.settings.max_upload_mb * 1024 * 1024)

    def _too_large(self) -> UploadTooLarge:
        return UploadTooLarge(
            f"the upload is larger than the {self.service.settings.max_upload_mb:g} MB limit"
        )

    def _check_declared_size(self, content_length: str | None) -> None:
        if content_length is not None and content_length.isdigit() and int(content_length) > self._max_bytes:
            raise self._too_large()

    async def _run_work(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The request under its limits: the size counted as the body streams in (even without, or with a
        false, Content-Length), the timeout (504), and cancellation when the client goes away: nobody would
        read the result, and a client that retries after its own timeout would otherwise double the load."""
        max_bytes, received, responded = self._max_bytes, 0, False
        body_read = asyncio.Event()

        async def app_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > max_bytes:
                # FastAPI passes an HTTPException raised while it reads the form on to the handlers; any
                # other exception would become a generic 400.
                raise HTTPException(413, str(self._too_large()))
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_read.set()
            return message

        async def app_send(message: Message) -> None:
            nonlocal responded
            responded = responded or message["type"] == "http.response.start"
            await send(message)

        work = asyncio.ensure_future(self.app(scope, app_receive, app_send))

        async def cancel_on_disconnect() -> None:
            await body_read.wait()
            # Once the body is read, the next message from the server is the client's disconnect.
            if (await receive())["type"] == "http.disconnect" and not responded:
                work.cancel()

        watcher = asyncio.ensure_future(cancel_on_disconnect())
        timeout = self.service.settings.request_timeout_seconds
        try:
            finished, _ = await asyncio.wait({work}, timeout=timeout)
        finally:
            watcher.cancel()
            if not work.done():  # the timeout, or this request's own task is being cancelled
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
        if not finished:
            if not responded:
                error = RequestTimeout(
                    f"the request took longer than the {timeout:g} s timeout and was cancelled"
                )
                await sensevoice_error_response(error)(scope, receive, send)
        elif not work.cancelled():  # cancelled: the client went away and there is nobody to answer
            work.result()  # an error of the app goes on to the outer middleware
