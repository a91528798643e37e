"""Bulk results as Parquet (``--output results.parquet``), made from the plain CLI's JSON Lines results file.

The run keeps that file beside the Parquet one (``results.parquet.jsonl``): a line per file appended and
made durable as each finishes, what a rerun skips, failures recorded once, exactly as ``--output
results.jsonl`` does. When the run ends, the Parquet file is written from it: one row per file (its latest
record, so a failure retried with ``--retry-failed`` appears once), with the JSON Lines fields, segments and
tokens as nested lists. A run killed part-way leaves the Parquet file of the last finished run; its rerun
brings it up to date.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

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


def results_file_for(dataset: Path) -> Path:
    """The JSON Lines results file a Parquet output is made from."""
    return dataset.with_name(dataset.name + ".jsonl")


def write_parquet(results: Path, dataset: Path) -> int:
    """Write ``dataset`` from the JSON Lines ``results``, whole, then renamed into place; its row count."""
    # pyarrow reads JSON in blocks that must each hold whole lines: a long file's record can be megabytes.
    with results.open("rb") as handle:
        longest = max((len(line) for line in handle), default=0)
    table = pa_json.read_json(
        results,
        read_options=pa_json.ReadOptions(block_size=max(1 << 20, longest + 1)),
        parse_options=pa_json.ParseOptions(explicit_schema=SCHEMA, unexpected_field_behavior="ignore"),
    )
    latest = {key: index for index, key in enumerate(table["key"].to_pylist())}
    table = table.take(sorted(latest.values()))
    partial = dataset.with_name(f".{dataset.name}.partial")
    pq.write_table(table, partial)
    _fsync(partial, os.O_RDONLY)
    partial.replace(dataset)
    _fsync(dataset.parent, os.O_RDONLY | os.O_DIRECTORY)
    return table.num_rows


def _fsync(path: Path, flags: int) -> None:
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
