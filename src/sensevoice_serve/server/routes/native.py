"""``POST /v1/transcribe``: the full result of one or more files, each with its own status and timings."""

from __future__ import annotations

import asyncio
from typing import Annotated, BinaryIO, Literal

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import JSONResponse

from ...decoding import DecodeOptions
from ...errors import InvalidOption, SenseVoiceError
from ...longform import SegmentationOptions
from ..errors import error_body, error_code, json_response
from ..service import Service
from .dependencies import ServiceDep
from .health import MODEL_NAME

NATIVE_PATH = "/v1/transcribe"

router = APIRouter()


@router.post(NATIVE_PATH)
async def transcribe_files(
    service: ServiceDep,
    files: Annotated[list[UploadFile], File()],
    language: Annotated[str | None, Form()] = None,
    use_itn: Annotated[bool | None, Form()] = None,
    ban_emo_unk: Annotated[bool | None, Form()] = None,
    vad: Annotated[Literal["auto", "on", "off"] | None, Form()] = None,
    max_segment_seconds: Annotated[float | None, Form()] = None,
    split_channels: Annotated[bool | None, Form()] = None,
) -> JSONResponse:
    """The full result per file, with timings; a file that fails gets its own error entry."""
    service.check_file_count(len(files))
    settings = service.settings
    options = DecodeOptions(
        language or settings.language,
        settings.use_itn if use_itn is None else use_itn,
        settings.ban_emo_unk if ban_emo_unk is None else ban_emo_unk,
    )
    if max_segment_seconds is not None and max_segment_seconds > settings.max_segment_seconds:
        # Attention grows with the square of a segment's length: the operator's cap is a memory bound.
        raise InvalidOption(
            f"max_segment_seconds may be at most this server's {settings.max_segment_seconds:g}"
        )
    segmentation = SegmentationOptions(
        vad or settings.vad,
        settings.max_segment_seconds if max_segment_seconds is None else max_segment_seconds,
        settings.split_channels if split_channels is None else split_channels,
    )
    uploads = [(upload.filename or f"file{index}", upload.file) for index, upload in enumerate(files)]
    with service.inference_place():
        entries = await asyncio.gather(
            *(_file_entry(service, name, data, options, segmentation) for name, data in uploads)
        )
    return _native_response(entries)


async def _file_entry(
    service: Service,
    name: str,
    data: bytes | BinaryIO,
    options: DecodeOptions,
    segmentation: SegmentationOptions,
) -> dict:
    try:
        result, timings = await service.transcribe(data, name, options, segmentation)
    except SenseVoiceError as error:
        return {
            "source": name,
            "status": error.http_status,
            **error_body(error.http_status, str(error), error_code(error)),
        }
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
