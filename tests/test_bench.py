"""``sensevoice bench`` on the tiny checkpoint: a complete table and valid JSON quickly; --compare; --tune."""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from sensevoice_serve import bench
from sensevoice_serve.audio import decode_audio

from .conftest import SHARED_AUDIO

BENCH_BUDGET_S = 60


def run_command(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="sensevoice")
    bench.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = args.handler(args)
    return code, output.getvalue()


@pytest.fixture(scope="module")
def bench_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    if not SHARED_AUDIO.is_dir():
        pytest.skip(f"{SHARED_AUDIO} is missing (the shared recordings live beside the checkout)")
    scratch = tmp_path_factory.mktemp("bench")
    json_path = scratch / "bench.json"
    started = time.perf_counter()
    with pytest.MonkeyPatch.context() as patch:
        # Whatever profile this machine has, the run uses the automatic settings.
        patch.setenv("SENSEVOICE_PROFILE", str(scratch / "no-profile.json"))
        code, markdown = run_command(
            ["bench", "--model", str(tiny_model_dir), "--clip-seconds", "5,10", "--requests", "3",
             "--concurrency", "1,4", "--json", str(json_path)]
        )  # fmt: skip
    return code, markdown, json.loads(json_path.read_text()), time.perf_counter() - started


def test_bench_gives_a_complete_table_and_valid_json_quickly(bench_run) -> None:
    code, markdown, report, elapsed = bench_run
    assert code == 0
    assert elapsed < BENCH_BUDGET_S
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
        assert set(latency["parts_s"]) == set(bench.PARTS)
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
    _, _, report, _ = bench_run
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


def test_clips_are_mp3_of_real_speech_at_the_requested_lengths() -> None:
    if not SHARED_AUDIO.is_dir():
        pytest.skip(f"{SHARED_AUDIO} is missing")
    material = bench.speech_material(SHARED_AUDIO, seconds_needed=3)
    clips = bench.speech_clips([1.5, 3, 2 * len(material) / bench.SAMPLE_RATE], material)
    for clip in clips:
        assert clip.suffix == ".mp3"
        decoded = decode_audio(clip.encoded)
        assert abs(decoded.duration - clip.seconds) < 0.1, clip.label
        assert decoded.samples.std() > 0.01  # speech, not silence


def test_stability_counts_errors_and_out_of_memory() -> None:
    stability = bench.Stability()

    def out_of_memory():
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def broken():
        raise ValueError("bad input")

    for request in (out_of_memory, broken, broken):
        assert stability.record(request) is None
    assert stability.record(lambda: bench.RequestTiming(1.0, {})) is not None
    assert stability.to_dict() == {
        "requests": 4,
        "errors": 3,
        "out_of_memory": 1,
        "messages": ["RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB", "ValueError: bad input"],
    }


def test_random_checkpoint_is_generated_once_and_never_left_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sensevoice_serve import random_checkpoint

    written = []
    real_writer = random_checkpoint.write_random_checkpoint

    def tiny_writer(directory, size="tiny", seed=0):
        written.append(size)
        return real_writer(directory, "tiny", seed)  # the full size would take ~1 GB here

    monkeypatch.setattr(random_checkpoint, "write_random_checkpoint", tiny_writer)
    stale = tmp_path / "random-full"
    stale.mkdir()
    (stale / "model.pt").write_bytes(b"cut off")  # an earlier run killed mid-write: no marker
    first = bench.random_full_checkpoint(tmp_path)
    second = bench.random_full_checkpoint(tmp_path)
    assert first == second == stale
    assert written == ["full"]
    assert (first / "RANDOM_WEIGHTS.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["random-full"]


def test_tune_measures_candidates_and_writes_the_best_profile(tiny_model_dir: Path, tmp_path: Path) -> None:
    if not SHARED_AUDIO.is_dir():
        pytest.skip(f"{SHARED_AUDIO} is missing")
    from sensevoice_serve.tuning import load_profile, probe_machine

    profile = tmp_path / "profile.json"
    json_path = tmp_path / "tune.json"
    code, markdown = run_command(
        ["bench", "--model", str(tiny_model_dir), "--tune", "--clip-seconds", "3", "--requests", "2",
         "--concurrency", "2", "--profile", str(profile), "--json", str(json_path)]
    )  # fmt: skip
    assert code == 0
    report = json.loads(json_path.read_text())
    assert len(report["candidates"]) >= 4
    best = report["candidates"][report["best"]]
    assert best["errors"] == 0
    assert best["audio_seconds_per_second"] >= report["candidates"][0]["audio_seconds_per_second"]
    saved = load_profile(profile, probe_machine())
    assert {**asdict(saved), "source": None} == {**best["settings"], "source": None}
    assert "Gain over the untuned settings" in markdown
    assert str(profile) in markdown


def test_tune_keeps_the_untuned_settings_when_a_win_does_not_repeat(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sensevoice_serve.tuning import TunedSettings

    baseline = TunedSettings(torch_threads=2, decode_workers=1, max_batch_frames=3000, max_wait_ms=5.0)
    lucky = replace(baseline, max_wait_ms=10.0)
    runs: dict[TunedSettings, int] = {}

    def scripted(model_dir, settings, clips, requests, concurrency):
        runs[settings] = runs.get(settings, 0) + 1
        # The longer wait looks 30 % faster once, then 30 % slower: on average no better than untuned.
        rate = {lucky: [13.0, 7.0][runs[settings] - 1]}.get(settings, 10.0)
        return {"settings": asdict(settings), "p50_s": 0.5, "audio_seconds_per_second": rate, "errors": 0}

    monkeypatch.setattr(bench, "measure_candidate", scripted)
    report, best = bench.run_tune(tiny_model_dir, [], baseline, 2, 2, lambda message: None)
    assert runs[lucky] == 2 and runs[baseline] == 2  # the winner and the untuned settings measured again
    assert best == baseline
    assert report["best"] == 0 and report["throughput_gain"] == 0
    assert [c["again"] for c in report["candidates"]].count(True) == 2
