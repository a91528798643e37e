from __future__ import annotations

import json
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from sensevoice_serve import doctor
from sensevoice_serve.cli import main

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
    assert report["seconds"] < 30


def test_human_table(capsys: pytest.CaptureFixture) -> None:
    main(["doctor"])
    out = capsys.readouterr().out
    assert "sensevoice doctor" in out and "chosen settings" in out


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
    monkeypatch.setattr(device, "cuda_devices", lambda: [torch.device("cuda", 0)])
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: Properties("Fake L4", 8, 9))

    def broken_probe(target: torch.device) -> None:
        if target.type == "cuda":
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
