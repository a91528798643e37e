"""OpenAI's Realtime API in transcription mode (GA shape): the client events we read, the session settings
they change, and the server events we write.

Client events are checked by pydantic models; anything wrong becomes a ``RealtimeError`` that the session
answers with an ``error`` event and survives. Fields this server does not use (``noise_reduction``,
``include``, ``create_response``...) are accepted and ignored, as OpenAI clients send them.
``session.update`` changes only the fields it names; ``turn_detection: null`` turns the server VAD off.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ..decoding import DecodeOptions
from ..errors import InvalidOption
from ..settings import decode_options

DEFAULT_RATE = 24000  # OpenAI's: clients that never say a rate send 24 kHz PCM16
PCM_RATES = (8000, 16000, 24000, 32000, 44100, 48000)
MODEL_NAME = "sensevoice-small"


class RealtimeError(Exception):
    """What an ``error`` event says: the session stays open unless the caller closes it."""

    def __init__(
        self, code: str, message: str, param: str | None = None, kind: str = "invalid_request_error"
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.param, self.kind = code, message, param, kind
        self.event_id: str | None = None  # the client event that caused it, once known


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(15)}"


# Session settings, as applied.


@dataclass(frozen=True)
class AudioFormat:
    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"] = "audio/pcm"
    rate: int = DEFAULT_RATE

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.type == "audio/pcm" else 1

    def to_json(self) -> dict:
        return {"type": self.type, "rate": self.rate} if self.type == "audio/pcm" else {"type": self.type}


@dataclass(frozen=True)
class ServerVad:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500

    def to_json(self) -> dict:
        return {"type": "server_vad", **vars(self)}


@dataclass(frozen=True)
class Transcription:
    model: str = MODEL_NAME
    language: str | None = None  # None: detected per utterance
    prompt: str = ""  # accepted and ignored
    # SenseVoice extras (None: the server's): echoed only once a client sets them.
    beam_size: int | None = None
    hotwords: tuple[str, ...] | None = None

    def to_json(self) -> dict:
        extras = {"beam_size": self.beam_size, "hotwords": self.hotwords}
        return {
            "model": self.model,
            "language": self.language,
            "prompt": self.prompt,
            **{name: value for name, value in extras.items() if value is not None},
        }


@dataclass(frozen=True)
class SessionSettings:
    id: str = field(default_factory=lambda: new_id("sess"))
    format: AudioFormat = AudioFormat()
    transcription: Transcription = Transcription()
    turn_detection: ServerVad | None = ServerVad()

    def to_json(self) -> dict:
        audio_input = {
            "format": self.format.to_json(),
            "transcription": self.transcription.to_json(),
            "turn_detection": None if self.turn_detection is None else self.turn_detection.to_json(),
            "noise_reduction": None,
        }
        return {
            "type": "transcription",
            "object": "realtime.transcription_session",
            "id": self.id,
            "audio": {"input": audio_input},
            "include": None,
        }


# Client events, as received.


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _FormatUpdate(_Lenient):
    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"]
    rate: int | None = None


class _TranscriptionUpdate(_Lenient):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    beam_size: int | None = None
    hotwords: list[str] | None = None


class _TurnDetectionUpdate(_Lenient):
    type: Literal["server_vad"]
    threshold: float | None = Field(None, gt=0, lt=1)
    prefix_padding_ms: int | None = Field(None, ge=0, le=5000)
    silence_duration_ms: int | None = Field(None, ge=100, le=10000)


class _InputUpdate(_Lenient):
    format: _FormatUpdate | None = None
    transcription: _TranscriptionUpdate | None = None
    turn_detection: _TurnDetectionUpdate | None = None


class _AudioUpdate(_Lenient):
    input: _InputUpdate | None = None


class _SessionUpdate(_Lenient):
    type: Literal["transcription"] = "transcription"
    audio: _AudioUpdate | None = None


class SessionUpdate(_Lenient):
    type: Literal["session.update"]
    event_id: str | None = None
    session: _SessionUpdate

    def applied_to(self, settings: SessionSettings) -> SessionSettings:
        """``settings`` with the fields this update names changed."""
        audio_input = self.session.audio.input if self.session.audio else None
        if audio_input is None:
            return settings
        given = audio_input.model_fields_set
        if "format" in given:
            settings = replace(settings, format=_audio_format(audio_input.format))
        if "transcription" in given and audio_input.transcription is not None:
            settings = replace(settings, transcription=_transcription(settings, audio_input.transcription))
        if "turn_detection" in given:
            update = audio_input.turn_detection
            settings = replace(settings, turn_detection=None if update is None else _server_vad(update))
        return settings


def _audio_format(update: _FormatUpdate | None) -> AudioFormat:
    if update is None or update.type == "audio/pcm":
        rate = DEFAULT_RATE if update is None or update.rate is None else update.rate
        if rate not in PCM_RATES:
            raise RealtimeError(
                "invalid_value",
                f"audio/pcm rate {rate} is not supported: use one of {', '.join(map(str, PCM_RATES))}",
                "session.audio.input.format.rate",
            )
        return AudioFormat("audio/pcm", rate)
    if update.rate not in (None, 8000):
        raise RealtimeError(
            "invalid_value", f"{update.type} is 8000 Hz, not {update.rate}", "session.audio.input.format.rate"
        )
    return AudioFormat(update.type, 8000)


def _transcription(settings: SessionSettings, update: _TranscriptionUpdate) -> Transcription:
    current = settings.transcription
    language = current.language
    if "language" in update.model_fields_set:
        language = (update.language or "").strip().lower() or None
        try:
            DecodeOptions(language=language or "auto")
        except InvalidOption as error:
            raise RealtimeError(
                "invalid_value", str(error), "session.audio.input.transcription.language"
            ) from error
    beam_size = current.beam_size if update.beam_size is None else update.beam_size
    hotwords = current.hotwords if update.hotwords is None else tuple(update.hotwords)
    try:
        decode_options(beam_size=beam_size, hotwords=hotwords or ())
    except InvalidOption as error:
        raise RealtimeError("invalid_value", str(error), "session.audio.input.transcription") from error
    return Transcription(
        update.model or current.model,
        language,
        current.prompt if update.prompt is None else update.prompt,
        beam_size,
        hotwords,
    )


def _server_vad(update: _TurnDetectionUpdate) -> ServerVad:
    defaults = ServerVad()
    return ServerVad(
        *(
            getattr(defaults, name) if getattr(update, name) is None else getattr(update, name)
            for name in ("threshold", "prefix_padding_ms", "silence_duration_ms")
        )
    )


class AudioAppend(_Lenient):
    type: Literal["input_audio_buffer.append"]
    event_id: str | None = None
    audio: str


class AudioCommit(_Lenient):
    type: Literal["input_audio_buffer.commit"]
    event_id: str | None = None


class AudioClear(_Lenient):
    type: Literal["input_audio_buffer.clear"]
    event_id: str | None = None


ClientEvent = Annotated[SessionUpdate | AudioAppend | AudioCommit | AudioClear, Field(discriminator="type")]
_CLIENT_EVENT = TypeAdapter(ClientEvent)
CLIENT_EVENT_TYPES = ("session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
                      "input_audio_buffer.clear")  # fmt: skip


def parse_client_event(message: str | bytes) -> ClientEvent:
    """One client message -> its event, or a ``RealtimeError`` saying what is wrong with it."""
    try:
        data = json.loads(message)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RealtimeError("invalid_json", f"the message is not JSON: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise RealtimeError("invalid_event", "an event is a JSON object with a string 'type'", "type")
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
    if data["type"] not in CLIENT_EVENT_TYPES:
        error = RealtimeError(
            "unknown_event",
            f"unknown or unsupported event type {data['type']!r} in a transcription session; this server "
            f"reads {', '.join(CLIENT_EVENT_TYPES)}",
            "type",
        )
        error.event_id = event_id
        raise error
    try:
        return _CLIENT_EVENT.validate_python(data)
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"][1:])
        failure = RealtimeError("invalid_value", f"{where}: {problem['msg']}", where)
        failure.event_id = event_id
        raise failure from error


# Server events.


def server_event(kind: str, **fields: Any) -> dict:
    return {"type": kind, "event_id": new_id("event"), **fields}


def error_event(error: RealtimeError) -> dict:
    details = {"type": error.kind, "code": error.code, "message": error.message, "param": error.param,
               "event_id": error.event_id}  # fmt: skip
    return server_event("error", error=details)
