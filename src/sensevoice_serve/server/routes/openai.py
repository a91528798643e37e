"""``POST /v1/audio/transcriptions``: OpenAI's audio transcription API, so its clients work unchanged."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field

from .. import openai_format
from .dependencies import ServiceDep
from .forms import HotwordFields, multipart_openapi, received_form, validated

logger = logging.getLogger(__name__)

OPENAI_PATH = "/v1/audio/transcriptions"
FILE_FIELD = "file"

router = APIRouter()


class OpenAIFields(HotwordFields):
    model: str = Field("", description="any name is accepted; answered by this server's model")
    language: str | None = None
    response_format: openai_format.ResponseFormat = "json"
    timestamp_granularities: list[openai_format.Granularity] = Field([], alias="timestamp_granularities[]")
    # Free text, not phrases: boosting a prompt's words would surprise; hotwords are the explicit way.
    prompt: str | None = Field(None, description="accepted and ignored (send hotwords instead)")
    temperature: float | None = Field(None, description="accepted and ignored")


@router.post(OPENAI_PATH, openapi_extra=multipart_openapi(OpenAIFields, FILE_FIELD, many=False))
async def openai_transcription(request: Request, service: ServiceDep) -> Response:
    """OpenAI's audio transcription API (``prompt`` and ``temperature`` are accepted and ignored); a
    ``hotwords`` field (``extra_body``) boosts phrases."""
    async with received_form(request, service, FILE_FIELD, max_files=1) as form:
        fields, [upload] = validated(form, OpenAIFields)
        settings = service.settings
        language = (fields.language or settings.language).lower()
        options = settings.decode_options(
            language, hotwords=fields.hotword_specs(), hotword_score=fields.hotword_score
        )
        with service.inference_place():
            # OpenAI's bodies have no warnings: skipped hotwords are only logged (info: the server's own are
            # logged as warnings at startup, and would be again with every request).
            for reason in await service.prepare(options):
                logger.info("%s", reason)
            result, _ = await service.transcribe(
                upload, upload.name or "upload", options, service.default_segmentation()
            )
    return openai_format.render(result, fields.response_format, fields.timestamp_granularities)
