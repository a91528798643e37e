"""``sensevoice bench --devices``: one run through an engine per device, reported per device (two CPU
"devices" stand for two GPUs here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..conftest import SHARED_AUDIO
from .conftest import run_command


def test_bench_reports_what_each_device_did(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not SHARED_AUDIO.is_dir():
        pytest.skip(f"{SHARED_AUDIO} is missing")
    monkeypatch.setenv("SENSEVOICE_PROFILE", str(tmp_path / "no-profile.json"))
    json_path = tmp_path / "bench.json"
    code, markdown = run_command(
        ["bench", "--model", str(tiny_model_dir), "--clip-seconds", "3", "--requests", "2",
         "--concurrency", "4", "--devices", "cpu,cpu", "--json", str(json_path)]
    )  # fmt: skip
    assert code == 0
    report = json.loads(json_path.read_text())
    devices = report["devices"]
    assert [device["device"] for device in devices] == ["cpu#0", "cpu#1"]
    sent = 1 + 2 + 4  # warm-up, latency, throughput at 4 clients
    assert sum(device["audio_seconds"] for device in devices) == pytest.approx(sent * 3, abs=0.1)
    assert sum(device["batches"] for device in devices) >= 1
    assert all(device["gpu_max_allocated_mb"] is None for device in devices)
    assert "| device | batches | audio seconds | share | peak GPU (torch) |" in markdown
    assert any(line.startswith("| cpu#1 |") for line in markdown.splitlines())
