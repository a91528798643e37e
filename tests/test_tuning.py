from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sensevoice_serve import tuning
from sensevoice_serve.device import resolve_dtype
from sensevoice_serve.errors import InvalidOption
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


@pytest.fixture
def no_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "profile.json"
    monkeypatch.setenv("SENSEVOICE_PROFILE", str(path))
    return path


def test_explicit_cpu_on_a_gpu_machine_gets_the_cpu_rules(no_profile: Path) -> None:
    chosen = resolve_tuned_settings({"device": "cpu"}, H100)
    assert chosen == auto_settings(MachineInfo(cpu_count=16))  # not bf16, 60,000 frames, 4 threads
    assert (chosen.dtype, chosen.torch_threads, chosen.decode_workers) == ("fp32", 12, 4)


def test_a_profile_measured_on_another_device_does_not_apply(no_profile: Path) -> None:
    save_profile(no_profile, auto_settings(H100), H100)
    assert resolve_tuned_settings({}, H100).source == "profile"
    assert resolve_tuned_settings({"device": "cpu"}, H100).max_batch_frames == tuning.CPU_BATCH_FRAMES
    assert resolve_tuned_settings({"device": "cuda"}, H100).max_batch_frames == 60_000
    fp32 = resolve_tuned_settings({"dtype": "fp32"}, H100)
    assert (fp32.device, fp32.dtype, fp32.max_batch_frames) == ("cuda:0", "fp32", 60_000)
    assert resolve_tuned_settings({"dtype": "fp32"}, T4).max_batch_frames < auto_settings(T4).max_batch_frames


def test_explicit_gpu_gets_the_gpu_rules_of_that_gpu(no_profile: Path) -> None:
    two = MachineInfo(cpu_count=8, gpus=(*T4.gpus, GpuInfo("NVIDIA L4", (8, 9), 2 * GIB, 24 * GIB)))
    second = resolve_tuned_settings({"device": "cuda:1"}, two)
    assert (second.device, second.dtype, second.torch_threads) == ("cuda:1", "bf16", 4)
    assert second.max_batch_frames < auto_settings(two).max_batch_frames  # GPU 1 has less memory free
    assert resolve_tuned_settings({"device": "cuda"}, two).device == "cuda:0"
    with pytest.raises(InvalidOption, match="2 GPU"):
        resolve_tuned_settings({"device": "cuda:2"}, two)


def test_explicit_gpu_without_one_is_a_clear_error(no_profile: Path) -> None:
    with pytest.raises(InvalidOption, match="no CUDA GPU.*--device cpu"):
        resolve_tuned_settings({"device": "cuda"}, LAPTOP)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "bfloat16"])
def test_half_precision_on_the_cpu_is_refused(no_profile: Path, dtype: str) -> None:
    with pytest.raises(InvalidOption, match="fp32"):
        resolve_tuned_settings({"dtype": dtype}, LAPTOP)
    with pytest.raises(InvalidOption, match="fp32"):
        resolve_tuned_settings({"device": "cpu", "dtype": dtype}, H100)
    with pytest.raises(InvalidOption, match="fp32"):
        resolve_dtype(dtype, torch.device("cpu"))
    assert resolve_dtype("fp32", torch.device("cpu")) == torch.float32


def test_the_python_api_refuses_bf16_on_the_cpu(tiny_model_dir: Path) -> None:
    from sensevoice_serve.pipeline import SenseVoice

    with pytest.raises(InvalidOption, match="--dtype fp32"):
        SenseVoice.from_pretrained(tiny_model_dir, device="cpu", dtype="bf16")
