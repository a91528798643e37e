"""``POST /v1/audio/transcriptions``: OpenAI's audio transcription API, so its clients work unchanged."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response

from ...decoding import DecodeOptions
from .. import openai_format
from .dependencies import ServiceDep

OPENAI_PATH = "/v1/audio/transcriptions"

router = APIRouter()


@router.post(OPENAI_PATH)
async def openai_transcription(
    service: ServiceDep,
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form(description="any name is accepted; answered by this server's model")] = "",
    language: Annotated[str | None, Form()] = None,
    response_format: Annotated[openai_format.ResponseFormat, Form()] = "json",
    timestamp_granularities: Annotated[
        list[openai_format.Granularity], Form(alias="timestamp_granularities[]")
    ] = [],  # noqa: B006 - FastAPI copies defaults per request
) -> Response:
    """OpenAI's audio transcription API (``prompt`` and ``temperature`` are accepted and ignored)."""
    settings = service.settings
    options = DecodeOptions((language or settings.language).lower(), settings.use_itn, settings.ban_emo_unk)
    with service.inference_place():
        result, _ = await service.transcribe(
            file.file, file.filename or "upload", options, service.default_segmentation()
        )
    return openai_format.render(result, response_format, timestamp_granularities)
