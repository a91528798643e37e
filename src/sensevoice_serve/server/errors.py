"""Errors in OpenAI's shape, ``{"error": {"message", "type", "code"}}``, so its clients show the message."""

from __future__ import annotations

import re
from http import HTTPStatus

from fastapi.responses import JSONResponse

from ..errors import SenseVoiceError

# Every 503 says when to come back: overload, loading, draining and a restarted decoder all pass quickly.
RETRY_AFTER_SECONDS = 1


def error_code(error: SenseVoiceError) -> str:
    """``AudioTooLongError`` -> ``audio_too_long``: a stable code clients can branch on."""
    explicit = getattr(error, "code", None)
    if explicit:
        return explicit
    name = type(error).__name__.removesuffix("Error")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def error_body(status: int, message: str, code: str) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def json_response(body: dict, status: int) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
    return JSONResponse(body, status_code=status, headers=headers)


def error_response(status: int, message: str, code: str | None = None) -> JSONResponse:
    code = code or HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    return json_response(error_body(status, message, code), status)


def sensevoice_error_response(error: SenseVoiceError, close: bool = False) -> JSONResponse:
    """``close``: the answer comes before the request's body was read, so the connection is not reused (the
    rest of that body would be read, and thrown away, first)."""
    response = error_response(error.http_status, str(error), error_code(error))
    if close:
        response.headers["Connection"] = "close"
    return response
