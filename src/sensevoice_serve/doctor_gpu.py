"""``sensevoice doctor``'s GPU checks: the NVIDIA driver against torch's CUDA, and each GPU with real work
(an allocation, matmuls in fp32, bf16 and fp16 checked against float64, free memory).

What a GPU supports is measured, not inferred from its compute capability: a bf16 matmul that raises, or
returns a wrong product, fails here before it fails a user's request.
"""

from __future__ import annotations

import platform
import re
import time
from collections.abc import Callable
from pathlib import Path

from .doctor import FAIL, OK, WARN, Check

# The oldest driver that runs every toolkit of a CUDA major version (minor version compatibility), by
# CUDA major version and system. Source: NVIDIA CUDA Toolkit Release Notes, table "CUDA Toolkit and Minimum
# Required Driver Version for CUDA Minor Version Compatibility" (11.x and 12.x), and NVIDIA's CUDA
# Compatibility guide, docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html, which
# gives ">= 580" for 13.x. Within a major version a newer toolkit may need its own, newer driver only for
# PTX JIT compilation (a GPU newer than the torch build), which torch's prebuilt kernels do not need.
MIN_DRIVER = {
    11: {"Linux": "450.80.02", "Windows": "452.39"},
    12: {"Linux": "525.60.13", "Windows": "527.41"},
    13: {"Linux": "580", "Windows": "580"},
}
PROC_DRIVER_VERSION = Path("/proc/driver/nvidia/version")
# Products of two n x n random matrices: small for the accuracy check (its float64 reference runs on the
# CPU), large enough for the speed figure to be the GPU's and not launch latency.
ACCURACY_SIZE, SPEED_SIZE, SPEED_REPEATS = 256, 2048, 10
# bf16 keeps 8 significant bits (relative rounding 2^-8 = 0.4 %), fp16 11: a working kernel stays far
# below this share of the product's largest value; a broken one returns noise, zeros, inf or NaN.
MAX_RELATIVE_ERROR = 0.02

Matmul = Callable[[object, str], tuple[float, float]]  # (device, dtype) -> (relative error, TFLOP/s)


def nvidia_driver_version() -> str | None:
    """The loaded driver's version: from NVML (nvidia-ml-py), else from the kernel module (Linux)."""
    return _nvml_driver_version() or proc_driver_version(PROC_DRIVER_VERSION)


def _nvml_driver_version() -> str | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else version
    except Exception:  # NVML raises its own error types when no driver is loaded
        return None


def proc_driver_version(path: Path) -> str | None:
    """From "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  ..." (or "Open Kernel Module for
    x86_64"), as the driver writes it."""
    try:
        text = path.read_text()
    except OSError:
        return None
    match = re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    return match.group(1) if match else None


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def check_driver(cuda: str | None, driver: str | None, system: str | None = None) -> Check:
    """The driver against the minimum for the CUDA version torch was built with."""
    system = system or platform.system()
    if cuda is None:
        return Check(
            "NVIDIA driver",
            WARN,
            f"{driver}, but torch is a CPU-only build: the GPU is not used",
            "install a CUDA build of torch (https://pytorch.org/get-started/locally/)",
        )
    minimum = MIN_DRIVER.get(_version_tuple(cuda)[0], {}).get(system)
    if driver is None:
        needed = f" >= {minimum}" if minimum else ""
        return Check(
            "NVIDIA driver",
            WARN,
            f"not found (torch is built for CUDA {cuda})",
            f"on a GPU machine, install the NVIDIA driver{needed}; nvidia-ml-py lets doctor read it anywhere",
        )
    if minimum is None:
        return Check("NVIDIA driver", WARN, f"{driver}; no minimum known here for CUDA {cuda} on {system}")
    if _version_tuple(driver) < _version_tuple(minimum):
        return Check(
            "NVIDIA driver",
            FAIL,
            f"{driver} is older than {minimum}, the minimum for torch's CUDA {cuda} on {system}",
            f"update the NVIDIA driver to {minimum} or newer, or install a torch built for an older CUDA",
        )
    return Check("NVIDIA driver", OK, f"{driver} (torch's CUDA {cuda} needs {minimum} or newer)")


def measure_matmul(device, dtype: str, speed_size: int = SPEED_SIZE) -> tuple[float, float]:
    """A real matmul in ``dtype`` on ``device``: its largest error relative to the product's largest value
    (against float64 on the CPU), and its speed in TFLOP/s on ``speed_size`` square matrices."""
    import torch

    from .device import torch_dtype

    kind = torch_dtype(dtype)
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(ACCURACY_SIZE, ACCURACY_SIZE, generator=generator) for _ in range(2))
    reference = a.double() @ b.double()
    product = (a.to(device, kind) @ b.to(device, kind)).double().cpu()
    error = float((product - reference).abs().max() / reference.abs().max())
    big = torch.randn(speed_size, speed_size, device=device, dtype=kind)
    (big @ big).sum().item()  # the first call loads the kernel
    started = time.perf_counter()
    for _ in range(SPEED_REPEATS):
        result = big @ big
    result.sum().item()  # waits for the GPU
    seconds = time.perf_counter() - started
    return error, 2 * speed_size**3 * SPEED_REPEATS / seconds / 1e12


def check_precision(name: str, device, dtype: str, picked: str, matmul: Matmul) -> Check:
    """``dtype`` on one GPU; a failure fails the check if it is the precision ``serve`` picks there."""
    status = FAIL if dtype == picked else WARN
    other = "fp16" if dtype == "bf16" else "bf16"
    hint = (
        f"serve picks {dtype} on this GPU: set --dtype {other} (or fp32) until the driver or torch is fixed"
        if dtype == picked
        else f"serve does not use {dtype} here unless asked to (it picks {picked})"
    )
    try:
        error, tflops = matmul(device, dtype)
    except Exception as error:  # CUDA errors come as RuntimeError and others: the dtype is unusable here
        return Check(name, status, f"matmul failed: {error}", hint)
    if not error <= MAX_RELATIVE_ERROR:
        return Check(name, status, f"wrong matmul: relative error {error:.2g} (a working one: < 0.01)", hint)
    picked_note = ", what serve picks" if dtype == picked else ""
    return Check(name, OK, f"matmul right to {error:.1e}, {tflops:.1f} TFLOP/s{picked_note}")


def check_gpu(device, matmul: Matmul | None = None) -> list[Check]:
    """One GPU: a real allocation and fp32 matmul, its free memory, then bf16 and fp16 (``matmul``:
    ``measure_matmul`` unless a test gives another)."""
    import torch

    from . import device as devices
    from .tuning import MIN_FREE_GPU_GIB

    matmul = matmul or measure_matmul
    device = torch.device(device)
    properties = torch.cuda.get_device_properties(device)
    name = f"gpu {device.index}"
    try:
        devices.probe_device(str(device))
        free, total = torch.cuda.mem_get_info(device)
        error, tflops = matmul(device, "fp32")
    except Exception as error:  # a listed GPU that cannot allocate or multiply is unusable
        return [Check(name, FAIL, f"{properties.name}: {error}", "check the driver, or use --device cpu")]
    value = (
        f"{properties.name}, compute {properties.major}.{properties.minor}, "
        f"{free / 2**30:.1f}/{total / 2**30:.1f} GiB free, fp32 matmul {tflops:.1f} TFLOP/s"
    )
    if not error <= MAX_RELATIVE_ERROR:
        return [
            Check(name, FAIL, f"{value}; wrong fp32 matmul (relative error {error:.2g})", "check the driver")
        ]
    if free < MIN_FREE_GPU_GIB * 2**30:
        hint = (
            f"under {MIN_FREE_GPU_GIB:g} GiB free: serve leaves this GPU out unless it is listed in --devices"
        )
        checks = [Check(name, WARN, value, hint)]
    else:
        checks = [Check(name, OK, value)]
    picked = "bf16" if properties.major >= 8 else "fp16"  # device.resolve_dtype's automatic choice
    return checks + [
        check_precision(f"{name} {dtype}", device, dtype, picked, matmul) for dtype in ("bf16", "fp16")
    ]
