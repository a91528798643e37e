"""``POST /v1/transcribe``: the full result of one or more files, each with its own status and timings."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from ...decoding import DecodeOptions
from ...errors import InvalidOption, SenseVoiceError
from ...longform import SegmentationOptions
from ...settings import Settings
from ..errors import error_body, error_code, json_response
from ..service import Service
from ..uploads import UploadedFile
from .dependencies import ServiceDep
from .forms import HotwordFields, multipart_openapi, received_form, validated
from .health import MODEL_NAME

NATIVE_PATH = "/v1/transcribe"
FILES_FIELD = "files"

router = APIRouter()


class NativeFields(HotwordFields):
    language: str | None = None
    use_itn: bool | None = None
    ban_emo_unk: bool | None = None
    beam_size: int | None = Field(None, description="1: greedy; 2-16: beam search (default: 4 with hotwords)")
    vad: Literal["auto", "on", "off"] | None = None
    max_segment_seconds: float | None = Field(None, description="at most the server's own cap")
    split_channels: bool | None = None


@router.post(NATIVE_PATH, openapi_extra=multipart_openapi(NativeFields, FILES_FIELD, many=True))
async def transcribe_files(request: Request, service: ServiceDep) -> JSONResponse:
    """The full result per file, with timings; a file that fails gets its own error entry."""
    max_files = service.settings.max_files_per_request
    async with received_form(request, service, FILES_FIELD, max_files) as form:
        fields, uploads = validated(form, NativeFields)
        options, segmentation = _options(fields, service.settings)
        with service.inference_place():
            skipped_hotwords = await service.prepare(options)
            entries = await asyncio.gather(
                *(
                    _file_entry(
                        service,
                        upload,
                        upload.name or f"file{index}",
                        options,
                        segmentation,
                        skipped_hotwords,
                    )
                    for index, upload in enumerate(uploads)
                )
            )
    return _native_response(entries)


def _options(fields: NativeFields, settings: Settings) -> tuple[DecodeOptions, SegmentationOptions]:
    """The request's options, each defaulting to the server's."""
    options = settings.decode_options(
        fields.language,
        fields.use_itn,
        fields.ban_emo_unk,
        fields.beam_size,
        fields.hotword_specs(),
        fields.hotword_score,
    )
    cap = fields.max_segment_seconds
    if cap is not None and cap > settings.max_segment_seconds:
        # Attention grows with the square of a segment's length: the operator's cap is a memory bound.
        raise InvalidOption(
            f"max_segment_seconds may be at most this server's {settings.max_segment_seconds:g}"
        )
    segmentation = SegmentationOptions(
        fields.vad or settings.vad,
        settings.max_segment_seconds if cap is None else cap,
        settings.split_channels if fields.split_channels is None else fields.split_channels,
    )
    return options, segmentation


async def _file_entry(
    service: Service,
    upload: UploadedFile,
    name: str,
    options: DecodeOptions,
    segmentation: SegmentationOptions,
    skipped_hotwords: list[str],
) -> dict:
    try:
        result, timings = await service.transcribe(upload, name, options, segmentation)
    except SenseVoiceError as error:
        return {
            "source": name,
            "status": error.http_status,
            **error_body(error.http_status, str(error), error_code(error)),
        }
    result.warnings += skipped_hotwords
    return {**result.to_dict(), "status": 200, "timings": vars(timings)}


def _native_response(entries: list[dict]) -> JSONResponse:
    """200 when any file succeeded; when none did, the first failure's status and error, so a client
    sending one bad file gets a 4xx like from the OpenAI endpoint."""
    body: dict = {"model": MODEL_NAME, "results": entries}
    failures = [entry for entry in entries if entry["status"] != 200]
    if failures and len(failures) == len(entries):
        body["error"] = failures[0]["error"]
        return json_response(body, failures[0]["status"])
    return json_response(body, 200)
