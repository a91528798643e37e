from __future__ import annotations

import json
import shutil
from collections import namedtuple
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sensevoice_serve import doctor, doctor_gpu
from sensevoice_serve.cli import main
from sensevoice_serve.tuning import TunedSettings

Usage = namedtuple("Usage", "total used free")


def _by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {check.name: check for check in checks}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU report")
def test_json_on_a_cpu_machine(capsys: pytest.CaptureFixture, tiny_model_dir: Path) -> None:
    assert main(["doctor", "--json", "--model", str(tiny_model_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["gpu"]["status"] == "warn" and "no CUDA GPU" in checks["gpu"]["value"]
    assert checks["cpu"]["status"] == checks["cpu matmul"]["status"] == "ok"
    assert all(
        checks[f"codec {c}"]["status"] == "ok" for c in ("mp3", "aac", "opus", "vorbis", "flac", "pcm")
    )
    assert checks["weights"]["status"] == "warn" and "RANDOM weights" in checks["weights"]["value"]
    assert report["ok"] and report["settings"]["device"] == "cpu"
    assert report["verdict"].startswith("READY: serve runs on the CPU: cpu")
    assert report["seconds"] < 30


def test_human_table(capsys: pytest.CaptureFixture) -> None:
    main(["doctor"])
    out = capsys.readouterr().out
    assert "sensevoice doctor" in out and "chosen settings" in out and "\nverdict: " in out


def test_missing_package_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "REQUIRED_PACKAGES", ("numpy", "surely-not-installed-pkg"))
    checks = _by_name(doctor.check_python_and_packages())
    assert checks["surely-not-installed-pkg"].status == "fail"
    assert checks["surely-not-installed-pkg"].hint == "pip install surely-not-installed-pkg"


def test_codec_that_cannot_decode_fails() -> None:
    def broken(container_format: str, encoder: str) -> float:
        if encoder == "libmp3lame":
            raise RuntimeError("mp3 decoder missing")
        return 0.5

    checks = _by_name(doctor.check_codecs(broken))
    assert checks["codec mp3"].status == "fail" and checks["codec mp3"].value == "mp3 decoder missing"
    assert checks["codec flac"].status == "ok"
    short = _by_name(doctor.check_codecs(lambda f, e: 0.1))
    assert short["codec opus"].status == "fail" and "decoded 0.10 s" in short["codec opus"].value


def test_gpu_whose_allocation_raises_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from sensevoice_serve import device

    Properties = namedtuple("Properties", "name major minor")
    monkeypatch.setattr(device, "cuda_devices", lambda: ["cuda:0"])
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: Properties("Fake L4", 8, 9))

    def broken_probe(target: str) -> None:
        if target.startswith("cuda"):
            raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(device, "probe_device", broken_probe)
    checks = _by_name(doctor.check_devices())
    assert checks["gpu 0"].status == "fail"
    assert checks["gpu 0"].value == "Fake L4: CUDA error: out of memory"
    assert checks["cpu matmul"].status == "ok"


def test_real_weights_are_not_called_random(tiny_model_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_model_dir, tmp_path / "m")
    assert _by_name(doctor.check_model(str(copy)))["weights"].status == "warn"
    (copy / "RANDOM_WEIGHTS.txt").unlink()  # what the official download looks like
    weights = _by_name(doctor.check_model(str(copy)))["weights"]
    assert weights.status == "ok" and "RANDOM" not in weights.value


def test_model_dir_with_missing_tokenizer(tiny_model_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_model_dir, tmp_path / "m")
    (copy / "chn_jpn_yue_eng_ko_spectok.bpe.model").unlink()
    checks = _by_name(doctor.check_model(str(copy)))
    assert checks["model files"].status == "fail"
    assert checks["model files"].value == "missing chn_jpn_yue_eng_ko_spectok.bpe.model"


def test_model_dir_with_wrong_shapes(tiny_model_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_model_dir, tmp_path / "m")
    config = copy / "config.yaml"
    config.write_text(config.read_text().replace("linear_units: 256", "linear_units: 300"))
    checks = _by_name(doctor.check_model(str(copy)))
    assert checks["model"].status == "fail"
    assert (
        "wrong shape: encoder.encoders.0.feed_forward.w_1.bias (256,) (expected (300,))"
        in checks["model"].value
    )


@pytest.mark.parametrize(("free_gib", "status"), [(0.5, "fail"), (1.5, "warn"), (50, "ok")])
def test_disk_space(free_gib: float, status: str) -> None:
    usage = lambda path: Usage(100 * 2**30, 0, int(free_gib * 2**30))  # noqa: E731
    check = doctor.check_disk(Path("/"), usage)[0]
    assert check.status == status
    assert check.value.startswith(f"{free_gib:.1f} GiB free")


@pytest.mark.parametrize(
    ("cuda", "driver", "system", "status", "says"),
    [
        (
            "12.4",
            "470.82.01",
            "Linux",
            "fail",
            "470.82.01 is older than 525.60.13, the minimum for torch's CUDA 12.4",
        ),
        ("12.8", "525.60.13", "Linux", "ok", "525.60.13 (torch's CUDA 12.8 needs 525.60.13 or newer)"),
        ("12.1", "522.06", "Windows", "fail", "older than 527.41"),
        ("13.0", "575.57.08", "Linux", "fail", "older than 580, the minimum for torch's CUDA 13.0"),
        ("13.0", "580.65.06", "Linux", "ok", "580.65.06"),
        ("11.8", "450.80.02", "Linux", "ok", "450.80.02"),
        ("14.0", "700.1", "Linux", "warn", "no minimum known here for CUDA 14.0"),
        (None, "535.104.05", "Linux", "warn", "torch is a CPU-only build"),
        ("12.4", None, "Linux", "warn", "not found (torch is built for CUDA 12.4)"),
    ],
)
def test_driver_against_torchs_cuda(cuda, driver, system, status: str, says: str) -> None:
    check = doctor_gpu.check_driver(cuda, driver, system)
    assert check.status == status and says in check.value
    if status == "fail":
        assert "update the NVIDIA driver" in check.hint


def test_driver_version_from_the_kernel_module(tmp_path: Path) -> None:
    proprietary = tmp_path / "version"
    proprietary.write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
    )
    assert doctor_gpu.proc_driver_version(proprietary) == "535.104.05"
    proprietary.write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.14  Release Build\n"
    )
    assert doctor_gpu.proc_driver_version(proprietary) == "550.54.14"
    assert doctor_gpu.proc_driver_version(tmp_path / "absent") is None


class FakeMatmul:
    """(relative error, TFLOP/s) per dtype, or the error a dtype's matmul raises."""

    def __init__(self, **results: tuple[float, float] | Exception) -> None:
        self.results = {"fp32": (1e-7, 50.0), "bf16": (3e-3, 700.0), "fp16": (4e-4, 700.0), **results}

    def __call__(self, device: torch.device, dtype: str) -> tuple[float, float]:
        result = self.results[dtype]
        if isinstance(result, Exception):
            raise result
        return result


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> Callable[[int, float], None]:
    """A GPU of compute capability ``major``.0 with ``free_gib`` free; probes succeed."""
    from sensevoice_serve import device

    Properties = namedtuple("Properties", "name major minor")
    monkeypatch.setattr(device, "probe_device", lambda target: None)

    def make(major: int, free_gib: float = 70) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: Properties("Fake GPU", major, 0))
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (int(free_gib * 2**30), 80 * 2**30))

    return make


def test_bf16_that_fails_where_serve_would_pick_it_fails(fake_gpu) -> None:
    fake_gpu(9)
    matmul = FakeMatmul(bf16=RuntimeError("CUBLAS_STATUS_NOT_SUPPORTED"))
    checks = _by_name(doctor_gpu.check_gpu(torch.device("cuda", 0), matmul))
    assert checks["gpu 0"].status == "ok"
    assert checks["gpu 0"].value == "Fake GPU, compute 9.0, 70.0/80.0 GiB free, fp32 matmul 50.0 TFLOP/s"
    assert checks["gpu 0 bf16"].status == "fail"
    assert checks["gpu 0 bf16"].value == "matmul failed: CUBLAS_STATUS_NOT_SUPPORTED"
    assert "--dtype fp16" in checks["gpu 0 bf16"].hint
    assert checks["gpu 0 fp16"].status == "ok" and "700.0 TFLOP/s" in checks["gpu 0 fp16"].value


def test_a_wrong_product_is_caught_and_only_warns_where_unused(fake_gpu) -> None:
    fake_gpu(7)  # fp16 is what serve picks below compute capability 8.0
    checks = _by_name(doctor_gpu.check_gpu(torch.device("cuda", 0), FakeMatmul(bf16=(0.7, 5.0))))
    assert checks["gpu 0 bf16"].status == "warn" and "relative error 0.7" in checks["gpu 0 bf16"].value
    assert checks["gpu 0 fp16"].status == "ok" and "what serve picks" in checks["gpu 0 fp16"].value
    nan = _by_name(doctor_gpu.check_gpu(torch.device("cuda", 0), FakeMatmul(fp16=(float("nan"), 5.0))))
    assert nan["gpu 0 fp16"].status == "fail"


def test_a_gpu_short_of_memory_or_with_a_wrong_fp32_product(fake_gpu) -> None:
    fake_gpu(8, free_gib=1)
    checks = _by_name(doctor_gpu.check_gpu(torch.device("cuda", 0), FakeMatmul()))
    assert checks["gpu 0"].status == "warn" and "serve leaves this GPU out" in checks["gpu 0"].hint
    broken = doctor_gpu.check_gpu(torch.device("cuda", 0), FakeMatmul(fp32=(1.0, 1.0)))
    assert [(c.name, c.status) for c in broken] == [("gpu 0", "fail")]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_the_matmul_measure_itself(dtype: str) -> None:
    error, tflops = doctor_gpu.measure_matmul(torch.device("cpu"), dtype, speed_size=64)
    assert error < (1e-6 if dtype == "fp32" else doctor_gpu.MAX_RELATIVE_ERROR) and tflops > 0


def test_verdict_line(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    two_gpus = [TunedSettings(device="cuda:0", dtype="bf16"), TunedSettings(device="cuda:1", dtype="bf16")]
    ok = [doctor.Check("gpu 0", "ok", ""), doctor.Check("codec mp3", "warn", "")]
    assert (
        doctor.verdict(ok, two_gpus)
        == "READY: serve runs on 2 GPU(s): cuda:0 bf16, cuda:1 bf16 (1 warning(s) above)"
    )
    monkeypatch.setattr(doctor, "REQUIRED_PACKAGES", ("numpy", "surely-not-installed-pkg"))
    assert main(["doctor", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"].startswith("NOT READY: 1 check(s) failed (surely-not-installed-pkg)")
    assert report["devices"][0] == report["settings"]
