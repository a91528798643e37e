"""``sensevoice bench`` on the tiny checkpoint: a complete table and valid JSON quickly; --compare."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from sensevoice_serve.bench.layout import PARTS

from ..conftest import SHARED_AUDIO
from .conftest import run_command


@pytest.fixture(scope="module")
def bench_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    if not SHARED_AUDIO.is_dir():
        pytest.skip(f"{SHARED_AUDIO} is missing (the shared recordings live beside the checkout)")
    scratch = tmp_path_factory.mktemp("bench")
    json_path = scratch / "bench.json"
    with pytest.MonkeyPatch.context() as patch:
        # Whatever profile this machine has, the run uses the automatic settings.
        patch.setenv("SENSEVOICE_PROFILE", str(scratch / "no-profile.json"))
        code, markdown = run_command(
            ["bench", "--model", str(tiny_model_dir), "--clip-seconds", "5,10", "--requests", "3",
             "--concurrency", "1,4", "--json", str(json_path)]
        )  # fmt: skip
    return code, markdown, json.loads(json_path.read_text())


def test_bench_gives_a_complete_table_and_valid_json(bench_run) -> None:
    code, markdown, report = bench_run
    assert code == 0
    assert report["report"] == "sensevoice-bench" and report["model"]["random_weights"] is True
    assert report["machine"]["cpu_count"] >= 1 and report["cpu_model"] and report["versions"]["torch"]
    assert {check["name"] for check in report["doctor"]} >= {"torch build", "cpu", "codec mp3"}
    assert report["device"] == report["settings"]["device"] == "cpu"
    assert report["settings"]["source"] == "rules"
    assert [row["label"] for row in report["clips"]] == ["5 s", "10 s"]
    for row in report["clips"]:
        cold = row["cold_start"]
        assert 0 < cold["ready_s"] < cold["first_result_s"]
        latency = row["latency"]
        assert latency["requests"] == 3
        assert 0 < latency["p50_s"] <= latency["p90_s"] <= latency["p99_s"]
        assert set(latency["parts_s"]) == set(PARTS)
        # The parts (decode, VAD, queue, features, model, decoding) account for the end-to-end time.
        assert 0.8 <= latency["parts_over_total"] <= 1.2, latency
        assert [t["concurrency"] for t in row["throughput"]] == [1, 4]
        assert all(t["audio_seconds_per_second"] > 0 for t in row["throughput"])
        assert row["memory"]["peak_rss_mb"] > 0
        assert row["memory"]["gpu_max_allocated_mb"] is None  # no GPU here
        sent = 1 + 3 + 3 + 4  # warm-up, latency, throughput at 1 and at 4
        assert row["stability"] == {"requests": sent, "errors": 0, "out_of_memory": 0, "messages": []}

    assert "**RANDOM weights**" in markdown
    table_rows = [line for line in markdown.splitlines() if line.startswith(("| 5 s |", "| 10 s |"))]
    assert len(table_rows) == 4  # a latency row and a throughput row per clip
    for line in table_rows:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        # Only the GPU columns may be empty on a CPU machine.
        assert cells.count("–") == (2 if "×" in line else 0), line


def test_json_to_standard_output_replaces_the_tables(tiny_model_dir: Path) -> None:
    if not SHARED_AUDIO.is_dir():
        pytest.skip(f"{SHARED_AUDIO} is missing")
    code, output = run_command(
        ["bench", "--model", str(tiny_model_dir), "--clip-seconds", "2", "--requests", "1",
         "--concurrency", "2", "--json"]
    )  # fmt: skip
    assert code == 0
    report = json.loads(output)
    assert report["clips"][0]["throughput"][0]["requests"] == 2  # at least one request per client


def test_compare_prints_ratios_side_by_side(bench_run, tmp_path: Path) -> None:
    _, _, report = bench_run
    slower = copy.deepcopy(report)
    for row in slower["clips"]:
        row["latency"]["p50_s"] *= 2
        for entry in row["throughput"]:
            entry["audio_seconds_per_second"] /= 4
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(report))
    second.write_text(json.dumps(slower))
    code, table = run_command(["bench", "--compare", str(first), str(second)])
    assert code == 0
    lines = table.splitlines()
    assert any(line.startswith("| 5 s | p50 latency ↓ |") and line.endswith("| 2.00 |") for line in lines)
    assert any(line.startswith("| 10 s | × real time @4 ↑ |") and line.endswith("| 0.25 |") for line in lines)


def test_compare_refuses_other_files(tmp_path: Path) -> None:
    from sensevoice_serve.errors import InvalidOption

    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": 1}))
    with pytest.raises(InvalidOption, match="not a sensevoice bench --json file"):
        run_command(["bench", "--compare", str(other), str(other)])
