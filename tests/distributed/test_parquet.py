"""``--output results.parquet``: rows with the results file's fields, parts written whole, and a rerun that
skips what the parts record, as a JSON Lines results file does."""

from __future__ import annotations

from pathlib import Path

import pytest

from sensevoice_serve.ray import parquet
from sensevoice_serve.ray.parquet import ParquetSink, plan_parquet_run, read_parquet_done
from sensevoice_serve.results import Segment, Token, Transcription

pq = pytest.importorskip("pyarrow.parquet", reason="the ray extra is not installed (pip install -e '.[ray]')")

OPTIONS = {"language": "auto", "use_itn": True}


def transcription(source: str) -> Transcription:
    segment = Segment(
        start=0.0, end=1.5, text="Hello.", raw_text="<|en|><|NEUTRAL|><|Speech|><|withitn|>Hello.",
        language="en", emotion="NEUTRAL", emotion_prob=0.9, event="Speech", itn=True,
        tokens=[Token(id=7, text="▁Hello", start=0.1, end=0.4)], channel=None,
    )  # fmt: skip
    return Transcription(source=source, duration=1.5, segments=[segment], warnings=["resampled"])


def inputs(tmp_path: Path, count: int) -> list[Path]:
    paths = []
    for index in range(count):
        path = tmp_path / f"{index}.wav"
        path.write_bytes(bytes([index]) * 16)
        paths.append(path)
    return paths


def test_rows_hold_the_fields_of_the_json_lines_file(tmp_path: Path) -> None:
    ok, bad = inputs(tmp_path, 2)
    dataset = tmp_path / "results.parquet"
    plan = plan_parquet_run([ok, bad], dataset, OPTIONS, retry_failed=False)
    sink = ParquetSink(dataset, plan.keys)
    sink.write(ok, transcription(str(ok)))
    sink.fail(bad, "not a recognised audio or video format")
    sink.close()

    rows = {row["path"]: row for row in pq.read_table(dataset).to_pylist()}
    expected = {"key": plan.keys[ok], "path": str(ok), "error": None, **transcription(str(ok)).to_dict()}
    assert rows[str(ok)] == expected
    assert rows[str(bad)]["error"] == "not a recognised audio or video format"
    assert rows[str(bad)]["text"] is None


def test_a_rerun_skips_recorded_files_and_failures_and_counts_repeats_once(tmp_path: Path) -> None:
    done, failed, new = inputs(tmp_path, 3)
    dataset = tmp_path / "results.parquet"
    first = plan_parquet_run([done, failed], dataset, OPTIONS, retry_failed=False)
    sink = ParquetSink(dataset, first.keys)
    sink.write(done, transcription(str(done)))
    sink.fail(failed, "broken")
    sink.close()

    rerun = plan_parquet_run([done, failed, new, new], dataset, OPTIONS, retry_failed=False)
    assert (rerun.todo, rerun.already_done, rerun.not_retried) == ([new], 2, 1)
    retry = plan_parquet_run([done, failed, new], dataset, OPTIONS, retry_failed=True)
    assert retry.todo == [failed, new]
    changed = plan_parquet_run([done], dataset, {**OPTIONS, "use_itn": False}, retry_failed=False)
    assert changed.todo == [done]  # other output options: another key


def test_parts_are_written_as_rows_accumulate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parquet, "FLUSH_ROWS", 2)
    paths = inputs(tmp_path, 3)
    dataset = tmp_path / "results.parquet"
    sink = ParquetSink(dataset, plan_parquet_run(paths, dataset, OPTIONS, retry_failed=False).keys)
    for path in paths:
        sink.write(path, transcription(str(path)))
    # Before close (a crash now): the first two rows are durable, the third is not.
    assert len(read_parquet_done(dataset).succeeded) == 2
    sink.close()
    assert len(read_parquet_done(dataset).succeeded) == 3
    assert len(list(dataset.glob("part-*.parquet"))) == 2


def test_a_part_torn_by_a_crash_is_ignored_then_removed(tmp_path: Path) -> None:
    dataset = tmp_path / "results.parquet"
    dataset.mkdir()
    torn = dataset / ".part-20260101T000000-deadbeef-00000.parquet"
    torn.write_bytes(b"PAR1 half a part")
    assert read_parquet_done(dataset).succeeded == set()
    ParquetSink(dataset, {}).close()
    assert not torn.exists()
