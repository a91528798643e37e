"""``--output results.parquet``: a Parquet file made from the JSON Lines results file the run keeps beside
it; one row per file with that file's fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from sensevoice_serve.manifest import ManifestWriter
from sensevoice_serve.results import Segment, Token, Transcription
from sensevoice_serve.sinks import ManifestSink

from .conftest import RAY_MISSING

parquet = pytest.importorskip("sensevoice_serve.ray.parquet", reason=RAY_MISSING)
pq = pytest.importorskip("pyarrow.parquet", reason=RAY_MISSING)


def transcription(source: str, tokens: int = 1) -> Transcription:
    segment = Segment(
        start=0.0, end=1.5, text="Hello.", raw_text="<|en|><|NEUTRAL|><|Speech|><|withitn|>Hello.",
        language="en", emotion="NEUTRAL", emotion_prob=0.9, event="Speech", itn=True,
        tokens=[Token(id=7, text="▁Hello", start=0.1, end=0.4)] * tokens, channel=None,
    )  # fmt: skip
    return Transcription(source=source, duration=1.5, segments=[segment], warnings=["resampled"])


def test_rows_hold_the_fields_of_the_results_file(tmp_path: Path) -> None:
    dataset = tmp_path / "results.parquet"
    results = parquet.results_file_for(dataset)
    ok, bad = tmp_path / "ok.wav", tmp_path / "bad.wav"
    sink = ManifestSink(results, {ok: "k-ok", bad: "k-bad"})
    sink.write(ok, transcription(str(ok)))
    sink.fail(bad, "not a recognised audio or video format")
    sink.close()

    assert parquet.write_parquet(results, dataset) == 2
    rows = {row["path"]: row for row in pq.read_table(dataset).to_pylist()}
    expected = {"key": "k-ok", "path": str(ok), "error": None, **transcription(str(ok)).to_dict()}
    assert rows[str(ok)] == expected
    assert rows[str(bad)]["error"] == "not a recognised audio or video format"
    assert rows[str(bad)]["text"] is None
    assert results.name == "results.parquet.jsonl"


def test_a_retried_file_appears_once_with_its_latest_record(tmp_path: Path) -> None:
    results = tmp_path / "results.parquet.jsonl"
    with ManifestWriter(results) as writer:
        writer.append({"key": "a", "path": "a.wav", "error": "broken"})
        writer.append({"key": "b", "path": "b.wav", **transcription("b.wav").to_dict()})
        writer.append({"key": "a", "path": "a.wav", **transcription("a.wav").to_dict()})  # --retry-failed
    parquet.write_parquet(results, tmp_path / "results.parquet")
    rows = pq.read_table(tmp_path / "results.parquet").to_pylist()
    summary = [(row["key"], row["error"], row["text"]) for row in rows]
    assert summary == [("b", None, "Hello."), ("a", None, "Hello.")]


def test_records_longer_than_a_read_block_are_read(tmp_path: Path) -> None:
    results = tmp_path / "results.parquet.jsonl"
    long = transcription("long.wav", tokens=40_000)  # a line of a few megabytes: a long recording's tokens
    with ManifestWriter(results) as writer:
        writer.append({"key": "long", "path": "long.wav", **long.to_dict()})
    parquet.write_parquet(results, tmp_path / "results.parquet")
    (row,) = pq.read_table(tmp_path / "results.parquet").to_pylist()
    assert len(row["segments"][0]["tokens"]) == 40_000
