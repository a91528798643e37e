"""What users point Ray at: ``sensevoice_serve.ray:app`` and ``:build_app``, the shipped Serve config and
RayService; and what the plain CLI says of a Parquet output."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sensevoice_serve.cli import main

from .conftest import RAY_MISSING

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_importing_the_package_does_not_import_ray() -> None:
    code = "import sys, sensevoice_serve.ray; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_serve_run_targets_build_applications() -> None:
    Application = pytest.importorskip("ray.serve", reason=RAY_MISSING).Application  # noqa: N806

    import sensevoice_serve.ray

    assert isinstance(sensevoice_serve.ray.app, Application)
    assert isinstance(sensevoice_serve.ray.build_app({"replicas": 2, "device": "cpu"}), Application)


def serve_configs() -> list[dict]:
    config = yaml.safe_load((DEPLOY / "serve-config.yaml").read_text())
    service = yaml.safe_load((DEPLOY / "rayservice.yaml").read_text())
    return [config, yaml.safe_load(service["spec"]["serveConfigV2"])]


@pytest.mark.parametrize("config", serve_configs(), ids=["serve-config", "rayservice"])
def test_the_shipped_serve_configs_are_valid_and_point_at_the_builder(config: dict) -> None:
    schema = pytest.importorskip("ray.serve.schema", reason=RAY_MISSING)
    schema.ServeDeploySchema.model_validate(config)
    (application,) = config["applications"]
    module, name = application["import_path"].split(":")
    assert name == "build_app" and hasattr(importlib.import_module(module), name)
    (deployment,) = application["deployments"]
    assert deployment["name"] == "SenseVoice"


def test_the_rayservice_turns_usage_stats_off_everywhere() -> None:
    cluster = yaml.safe_load((DEPLOY / "rayservice.yaml").read_text())["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            assert {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"} in container["env"]


def test_a_parquet_output_needs_ray(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip = tmp_path / "a.wav"
    clip.write_bytes(b"")
    assert main(["transcribe", str(clip), "--output", str(tmp_path / "results.parquet")]) == 2
    assert "needs --ray" in capsys.readouterr().err
