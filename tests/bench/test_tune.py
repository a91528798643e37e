"""``sensevoice bench --tune``: candidates measured, the best written as the profile, luck not rewarded."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from sensevoice_serve.bench import tune
from sensevoice_serve.runtimes import int8_available
from sensevoice_serve.tuning import (
    GIB,
    GpuInfo,
    MachineInfo,
    TunedSettings,
    auto_settings,
    load_profile,
    probe_machine,
)

from ..conftest import SHARED_AUDIO
from .conftest import run_command


def test_tune_measures_candidates_and_writes_the_best_profile(tiny_model_dir: Path, tmp_path: Path) -> None:
    if not SHARED_AUDIO.is_dir():
        pytest.skip(f"{SHARED_AUDIO} is missing")
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


BASELINE = TunedSettings(torch_threads=2, decode_workers=1, max_batch_frames=3000, max_wait_ms=5.0)
LONGER_WAIT = replace(BASELINE, max_wait_ms=10.0)


def scripted_tune(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, longer_wait_rates: list[float]
) -> tuple[dict, TunedSettings, dict[TunedSettings, int]]:
    """``run_tune`` where every candidate runs at 10× real time but the longer wait, whose runs are given."""
    runs: dict[TunedSettings, int] = {}

    def scripted(model_dir, settings, clips, requests, concurrency):
        runs[settings] = runs.get(settings, 0) + 1
        rate = longer_wait_rates[runs[settings] - 1] if settings == LONGER_WAIT else 10.0
        return {"settings": asdict(settings), "p50_s": 0.5, "audio_seconds_per_second": rate, "errors": 0}

    monkeypatch.setattr(tune, "measure_candidate", scripted)
    report, best = tune.run_tune(tiny_model_dir, [], BASELINE, 2, 2, lambda message: None)
    return report, best, runs


def test_tune_keeps_the_untuned_settings_when_a_win_does_not_repeat(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The longer wait looks 30 % faster once, then 30 % slower: on average no better than untuned.
    report, best, runs = scripted_tune(tiny_model_dir, monkeypatch, [13.0, 7.0])
    assert runs[LONGER_WAIT] == 2 and runs[BASELINE] == 2  # the winner and the untuned measured again
    assert best == BASELINE
    assert report["best"] == 0 and report["throughput_gain"] == 0
    assert [c["again"] for c in report["candidates"]].count(True) == 2


def test_tune_keeps_a_win_that_repeats_and_reports_its_averaged_gain(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report, best, runs = scripted_tune(tiny_model_dir, monkeypatch, [13.0, 11.0])
    assert runs[LONGER_WAIT] == 2 and runs[BASELINE] == 2
    assert best == LONGER_WAIT
    winner = report["candidates"][report["best"]]
    assert winner["settings"] == asdict(LONGER_WAIT) and winner["again"] is False  # its first measurement
    assert report["throughput_gain"] == pytest.approx(12.0 / 10.0 - 1)
    assert report["latency_change"] == 0


H100_MACHINE = MachineInfo(cpu_count=16, gpus=(GpuInfo("NVIDIA H100 80GB HBM3", (9, 0), 80 * GIB, 80 * GIB),))


def test_tune_on_the_cpu_of_a_gpu_machine_starts_from_the_cpu_rules() -> None:
    baseline = tune.untuned_settings({"device": "cpu", "max_wait_ms": 7.0}, H100_MACHINE)
    assert baseline == replace(auto_settings(MachineInfo(cpu_count=16), "cpu"), max_wait_ms=7.0)
    gpu_rules = auto_settings(H100_MACHINE)
    assert (baseline.torch_threads, baseline.max_batch_frames, baseline.dtype) != (
        gpu_rules.torch_threads,
        gpu_rules.max_batch_frames,
        gpu_rules.dtype,
    )
    assert tune.untuned_settings({"device": "cuda"}, H100_MACHINE).device == "cuda:0"
    assert tune.untuned_settings({}, H100_MACHINE) == gpu_rules


def test_cpu_tuning_measures_int8_against_fp32_and_gpu_tuning_does_not() -> None:
    if not int8_available():
        pytest.skip("the int8 runtime needs onnxruntime and onnx")
    assert [{"dtype": "int8"}, {"dtype": "fp32"}] in tune.tuning_steps(BASELINE, 2, gpu=False)
    on_gpu = tune.tuning_steps(replace(BASELINE, device="cuda:0", dtype="bf16"), 16, gpu=True)
    assert all(overrides.get("dtype") != "int8" for step in on_gpu for overrides in step)
