"""Request bodies parsed as they stream in: each file part is written once, straight to the file the decode
worker will read (no spooled copy, no second copy for the worker), and text parts are kept, bounded.

``UploadSpace`` bounds the bytes of uploads in the temp directory, all requests together: on a tmpfs that
directory is memory. A file is charged as it is written and given back when it is removed, which the decode
pool does once its worker is done with it.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect
from starlette.types import Message

from ..errors import InvalidOption, Overloaded

MB = 1024 * 1024
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 64


class UploadSpace:
    """Bytes of uploads on disk, all requests together, under ``limit`` (503 beyond it)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()  # files are removed from the decode pool's threads

    def _full(self) -> Overloaded:
        return Overloaded(
            f"server busy: the uploads in progress fill its {self.limit / MB:g} MB of temporary space"
        )

    def check_room(self, size: int) -> None:
        """Refuse at once an upload whose declared size does not fit now."""
        if self.used + size > self.limit:
            raise self._full()

    def take(self, size: int) -> None:
        with self._lock:
            if self.used + size > self.limit:
                raise self._full()
            self.used += size

    def give_back(self, size: int) -> None:
        with self._lock:
            self.used -= size


class UploadedFile:
    """One uploaded file, in ``directory``, charged to ``space`` (None: not counted) while it exists."""

    def __init__(self, directory: str | Path, name: str, space: UploadSpace | None = None) -> None:
        self.name = name
        self.size = 0
        self.handed_over = False  # to the decode pool, which then removes it
        self._space = space
        self._lock = threading.Lock()
        self._removed = False
        handle, path = tempfile.mkstemp(dir=directory, suffix=".upload")
        self.path = Path(path)
        self._file = open(handle, "wb")  # noqa: SIM115 - open while its part streams in

    def write(self, data: bytes) -> None:
        if self._space is not None:
            self._space.take(len(data))
        self.size += len(data)
        self._file.write(data)

    def close(self) -> None:
        self._file.close()

    def remove(self) -> None:
        """Close, delete and give its space back; safe to call more than once, from any thread."""
        with self._lock:
            if self._removed:
                return
            self._removed = True
        self._file.close()
        self.path.unlink(missing_ok=True)
        if self._space is not None:
            self._space.give_back(self.size)


class FormReceiver:
    """python-multipart's callbacks: the parts named ``file_field`` that are files (at most ``max_files``)
    written to files in ``directory``; text parts kept (at most ``MAX_FIELDS`` of ``MAX_FIELD_BYTES``)."""

    def __init__(self, directory: str | Path, space: UploadSpace, file_field: str, max_files: int) -> None:
        self.directory, self.space = directory, space
        self.file_field, self.max_files = file_field, max_files
        self.fields: dict[str, list[str]] = {}
        self.files: list[UploadedFile] = []
        self.complete = False
        self._headers: dict[bytes, bytes] = {}
        self._header_name = self._header_value = b""
        self._name = ""
        self._part: UploadedFile | bytearray | None = None

    async def receive(self, content_type: str | None, receive: Callable[[], Awaitable[Message]]) -> None:
        """Read the whole body from ``receive``. A body that is not multipart carries no files or fields:
        it is left unread, and what the route requires is missing."""
        kind, options = parse_options_header(content_type)
        if kind != b"multipart/form-data":
            return
        if not options.get(b"boundary"):
            raise InvalidOption("the multipart/form-data body has no boundary in its Content-Type")
        parser = MultipartParser(options[b"boundary"], self._callbacks())
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnect
                parser.write(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except FormParserError as error:
            raise InvalidOption(f"the multipart/form-data body is malformed: {error}") from error
        if not self.complete:
            raise InvalidOption("the multipart/form-data body ended before its closing boundary")

    def discard(self) -> None:
        """Remove the files the decode pool has not taken (it removes those it took)."""
        if isinstance(self._part, UploadedFile):
            self._part.close()
        for upload in self.files:
            if not upload.handed_over:
                upload.remove()

    def _callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        self._name = _decode(options.get(b"name", b""))
        if b"filename" not in options:
            if sum(map(len, self.fields.values())) >= MAX_FIELDS:
                raise InvalidOption(f"more than {MAX_FIELDS} form fields")
            self._part = bytearray()
        elif self._name != self.file_field:
            self._part = None  # a file under a name this endpoint does not take: not stored
        elif len(self.files) >= self.max_files:
            raise InvalidOption(f"too many files in one request: the limit is {self.max_files}")
        else:
            self._part = UploadedFile(self.directory, _decode(options[b"filename"]), self.space)
            self.files.append(self._part)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if isinstance(self._part, UploadedFile):
            # Written on the event loop: a chunk goes to the page cache in microseconds, far less than a
            # hand-over to a thread would cost for each.
            self._part.write(data[start:end])
        elif self._part is not None:
            if len(self._part) + end - start > MAX_FIELD_BYTES:
                raise InvalidOption(f"the form field {self._name!r} is over {MAX_FIELD_BYTES // 1024} KB")
            self._part += data[start:end]

    def _part_end(self) -> None:
        if isinstance(self._part, UploadedFile):
            self._part.close()
        elif self._part is not None:
            self.fields.setdefault(self._name, []).append(_decode(bytes(self._part)))
        self._part = None

    def _end(self) -> None:
        self.complete = True


def _decode(raw: bytes) -> str:
    """Form values are UTF-8 (what browsers and HTTP clients send); anything else is kept byte for byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
