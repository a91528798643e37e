"""Pick a device that really works and the precision that suits it.

Devices and precisions are names ("cpu", "cuda:1"; "fp32", "int8"): the int8 runtime runs without torch,
so torch is imported only to look at a GPU or to load the torch runtime (``torch_dtype``).
"""

from __future__ import annotations

import ctypes.util
import functools
import logging
import os
import re
import sys
from typing import TYPE_CHECKING

from .errors import InvalidOption

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DTYPES = {
    "fp32": "fp32",
    "float32": "fp32",
    "fp16": "fp16",
    "float16": "fp16",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "int8": "int8",  # the int8 runtime (runtimes/int8.py): CPU only
}
HALF_PRECISION = ("fp16", "bf16")
DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")
# Where a CUDA driver shows itself (Linux, containers given GPUs, WSL's GPU bridge); the driver's library
# is asked for too. Without any of them torch can see no GPU, and finding that out needs no torch import
# (1.2 s and 230 MB on a 2-core machine).
NVIDIA_DRIVER_MARKS = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a precision name; int8 names a runtime, not a torch dtype, and is refused."""
    import torch

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if DTYPES.get(name) not in dtypes:
        raise InvalidOption(f"dtype {name!r} is not a torch precision: use fp32, fp16 or bf16")
    return dtypes[DTYPES[name]]


def nvidia_driver_present() -> bool:
    """Whether this machine might have a CUDA GPU: a driver is loaded, or torch is imported anyway."""
    return "torch" in sys.modules or _driver_installed()


@functools.cache
def _driver_installed() -> bool:
    """Once per process: finding the driver's library runs ``ldconfig``, and a driver does not come and go."""
    return (
        any(os.path.exists(mark) for mark in NVIDIA_DRIVER_MARKS)
        or ctypes.util.find_library("cuda") is not None
    )


def probe_device(device: str) -> None:
    """Allocate and multiply on ``device``; raises when it is listed but unusable (driver, OOM, bad arch)."""
    import torch

    a = torch.randn(64, 64, device=device)
    (a @ a).sum().item()


def cuda_devices() -> list[str]:
    """Every GPU torch sees, as "cuda:N"; torch is not imported where no NVIDIA driver is loaded."""
    if not nvidia_driver_present():
        return []
    import torch

    return (
        [f"cuda:{index}" for index in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )


def resolve_device(spec: str = "auto") -> str:
    """``auto``: the first GPU on which a real allocation and matmul succeed, else the CPU."""
    if spec != "auto":
        if not DEVICE_PATTERN.match(spec):
            raise InvalidOption(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N")
        if spec == "cpu":
            return spec
        device = spec if ":" in spec else "cuda:0"
        try:
            probe_device(device)
        except Exception as error:  # CUDA errors come as RuntimeError, AssertionError and others
            raise InvalidOption(f"device {spec} is not usable: {error}") from error
        return device
    for device in cuda_devices():
        try:
            probe_device(device)
            return device
        except Exception as error:  # a broken GPU must not stop the CPU path
            logger.warning("skipping %s: %s", device, error)
    return "cpu"


def refuse_half_precision_on_cpu(spec: str) -> None:
    """fp16 and bf16 only cost on a CPU: slower than fp32 there, and bf16 changes the transcripts."""
    if DTYPES.get(spec) in HALF_PRECISION:
        raise InvalidOption(
            f"dtype {spec} is for GPUs: on the CPU it runs slower than fp32 and bf16 changes the "
            "transcripts; use --dtype fp32 (or auto) with the CPU"
        )


def refuse_int8_on_gpu(spec: str, device: str) -> None:
    """The int8 runtime is onnxruntime on the CPU; a GPU runs bf16 or fp16 faster than int8 would gain."""
    if DTYPES.get(spec) == "int8" and device.startswith("cuda"):
        raise InvalidOption(
            f"dtype int8 runs on the CPU only, not on {device}: use --device cpu with int8, "
            "or bf16 / fp16 (or auto) on the GPU"
        )


def resolve_dtype(spec: str, device: str) -> str:
    """``auto``: bf16 on compute capability >= 8.0, fp16 on older GPUs; on the CPU int8 where it was
    measured faster (``runtimes.int8_preferred``), else fp32.

    Half precision on the CPU is refused rather than run slowly with changed tokens, int8 on a GPU too.
    """
    if spec == "auto":
        if not device.startswith("cuda"):
            from .runtimes import int8_preferred

            return "int8" if int8_preferred() else "fp32"
        import torch

        major, _ = torch.cuda.get_device_capability(device)
        return "bf16" if major >= 8 else "fp16"
    if spec not in DTYPES:
        raise InvalidOption(f"unknown dtype {spec!r}: use auto, fp32, fp16, bf16 or int8 (CPU)")
    if device == "cpu":
        refuse_half_precision_on_cpu(spec)
    refuse_int8_on_gpu(spec, device)
    return DTYPES[spec]
