"""The append-only JSONL results file of a bulk run, and what it says is already done.

Each finished file appends one line (a result or an error) and flushes it to disk, so a crash or ``kill -9``
loses at most the files in flight. A rerun skips files whose key (path, size, mtime, the model's files, the
precision and the options that change the output) already has a line; a torn last line from a crash is
ignored and overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# Records are written by ManifestWriter with "key" first. In the JSON text a quote inside a string is always
# escaped, so an unescaped '"error": ' can only be a key, and no key of a result is named "error".
_KEY_PREFIX = re.compile(rb'\{"key": "([^"\\]*)"')
_ERROR_KEY = b'"error": '


def file_identity(path: Path) -> dict:
    """Where a file is and which version of it: its absolute path, size and modification time."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def file_key(path: Path, options: dict) -> str:
    """Changes when the file or any output-changing option changes (``options`` must be JSON-able)."""
    identity = json.dumps({**file_identity(path), "options": options}, sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


@dataclass
class Done:
    succeeded: set[str]
    failed: set[str]


def read_done(manifest: Path) -> Done:
    """Keys already recorded; a line cut short by a crash is dropped (and truncated away).

    The file is streamed a line at a time and each line only searched, never parsed, so a manifest of
    many long transcripts costs the memory of its longest line, not of its records.
    """
    done = Done(set(), set())
    if not manifest.exists():
        return done
    with manifest.open("r+b") as handle:
        complete = 0  # bytes up to the end of the last whole line
        for line in handle:
            if not line.endswith(b"\n"):
                handle.truncate(complete)
                break
            complete += len(line)
            found = _KEY_PREFIX.match(line)
            if found is None or not line.rstrip().endswith(b"}"):
                continue  # not one of our records
            (done.failed if _ERROR_KEY in line else done.succeeded).add(found.group(1).decode())
    return done


@dataclass
class ResumePlan:
    """What a bulk run still has to do, and why it leaves out the rest."""

    todo: list[Path] = field(default_factory=list)
    keys: dict[Path, str] = field(default_factory=dict)
    already_done: int = 0  # recorded results, and repeats of a file listed twice
    not_retried: int = 0  # recorded failures, left alone without retry_failed
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason): cannot be keyed


def plan_resume(files: Iterable[Path], manifest: Path, options: dict, retry_failed: bool) -> ResumePlan:
    """Which of ``files`` to transcribe into ``manifest``; a file listed twice (two spellings) counts once."""
    done = read_done(manifest)
    plan = ResumePlan()
    seen: set[str] = set()
    for path in files:
        try:
            key = file_key(path, options)
        except OSError as error:
            plan.unreadable.append((path, error.strerror or str(error)))
            continue
        if key in done.succeeded or key in seen:
            plan.already_done += 1
        elif key in done.failed and not retry_failed:
            plan.not_retried += 1
        else:
            plan.todo.append(path)
            plan.keys[path] = key
        seen.add(key)
    return plan


class ManifestWriter:
    """Appends one JSON line per file and makes it durable before returning."""

    def __init__(self, manifest: Path):
        manifest.parent.mkdir(parents=True, exist_ok=True)
        created = not manifest.exists()
        self._handle = manifest.open("a", encoding="utf-8")
        if created:
            _fsync_directory(manifest.parent)  # else a crash can lose the file with every line in it

    def append(self, record: dict) -> None:
        """``record`` must start with its "key"."""
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
