"""The append-only JSONL results file of a bulk run, and what it says is already done.

Each finished file appends one line (a result or an error) and flushes it to disk, so a crash or ``kill -9``
loses at most the files in flight. A rerun skips files whose key (path, size, mtime and the options that
change the output) already has a line; a torn last line from a crash is ignored and overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path


def file_key(path: Path, options: dict) -> str:
    """Changes when the file or any output-changing option changes."""
    stat = path.stat()
    identity = json.dumps(
        {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "options": options},
        sort_keys=True,
    )
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


@dataclass
class Done:
    succeeded: set[str]
    failed: set[str]


def read_done(manifest: Path) -> Done:
    """Keys already recorded; a line cut short by a crash is dropped (and truncated away)."""
    done = Done(set(), set())
    if not manifest.exists():
        return done
    data = manifest.read_bytes()
    keep = len(data)
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
    for line in data[:keep].splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        (done.failed if "error" in record else done.succeeded).add(record.get("key", ""))
    if keep != len(data):
        with manifest.open("r+b") as handle:
            handle.truncate(keep)
    return done


class ManifestWriter:
    """Appends one JSON line per file and makes it durable before returning."""

    def __init__(self, manifest: Path):
        manifest.parent.mkdir(parents=True, exist_ok=True)
        self._handle = manifest.open("a", encoding="utf-8")

    def append(self, record: dict) -> None:
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
