from __future__ import annotations

import sys
from dataclasses import replace
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
    resolve_device_settings,
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


def test_cpu_rules_pick_int8_where_it_is_faster(no_profile: Path) -> None:
    vnni_laptop = MachineInfo(cpu_count=2, int8_faster=True)
    assert auto_settings(vnni_laptop).dtype == "int8"
    assert resolve_tuned_settings({}, vnni_laptop).dtype == "int8"  # what serve and transcribe run
    assert resolve_tuned_settings({"dtype": "fp32"}, vnni_laptop).dtype == "fp32"
    h100 = MachineInfo(cpu_count=16, gpus=H100.gpus, int8_faster=True)
    assert auto_settings(h100).dtype == "bf16"  # the GPU, whatever the CPU
    assert auto_settings(h100, device="cpu").dtype == "int8"


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
        resolve_dtype(dtype, "cpu")
    assert resolve_dtype("fp32", "cpu") == "fp32"


def test_the_python_api_refuses_bf16_on_the_cpu(tiny_model_dir: Path) -> None:
    from sensevoice_serve.pipeline import SenseVoice

    with pytest.raises(InvalidOption, match="--dtype fp32"):
        SenseVoice.from_pretrained(tiny_model_dir, device="cpu", dtype="bf16")


class FakeProperties:
    def __init__(self, name: str, uuid: str, major: int = 9, total_gib: int = 80) -> None:
        self.name, self.uuid, self.major, self.minor = name, uuid, major, 0
        self.total_memory = total_gib * GIB


class FakeNvml:
    """pynvml over GPUs listed in its own order, as NVML does (it ignores CUDA_VISIBLE_DEVICES)."""

    def __init__(self, free_by_uuid: dict[str, int]) -> None:
        self.free_by_uuid = free_by_uuid
        self.shut_down = False

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        pass

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shut_down = True

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.free_by_uuid)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:  # noqa: N802
        return list(self.free_by_uuid)[index]

    def nvmlDeviceGetUUID(self, handle: str) -> str:  # noqa: N802
        return f"GPU-{handle}"

    def nvmlDeviceGetMemoryInfo(self, handle: str):  # noqa: N802
        return type("Memory", (), {"free": self.free_by_uuid[handle], "total": 80 * GIB})


@pytest.fixture
def two_fake_gpus(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """torch sees two GPUs; the list records every GPU whose memory torch was asked about (which opens a
    CUDA context there)."""
    properties = [FakeProperties("NVIDIA H100", "aaaa"), FakeProperties("NVIDIA H100", "bbbb")]
    asked: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: properties[index])

    def mem_get_info(index: int) -> tuple[int, int]:
        asked.append(index)
        return 30 * GIB, 80 * GIB

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    return asked


def test_probing_without_nvml_opens_no_cuda_context(
    two_fake_gpus: list[int], monkeypatch: pytest.MonkeyPatch, no_profile: Path
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    machine = tuning.probe_machine()
    assert [(g.name, g.capability, g.free_bytes) for g in machine.gpus] == [("NVIDIA H100", (9, 0), None)] * 2
    assert two_fake_gpus == []
    assert resolve_tuned_settings({"device": "cuda:1"}, machine).device == "cuda:1"
    assert two_fake_gpus == [1]  # the memory of the GPU chosen only


def test_probing_with_nvml_matches_gpus_by_uuid(
    two_fake_gpus: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    nvml = FakeNvml({"bbbb": 3 * GIB, "aaaa": 70 * GIB})  # NVML's order is not torch's
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    machine = tuning.probe_machine()
    assert [g.free_bytes for g in machine.gpus] == [70 * GIB, 3 * GIB]
    assert nvml.shut_down and two_fake_gpus == []


H100_PAIR = MachineInfo(cpu_count=16, gpus=(H100.gpus[0], H100.gpus[0]))


def test_devices_lists_the_engines(no_profile: Path) -> None:
    two = resolve_device_settings({}, "cpu, cpu", LAPTOP)
    assert [t.device for t in two] == ["cpu", "cpu"] and two[0] == auto_settings(LAPTOP)
    gpus = resolve_device_settings({"dtype": "fp16"}, "cuda:1,cuda:0", H100_PAIR)
    assert [(t.device, t.dtype) for t in gpus] == [("cuda:1", "fp16"), ("cuda:0", "fp16")]
    with pytest.raises(InvalidOption, match="2 GPU"):
        resolve_device_settings({}, "cuda:0,cuda:2", H100_PAIR)
    with pytest.raises(InvalidOption, match="comma-separated"):
        resolve_device_settings({}, "cuda:0,,cuda:1", H100_PAIR)
    with pytest.raises(InvalidOption, match="device or devices"):
        resolve_device_settings({"device": "cuda:0"}, "cuda:1", H100_PAIR)


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every device probed with a real matmul (faked: cuda:1 is broken)."""
    from sensevoice_serve import device

    probed: list[str] = []

    def probe(target: str) -> None:
        probed.append(target)
        if target == "cuda:1":
            raise RuntimeError("CUDA error: uncorrectable ECC error encountered")

    monkeypatch.setattr(device, "probe_device", probe)
    return probed


def test_an_automatic_device_means_every_usable_gpu(
    no_profile: Path, probes: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    busy = GpuInfo("NVIDIA H100", (9, 0), int(tuning.MIN_FREE_GPU_GIB * GIB) - 1, 80 * GIB)
    four = MachineInfo(cpu_count=16, gpus=(*H100_PAIR.gpus, busy, H100.gpus[0]))
    chosen = resolve_device_settings({"device": "auto"}, None, four)
    assert [t.device for t in chosen] == ["cuda:0", "cuda:3"]  # 1 is broken, 2 held by someone else
    assert all(t.source == "rules" and t.dtype == "bf16" for t in chosen)
    assert "not using cuda:1: CUDA error: uncorrectable ECC" in caplog.text
    assert "not using cuda:2: 2.0 GiB free" in caplog.text
    assert probes == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]


def test_one_device_unless_several_gpus_are_automatic(no_profile: Path, probes: list[str]) -> None:
    assert [t.device for t in resolve_device_settings({}, None, H100)] == ["cuda:0"]
    assert [t.device for t in resolve_device_settings({"device": "cuda:1"}, None, H100_PAIR)] == ["cuda:1"]
    assert [t.device for t in resolve_device_settings({}, None, LAPTOP)] == ["cpu"]
    assert probes == []  # the engine probes its device when it loads; only a list of several is probed here
    starved = MachineInfo(cpu_count=8, gpus=(replace(T4.gpus[0], free_bytes=0),) * 2)
    assert [t.device for t in resolve_device_settings({}, None, starved)] == ["cpu"]


def test_a_profile_applies_to_every_gpu_of_its_kind(no_profile: Path) -> None:
    save_profile(no_profile, replace(auto_settings(H100_PAIR), max_batch_frames=7777), H100_PAIR)
    second = resolve_tuned_settings({}, H100_PAIR, device="cuda:1")
    assert (second.device, second.max_batch_frames, second.source) == ("cuda:1", 7777, "profile")
    mixed = MachineInfo(cpu_count=16, gpus=(H100.gpus[0], T4.gpus[0]))
    save_profile(no_profile, replace(auto_settings(mixed), max_batch_frames=7777), mixed)
    assert resolve_tuned_settings({}, mixed, device="cuda:1").max_batch_frames != 7777  # a T4, not an H100
