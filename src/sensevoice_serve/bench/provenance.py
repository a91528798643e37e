"""What a report says about where and when it was measured: the machine, its software, the model."""

from __future__ import annotations

import platform
from dataclasses import asdict
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from ..checkpoint import resolve_model
from ..doctor import run_checks
from ..tuning import probe_machine
from .layout import REPORT_VERSION

VERSIONED_PACKAGES = ("sensevoice-serve", "torch", "numpy", "av", "onnxruntime", "nvidia-ml-py")


def cpu_model() -> str:
    """The CPU's marketing name, which is how people tell machines apart in posted tables."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_report() -> dict:
    """What the JSON needs to compare runs across machines: hardware, driver and software versions.

    ``doctor`` holds every check of ``sensevoice doctor`` (driver, CUDA build, GPUs with a real matmul,
    CPU flags, codecs), so a surprising figure can be traced to the machine.
    """
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "machine": asdict(probe_machine()),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "doctor": [asdict(check) for check in run_checks(None)],
    }


def model_report(model_dir: Path) -> dict:
    files = resolve_model(model_dir)
    encoder = files.config.get("encoder_conf", {})
    return {
        "path": str(model_dir),
        "random_weights": files.random_weights,
        "num_blocks": encoder.get("num_blocks"),
        "output_size": encoder.get("output_size"),
    }


def describe_run(kind: str, model_dir: Path) -> dict:
    """The fields every report starts with: its kind and layout version, when, the model, the machine."""
    return {
        "report": kind,
        "version": REPORT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model_report(model_dir),
        **machine_report(),
    }
