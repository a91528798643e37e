"""Where ``transcribe --ray`` puts results: the plain CLI's sinks (JSON Lines results file, one file per
input, standard output), or a Parquet dataset for ``--output *.parquet``; and what a rerun skips."""

from __future__ import annotations

from pathlib import Path

from ..manifest import ResumePlan, plan_resume
from ..settings import Settings
from ..sinks import DirectorySink, Sink
from .parquet import ParquetSink, is_parquet, plan_parquet_run


def plan_bulk_run(files: list[Path], settings: Settings, options: dict) -> ResumePlan:
    """The files still to do for ``settings.output``, in the format its name says."""
    output = Path(settings.output)
    if is_parquet(output):
        return plan_parquet_run(files, output, options, settings.retry_failed)
    return plan_resume(files, output, options, settings.retry_failed)


def open_sinks(settings: Settings, keys: dict[Path, str], several: bool) -> list[Sink]:
    from ..cli import _open_sinks

    if not (settings.output and is_parquet(settings.output)):
        return _open_sinks(settings, keys, several)
    sinks: list[Sink] = [ParquetSink(Path(settings.output), keys)]
    if settings.output_dir:
        sinks.append(DirectorySink(Path(settings.output_dir), settings.output_format))
    return sinks
