"""Where ``sensevoice transcribe`` puts results: standard output, one file per input, a bulk results file.

Each output mode is one sink with ``write(path, result)``; the CLI hands every finished file to each sink it
opened, and failures to ``fail`` (only the results file records them).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .manifest import ManifestWriter
from .results import Transcription
from .writers import WRITERS, StreamWriter

if TYPE_CHECKING:
    from .settings import Settings


class Sink:
    def write(self, path: Path, result: Transcription) -> None:
        raise NotImplementedError

    def fail(self, path: Path, message: str) -> None:
        """A file that could not be transcribed (its error is printed by the CLI already)."""

    def close(self) -> None:
        """Finish; called once, also after an error."""


class StdoutSink(Sink):
    """Results on standard output as they finish (see ``StreamWriter`` for several files in one stream)."""

    def __init__(self, output_format: str, several: bool) -> None:
        self._writer = StreamWriter(output_format, several)

    def write(self, path: Path, result: Transcription) -> None:
        sys.stdout.write(self._writer.render(result))
        sys.stdout.flush()


class DirectorySink(Sink):
    """``DIR/stem.fmt`` per input; inputs that share a stem (a.wav, a.mp3) get the full file name instead."""

    def __init__(self, directory: Path, output_format: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._directory = directory
        self._format = output_format
        self._used: set[Path] = set()

    def write(self, path: Path, result: Transcription) -> None:
        target = self._directory / f"{path.stem}.{self._format}"
        if target in self._used:
            target = self._directory / f"{path.name}.{self._format}"
        self._used.add(target)
        target.write_text(WRITERS[self._format](result), encoding="utf-8")


class ManifestSink(Sink):
    """One JSON line per file, result or error, durable before the next file (bulk mode, resumable)."""

    def __init__(self, manifest: Path, keys: dict[Path, str]) -> None:
        self._writer = ManifestWriter(manifest)
        self._keys = keys

    def write(self, path: Path, result: Transcription) -> None:
        self._writer.append({"key": self._keys[path], "path": str(path), **result.to_dict()})

    def fail(self, path: Path, message: str) -> None:
        self._writer.append({"key": self._keys[path], "path": str(path), "error": message})

    def close(self) -> None:
        self._writer.close()


def open_sinks(settings: Settings, keys: dict[Path, str], several: bool) -> list[Sink]:
    """The sinks the settings ask for: the results file, the directory, both, or else standard output
    (``several``: more than one file is coming)."""
    sinks: list[Sink] = []
    if settings.output:
        sinks.append(ManifestSink(Path(settings.output), keys))
    if settings.output_dir:
        sinks.append(DirectorySink(Path(settings.output_dir), settings.output_format))
    if not sinks:
        sinks.append(StdoutSink(settings.output_format, several))
    return sinks
