"""Bulk results as a Parquet dataset (``--output results.parquet``): a directory of part files, one row per
input, with the columns of the JSON Lines results file (segments and tokens as nested lists).

Finished files are buffered and written as a part every ``FLUSH_ROWS`` rows or ``FLUSH_SECONDS``, and at the
end. A part is written under a hidden name, made durable, then renamed into place, so the dataset never holds
a torn part (readers skip hidden files, and the next run removes them); a crash loses the buffered rows,
which the next run redoes. What a rerun skips is the keys of the parts in place (``read_parquet_done``).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..manifest import Done, ResumePlan, file_key
from ..results import Transcription
from ..sinks import Sink

FLUSH_ROWS = 1000
FLUSH_SECONDS = 10.0
PART_GLOB = "part-*.parquet"
TORN_GLOB = ".part-*"

_TOKEN = pa.struct(
    [("id", pa.int64()), ("text", pa.string()), ("start", pa.float64()), ("end", pa.float64())]
)
_SEGMENT = pa.struct(
    [
        ("start", pa.float64()), ("end", pa.float64()), ("text", pa.string()), ("raw_text", pa.string()),
        ("language", pa.string()), ("emotion", pa.string()), ("emotion_prob", pa.float64()),
        ("event", pa.string()), ("itn", pa.bool_()), ("tokens", pa.list_(_TOKEN)), ("channel", pa.int64()),
    ]
)  # fmt: skip
SCHEMA = pa.schema(
    [
        ("key", pa.string()), ("path", pa.string()), ("error", pa.string()), ("source", pa.string()),
        ("duration", pa.float64()), ("language", pa.string()), ("emotion", pa.string()),
        ("emotion_prob", pa.float64()), ("event", pa.string()), ("itn", pa.bool_()), ("text", pa.string()),
        ("raw_text", pa.string()), ("emoji_text", pa.string()), ("warnings", pa.list_(pa.string())),
        ("segments", pa.list_(_SEGMENT)),
    ]
)  # fmt: skip


def is_parquet(output: str | os.PathLike) -> bool:
    return Path(output).suffix.lower() == ".parquet"


def read_parquet_done(directory: Path) -> Done:
    """The keys recorded in the dataset's parts: results and failures."""
    done = Done(set(), set())
    for part in sorted(directory.glob(PART_GLOB)):
        table = pq.read_table(part, columns=["key", "error"])
        for key, error in zip(table["key"].to_pylist(), table["error"].to_pylist(), strict=True):
            (done.succeeded if error is None else done.failed).add(key)
    return done


def plan_parquet_run(files: list[Path], directory: Path, options: dict, retry_failed: bool) -> ResumePlan:
    """As ``manifest.plan_resume`` does for a JSON Lines file: what is left to do, and why the rest is not."""
    done = read_parquet_done(directory)
    plan = ResumePlan()
    seen: set[str] = set()
    for path in files:
        try:
            key = file_key(path, options)
        except OSError as error:
            plan.unreadable.append((path, error.strerror or str(error)))
            continue
        repeated = key in seen
        seen.add(key)
        if repeated or key in done.succeeded:
            plan.already_done += 1
        elif key in done.failed and not retry_failed:
            plan.not_retried += 1
        else:
            plan.todo.append(path)
            plan.keys[path] = key
    return plan


class ParquetSink(Sink):
    """Rows into part files of ``directory``; see the module's docstring for when they become durable."""

    def __init__(self, directory: Path, keys: dict[Path, str]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for torn in directory.glob(TORN_GLOB):  # left by a run that crashed while writing a part
            torn.unlink()
        self._directory = directory
        self._keys = keys
        self._run = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self._parts = 0
        self._rows: list[dict] = []
        self._flushed_at = time.monotonic()

    def write(self, path: Path, result: Transcription) -> None:
        self._add({"key": self._keys[path], "path": str(path), **result.to_dict()})

    def fail(self, path: Path, message: str) -> None:
        self._add({"key": self._keys[path], "path": str(path), "error": message})

    def close(self) -> None:
        self._flush()

    def _add(self, row: dict) -> None:
        self._rows.append(row)
        if len(self._rows) >= FLUSH_ROWS or time.monotonic() - self._flushed_at >= FLUSH_SECONDS:
            self._flush()

    def _flush(self) -> None:
        self._flushed_at = time.monotonic()
        if not self._rows:
            return
        name = f"part-{self._run}-{self._parts:05d}.parquet"
        hidden = self._directory / f".{name}"
        pq.write_table(pa.Table.from_pylist(self._rows, schema=SCHEMA), hidden)
        _fsync(hidden, os.O_RDONLY)
        hidden.rename(self._directory / name)
        _fsync(self._directory, os.O_RDONLY | os.O_DIRECTORY)
        self._parts += 1
        self._rows = []


def _fsync(path: Path, flags: int) -> None:
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
