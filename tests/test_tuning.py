from __future__ import annotations

from pathlib import Path

import pytest

from sensevoice_serve import tuning
from sensevoice_serve.tuning import (
    GpuInfo,
    MachineInfo,
    auto_settings,
    load_profile,
    resolve_tuned_settings,
    save_profile,
)

GIB = 1024**3
LAPTOP = MachineInfo(cpu_count=2)
H100 = MachineInfo(cpu_count=16, gpus=(GpuInfo("NVIDIA H100", (9, 0), 70 * GIB, 80 * GIB),))
T4 = MachineInfo(cpu_count=8, gpus=(GpuInfo("Tesla T4", (7, 5), 14 * GIB, 15 * GIB),))


def test_cpu_rules() -> None:
    small = auto_settings(LAPTOP)
    assert (small.device, small.dtype, small.torch_threads, small.decode_workers) == ("cpu", "fp32", 2, 1)
    big = auto_settings(MachineInfo(cpu_count=16))
    assert big.decode_workers == 4 and big.torch_threads == 12  # decoders keep their own cores


def test_gpu_rules() -> None:
    h100 = auto_settings(H100)
    assert (h100.device, h100.dtype) == ("cuda:0", "bf16")
    assert h100.torch_threads <= 4 and h100.decode_workers >= 12
    t4 = auto_settings(T4)
    assert t4.dtype == "fp16"  # no bf16 below compute capability 8.0
    assert t4.max_batch_frames < h100.max_batch_frames


def test_profile_round_trip_and_other_machines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "profile.json"
    measured = tuning.TunedSettings(torch_threads=2, decode_workers=1, max_batch_frames=1234, max_wait_ms=3.0)
    save_profile(path, measured, LAPTOP)
    loaded = load_profile(path, LAPTOP)
    assert loaded == measured and loaded.source == "profile"
    assert load_profile(path, H100) is None
    assert "another machine" in caplog.text
    path.write_text("{not json")
    assert load_profile(path, LAPTOP) is None


def test_explicit_values_win_over_profile_and_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "profile.json"
    monkeypatch.setenv("SENSEVOICE_PROFILE", str(path))
    assert resolve_tuned_settings({}, LAPTOP).source == "rules"
    save_profile(path, tuning.TunedSettings(max_batch_frames=999), LAPTOP)
    assert resolve_tuned_settings({"device": "auto", "dtype": None}, LAPTOP).max_batch_frames == 999
    chosen = resolve_tuned_settings({"max_batch_frames": 50, "torch_threads": 7}, LAPTOP)
    assert (chosen.max_batch_frames, chosen.torch_threads, chosen.source) == (50, 7, "user")
