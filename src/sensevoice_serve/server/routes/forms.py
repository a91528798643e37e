"""The transcription endpoints' multipart forms: received by ``uploads.FormReceiver`` (files straight into the
decode pool's directory), their text fields checked by a pydantic model, their OpenAPI description derived
from the same model. FastAPI's own ``File``/``Form`` parameters would spool every file first and copy it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar, get_origin

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from ...hotwords import split_hotwords
from ..service import Service
from ..uploads import FormReceiver, UploadedFile

Fields = TypeVar("Fields", bound=BaseModel)


class HotwordFields(BaseModel):
    """Hotwords as form fields: repeated, comma-separated, or as ``hotwords[]`` (how OpenAI's SDKs send a
    list in ``extra_body``). Given, they replace the server's hotwords for the request."""

    hotwords: list[str] = Field([], description="phrases to boost, each optionally phrase:boost")
    listed_hotwords: list[str] = Field([], alias="hotwords[]", description="as hotwords")
    hotword_score: float | None = Field(None, description="boost of a hotword given without one")

    def hotword_specs(self) -> list[str] | None:
        specs = [spec for field in (*self.hotwords, *self.listed_hotwords) for spec in split_hotwords(field)]
        return specs or None


@asynccontextmanager
async def received_form(
    request: Request, service: Service, file_field: str, max_files: int
) -> AsyncIterator[FormReceiver]:
    """The request's form, fully received; its files that the decode pool did not take go afterwards."""
    form = FormReceiver(service.pool.upload_dir, service.upload_space, file_field, max_files)
    try:
        await form.receive(request.headers.get("content-type"), request.receive)
        yield form
    finally:
        form.discard()


def validated(form: FormReceiver, model: type[Fields]) -> tuple[Fields, list[UploadedFile]]:
    """The form's fields as ``model`` and its files; 400 naming every problem, as FastAPI words them."""
    values: dict[str, object] = {}
    for name, field in model.model_fields.items():
        key = field.alias or name
        given = [
            value for value in form.fields.get(key, []) if value != ""
        ]  # empty: not given, as in FastAPI
        if given:
            values[key] = given if get_origin(field.annotation) is list else given[-1]
    problems: list[dict] = []
    try:
        fields = model.model_validate(values)
    except ValidationError as error:
        problems = [dict(problem) for problem in error.errors()]
    if not form.files:
        problems.append(
            {"type": "missing", "loc": (form.file_field,), "msg": "Field required", "input": None}
        )
    if problems:
        # "body" first, as FastAPI reports form fields; the app's handler words them.
        raise RequestValidationError([{**problem, "loc": ("body", *problem["loc"])} for problem in problems])
    return fields, form.files


def multipart_openapi(model: type[BaseModel], file_field: str, many: bool) -> dict:
    """The operation's request body for ``/openapi.json``: ``model``'s fields and the file part(s)."""
    schema = model.model_json_schema(by_alias=True)
    upload = {"type": "string", "format": "binary"}
    schema["properties"] = {
        file_field: {"type": "array", "items": upload} if many else upload,
        **schema["properties"],
    }
    schema["required"] = [file_field, *schema.get("required", [])]
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}
