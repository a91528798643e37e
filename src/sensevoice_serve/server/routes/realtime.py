"""``/v1/realtime?intent=transcription``: OpenAI's Realtime API (transcription sessions) over a WebSocket.

The request gate only sees HTTP, so a session checks here what it would: the API key (an ``Authorization``
header, or the ``openai-insecure-api-key.<key>`` subprotocol that browsers use), whether the server takes
work, and the session limit. A refusal is an ``error`` event and a close (1008 for the key or a wrong
intent, 1013 "try again later" otherwise), which browsers can read, unlike a refused handshake.

On shutdown, ``drain`` lets every open session finish what its client already said before the server closes
its socket with 1012 "service restart" (what uvicorn would send, and what tells a client to reconnect, to the
next server, rather than that the service is gone for good, as 1001 would).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.applications import Starlette

from ...errors import SenseVoiceError, Unauthorized
from ...realtime.protocol import RealtimeError, error_event
from ...realtime.session import Limits, RealtimeSession
from ...realtime.transcriber import SchedulerTranscriber
from ...realtime.turns import SpeechWorker
from ..errors import error_code
from ..metrics import Metrics
from ..service import Service

REALTIME_PATH = "/v1/realtime"
SUBPROTOCOL = "realtime"
KEY_SUBPROTOCOL = "openai-insecure-api-key."
POLICY_VIOLATION, NORMAL_CLOSURE, SERVICE_RESTART, TRY_AGAIN_LATER = 1008, 1000, 1012, 1013

logger = logging.getLogger(__name__)
router = APIRouter()


class Refusal(Exception):
    def __init__(self, error: RealtimeError, close_code: int) -> None:
        super().__init__(error.message)
        self.error, self.close_code = error, close_code


class RealtimeHub:
    """An app's realtime sessions, each with its way to the client, and the speech worker they share."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.sessions: dict[RealtimeSession, _Sender] = {}
        self.speech = SpeechWorker()
        service.metrics.realtime_sessions.set_function(lambda: self.open)

    @property
    def open(self) -> int:
        return len(self.sessions)

    def admit(self, websocket: WebSocket) -> None:
        """Raise a ``Refusal`` unless this connection may open a session now."""
        intent = websocket.query_params.get("intent", "transcription")
        if intent != "transcription":
            error = RealtimeError(
                "unsupported_intent",
                f"this server only transcribes: use intent=transcription, not {intent!r}",
                "intent",
            )
            raise Refusal(error, POLICY_VIOLATION)
        try:
            self.service.check_key(_authorization(websocket))
            self.service.check_accepting()
        except Unauthorized as error:
            raise Refusal(RealtimeError("invalid_api_key", str(error)), POLICY_VIOLATION) from error
        except SenseVoiceError as error:
            raise Refusal(
                RealtimeError(error_code(error), str(error), kind="server_error"), TRY_AGAIN_LATER
            ) from error
        limit = self.service.settings.realtime_max_sessions
        if self.open >= limit:
            message = f"server busy: {self.open} realtime sessions open (limit {limit}); try again later"
            raise Refusal(
                RealtimeError("session_limit_reached", message, kind="server_error"), TRY_AGAIN_LATER
            )

    def session(self, sender: _Sender) -> RealtimeSession:
        """A new session, counted as open until ``closed``."""
        service, settings = self.service, self.service.settings
        limits = Limits(
            settings.realtime_partial_interval_ms / 1000,
            settings.realtime_max_utterance_seconds,
            settings.realtime_max_buffer_seconds,
        )
        defaults = settings.decode_options()
        transcriber = SchedulerTranscriber(service.scheduler, service.default_segmentation(), service.prepare)
        session = RealtimeSession(
            sender.send, transcriber, self.speech, defaults, limits, _Observer(service.metrics)
        )
        self.sessions[session] = sender
        return session

    async def closed(self, session: RealtimeSession) -> None:
        self.sessions.pop(session, None)
        await session.close()

    async def drain(self, timeout: float) -> None:
        """Every open session finishes (its open turn and its finals transcribed and sent), then its socket
        is closed; after ``timeout`` seconds, what is left is cancelled and uvicorn closes its socket."""
        if not self.sessions:
            return
        logger.info("draining %d realtime sessions", len(self.sessions))
        finishing = [asyncio.create_task(_finish(*open_session)) for open_session in self.sessions.items()]
        try:
            _, unfinished = await asyncio.wait(finishing, timeout=timeout)
            if unfinished:
                logger.warning("%d realtime sessions had not finished after %g s", len(unfinished), timeout)
        finally:
            for task in finishing:
                task.cancel()


async def _finish(session: RealtimeSession, sender: _Sender) -> None:
    await session.finish()
    await sender.close(SERVICE_RESTART, "shutting_down")


async def drain(app: Starlette, timeout: float) -> None:
    """The app's realtime sessions finish, within ``timeout`` seconds (the server is shutting down)."""
    hub = getattr(app.state, "realtime", None)
    if hub is not None:
        await hub.drain(timeout)


def _hub(app: Starlette) -> RealtimeHub:
    hub = getattr(app.state, "realtime", None)
    if hub is None:
        hub = app.state.realtime = RealtimeHub(app.state.service)
    return hub


def _authorization(websocket: WebSocket) -> str | None:
    header = websocket.headers.get("authorization")
    if header is not None:
        return header
    for protocol in websocket.scope.get("subprotocols", []):
        if protocol.startswith(KEY_SUBPROTOCOL):
            return f"Bearer {protocol.removeprefix(KEY_SUBPROTOCOL)}"
    return None


class _Sender:
    """Server events to the client, one at a time (finals and partials finish in their own tasks); a client
    that has gone makes sending a no-op."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.connected = True
        self._lock = asyncio.Lock()

    async def send(self, event: dict) -> None:
        async with self._lock:
            if not self.connected:
                return
            try:
                await self.websocket.send_text(json.dumps(event, ensure_ascii=False))
            except (WebSocketDisconnect, RuntimeError, OSError):
                self.connected = False

    async def close(self, code: int, reason: str) -> None:
        """After the events already being sent; the client may be gone already."""
        async with self._lock:
            if not self.connected:
                return
            self.connected = False
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await self.websocket.close(code, reason)


class _Observer:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def partial_sent(self, seconds: float) -> None:
        self.metrics.realtime_partials.labels("sent").inc()
        self.metrics.realtime_partial_seconds.observe(seconds)

    def partial_skipped(self) -> None:
        self.metrics.realtime_partials.labels("skipped").inc()

    def final_sent(self, seconds: float) -> None:
        self.metrics.realtime_final_seconds.observe(seconds)


@router.websocket(REALTIME_PATH)
async def realtime(websocket: WebSocket) -> None:
    hub = _hub(websocket.app)
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    sender = _Sender(websocket)
    try:
        hub.admit(websocket)
    except Refusal as refusal:
        await sender.send(error_event(refusal.error))
        await websocket.close(refusal.close_code, refusal.error.code)
        return
    session = hub.session(sender)
    try:
        await session.start()
        await _read(websocket, session, sender, hub.service.settings.realtime_idle_timeout_seconds)
    finally:
        await hub.closed(session)


async def _read(websocket: WebSocket, session: RealtimeSession, sender: _Sender, idle_timeout: float) -> None:
    """Client messages, one at a time: the next is read once the last is handled, so a client that sends
    faster than the session can take is held back by the socket."""
    while True:
        try:
            message = await asyncio.wait_for(websocket.receive(), idle_timeout)
        except asyncio.TimeoutError:
            error = RealtimeError("idle_timeout", f"nothing received for {idle_timeout:g} s: session closed")
            await sender.send(error_event(error))
            await sender.close(NORMAL_CLOSURE, error.code)
            return
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        await session.handle(text if text is not None else message.get("bytes", b""))
