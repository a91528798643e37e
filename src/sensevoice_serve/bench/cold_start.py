"""Cold start: a fresh Python process timed from its launch to a ready server and to its first result."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from ..errors import SenseVoiceError
from ..tuning import TunedSettings
from .drive import ServiceClient
from .material import BenchClip

COLD_START_TIMEOUT_S = 600


def measure_cold_start(model_dir: Path, settings: TunedSettings, clip_file: Path) -> dict:
    """A fresh Python process: seconds from its start to model ready, and to its first result."""
    command = [
        sys.executable,
        "-m",
        "sensevoice_serve.bench",
        "--model",
        str(model_dir),
        "--clip",
        str(clip_file),
        "--settings",
        json.dumps(asdict(settings)),
    ]
    started = time.time()  # wall clock: the child reports its marks on the same clock
    completed = subprocess.run(command, capture_output=True, text=True, timeout=COLD_START_TIMEOUT_S)
    if completed.returncode != 0:
        tail = completed.stderr.strip().splitlines()[-1:] or ["no output"]
        raise SenseVoiceError(f"cold-start process exited with {completed.returncode}: {tail[0]}")
    marks = json.loads(completed.stdout.strip().splitlines()[-1])
    return {"ready_s": marks["ready"] - started, "first_result_s": marks["first_result"] - started}


def cold_start_child(argv: Sequence[str]) -> None:
    """The process ``measure_cold_start`` runs: start as the server does (ready = its /ready), answer one
    request, print both moments as JSON."""
    parser = argparse.ArgumentParser(prog="python -m sensevoice_serve.bench")
    parser.add_argument("--model", required=True)
    parser.add_argument("--clip", required=True)
    parser.add_argument("--settings", required=True, help="TunedSettings as JSON")
    args = parser.parse_args(argv)
    settings = TunedSettings(**json.loads(args.settings))
    clip_path = Path(args.clip)
    with ServiceClient(Path(args.model), settings) as client:
        ready = time.time()
        client.request(BenchClip(clip_path.name, 0.0, clip_path.read_bytes(), clip_path.suffix))
        first_result = time.time()
    print(json.dumps({"ready": ready, "first_result": first_result}))
