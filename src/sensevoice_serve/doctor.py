"""``sensevoice doctor``: can this machine run SenseVoiceSmall well, and what to change if not.

Every check is its own function returning ``Check``s, so a test can inject each fault alone.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import SenseVoiceError
from .runtimes import cpu_flags

OK, WARN, FAIL = "ok", "warn", "fail"
REQUIRED_PACKAGES = ("torch", "numpy", "av", "sentencepiece", "soundfile", "fastapi", "uvicorn", "silero-vad")
# (label, container format, encoder) for a real round trip through PyAV's bundled FFmpeg.
CODECS = (
    ("mp3", "mp3", "libmp3lame"),
    ("aac", "adts", "aac"),
    ("opus", "ogg", "libopus"),
    ("vorbis", "ogg", "vorbis"),
    ("flac", "flac", "flac"),
    ("pcm", "wav", "pcm_s16le"),
)
MIN_FREE_DISK_GIB, WARN_FREE_DISK_GIB = 1.0, 2.0  # the real checkpoint is ~0.94 GB


@dataclass
class Check:
    name: str
    status: str
    value: str
    hint: str = ""


def check_python_and_packages() -> list[Check]:
    checks = [Check("python", OK, platform.python_version())]
    for package in REQUIRED_PACKAGES:
        try:
            checks.append(Check(package, OK, importlib.metadata.version(package)))
        except importlib.metadata.PackageNotFoundError:
            checks.append(Check(package, FAIL, "not installed", f"pip install {package}"))
    return checks


def check_torch_build() -> list[Check]:
    """The torch build, and the NVIDIA driver against the minimum for its CUDA (when either is there)."""
    import torch

    from .doctor_gpu import check_driver, nvidia_driver_version

    cuda = torch.version.cuda
    value = f"torch {torch.__version__}, " + (f"CUDA {cuda}" if cuda else "CPU-only build")
    checks = [Check("torch build", OK, value)]
    driver = nvidia_driver_version()
    if cuda is not None or driver is not None:
        checks.append(check_driver(cuda, driver))
    return checks


def _timed_probe(device) -> float:
    from .device import probe_device

    started = time.perf_counter()
    probe_device(device)
    return (time.perf_counter() - started) * 1000


def check_devices() -> list[Check]:
    """The CPU, then each GPU torch sees, with real work (``doctor_gpu.check_gpu``)."""

    from .device import cuda_devices
    from .doctor_gpu import check_gpu

    checks = [Check("cpu matmul", OK, f"{_timed_probe('cpu'):.1f} ms")]
    devices = cuda_devices()
    if not devices:
        checks.append(
            Check(
                "gpu",
                WARN,
                "no CUDA GPU",
                "the CPU path works (about 10-15x real time on 2 cores); a GPU is faster",
            )
        )
        return checks
    for device in devices:
        checks += check_gpu(device)
    return checks


def check_cpu() -> list[Check]:
    cores = len(os.sched_getaffinity(0))
    flags = cpu_flags()
    wanted = [flag for flag in ("avx2", "avx512f", "amx_tile", "asimd", "sve") if flag in flags]
    status = WARN if cores < 2 else OK
    hint = "one core: expect slow transcription" if cores < 2 else ""
    return [
        Check(
            "cpu",
            status,
            f"{cores} cores, {platform.machine()}, {' '.join(wanted) or 'no SIMD flags found'}",
            hint,
        )
    ]


def _round_trip(container_format: str, encoder: str) -> float:
    """Encode a 0.5 s tone with PyAV, decode it with our decoder; the decoded seconds."""
    import av

    from .audio import decode_audio

    buffer = io.BytesIO()
    rate = 48000 if encoder == "libopus" else 16000
    with av.open(buffer, "w", format=container_format) as container:
        # FFmpeg marks its native Vorbis encoder experimental; it is the one PyAV's wheels ship.
        stream = container.add_stream(encoder, rate=rate, options={"strict": "experimental"})
        samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(rate // 2) / rate)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(samples[None], format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return decode_audio(buffer.getvalue()).duration


def check_codecs(round_trip: Callable[[str, str], float] = _round_trip) -> list[Check]:
    checks = []
    for label, container_format, encoder in CODECS:
        try:
            seconds = round_trip(container_format, encoder)
            ok = abs(seconds - 0.5) < 0.1
            checks.append(Check(f"codec {label}", OK if ok else FAIL, f"decoded {seconds:.2f} s of 0.50 s"))
        except Exception as error:  # any failure means users' files in this format will fail too
            checks.append(
                Check(f"codec {label}", FAIL, str(error), "reinstall PyAV: pip install --force-reinstall av")
            )
    ffmpeg = shutil.which("ffmpeg")
    checks.append(Check("system ffmpeg", OK, ffmpeg or "absent (not needed: PyAV bundles FFmpeg)"))
    return checks


def check_model(model_dir: str) -> list[Check]:
    import torch

    from .checkpoint import REQUIRED_FILES, check_state_dict, load_state_dict, model_dimensions, resolve_model
    from .model import SenseVoiceSmall
    from .tokenizer import Tokenizer

    directory = Path(model_dir)
    present = {name: directory / name for name in REQUIRED_FILES if (directory / name).is_file()}
    sizes = ", ".join(f"{name} {path.stat().st_size / 2**20:.1f} MB" for name, path in present.items())
    missing = [name for name in REQUIRED_FILES if name not in present]
    if missing:
        return [
            Check("model files", FAIL, f"missing {', '.join(missing)}", "download the whole model directory")
        ]
    checks = [Check("model files", OK, sizes)]
    try:
        files = resolve_model(directory)
        tokenizer = Tokenizer(files.tokenizer)
        tokenizer.require_tags()
        checks.append(Check("tokenizer", OK, f"{tokenizer.vocab_size} pieces, {len(tokenizer.tag_ids)} tags"))
        with torch.device("meta"):
            expected = SenseVoiceSmall(model_dimensions(files, tokenizer.vocab_size)).state_dict()
        check_state_dict(expected, load_state_dict(files.weights), files.weights)
        checks.append(_weights_check(len(expected), files.random_weights))
    except SenseVoiceError as error:
        checks.append(Check("model", FAIL, str(error), "re-download the model directory"))
    return checks


def _weights_check(tensor_count: int, random_weights: bool) -> Check:
    matching = f"{tensor_count} tensors match config.yaml"
    if not random_weights:
        return Check("weights", OK, matching)
    return Check(
        "weights",
        WARN,
        f"RANDOM weights (a make-test-model checkpoint): transcripts are meaningless; {matching}",
        "for real transcripts use the real checkpoint: ModelScope iic/SenseVoiceSmall or "
        "Hugging Face FunAudioLLM/SenseVoiceSmall",
    )


def check_disk(path: Path, disk_usage: Callable = shutil.disk_usage) -> list[Check]:
    free_gib = disk_usage(path).free / 2**30
    status = FAIL if free_gib < MIN_FREE_DISK_GIB else WARN if free_gib < WARN_FREE_DISK_GIB else OK
    hint = "" if status == OK else "the model needs about 1 GB: free some space or set a cache elsewhere"
    return [Check("free disk", status, f"{free_gib:.1f} GiB free at {path}", hint)]


def run_checks(model: str | None) -> list[Check]:
    checks = (
        check_python_and_packages() + check_torch_build() + check_devices() + check_cpu() + check_codecs()
    )
    if model:
        checks += check_model(model)
    disk_path = Path(model) if model and Path(model).exists() else Path.home()
    return checks + check_disk(disk_path)


def verdict(checks: list[Check], devices: list) -> str:
    """One line: can ``serve`` run here, and on what."""
    failed = [check.name for check in checks if check.status == FAIL]
    if failed:
        return f"NOT READY: {len(failed)} check(s) failed ({', '.join(failed)}); each says how to fix it"
    warned = sum(check.status == WARN for check in checks)
    where = ", ".join(f"{tuned.device} {tuned.dtype}" for tuned in devices)
    gpus = sum(tuned.device.startswith("cuda") for tuned in devices)
    place = f"{gpus} GPU(s)" if gpus else "the CPU"
    return f"READY: serve runs on {place}: {where}" + (f" ({warned} warning(s) above)" if warned else "")


def _doctor_command(args: argparse.Namespace) -> int:
    from .tuning import probe_machine, resolve_device_settings

    started = time.perf_counter()
    checks = run_checks(args.model)
    devices = resolve_device_settings({})
    failed = any(check.status == FAIL for check in checks)
    if args.json:
        report = {
            "checks": [asdict(check) for check in checks],
            "settings": asdict(devices[0]),
            "devices": [asdict(tuned) for tuned in devices],
            "machine": asdict(probe_machine()),
            "ok": not failed,
            "verdict": verdict(checks, devices),
            "seconds": round(time.perf_counter() - started, 2),
        }
        print(json.dumps(report, indent=2))
    else:
        _print_table(checks, devices)
    return 1 if failed else 0


def _print_table(checks: list[Check], devices: list) -> None:
    from rich.console import Console
    from rich.table import Table

    colours = {OK: "green", WARN: "yellow", FAIL: "red"}
    table = Table(title="sensevoice doctor")
    for column in ("check", "status", "value", "fix"):
        table.add_column(column)
    for check in checks:
        table.add_row(check.name, f"[{colours[check.status]}]{check.status}[/]", check.value, check.hint)
    console = Console(file=sys.stdout)
    console.print(table)
    for tuned in devices:
        settings = ", ".join(f"{k} {v}" for k, v in asdict(tuned).items())
        console.print(f"chosen settings ({tuned.source}): {settings}")
    console.print(f"verdict: {verdict(checks, devices)}", highlight=False)


def register(commands) -> None:
    parser = commands.add_parser("doctor", help="check this machine: GPU, drivers, codecs, model directory")
    parser.add_argument("--model", help="also check this model directory")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=_doctor_command)
