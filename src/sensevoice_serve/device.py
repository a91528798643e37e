"""Pick a device that really works and the precision that suits it."""

from __future__ import annotations

import logging

import torch

from .errors import InvalidOption

logger = logging.getLogger(__name__)

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "int8": torch.int8,  # the int8 runtime (runtimes/int8.py): CPU only
}


def probe_device(device: torch.device) -> None:
    """Allocate and multiply on ``device``; raises when it is listed but unusable (driver, OOM, bad arch)."""
    a = torch.randn(64, 64, device=device)
    (a @ a).sum().item()


def cuda_devices() -> list[torch.device]:
    return (
        [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto``: the first GPU on which a real allocation and matmul succeed, else the CPU."""
    if spec != "auto":
        try:
            device = torch.device(spec)
        except RuntimeError as error:
            raise InvalidOption(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N") from error
        if device.type == "cuda":
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
    return torch.device("cpu")


def refuse_half_precision_on_cpu(spec: str) -> None:
    """fp16 and bf16 only cost on a CPU: slower than fp32 there, and bf16 changes the transcripts."""
    if DTYPES.get(spec) in (torch.float16, torch.bfloat16):
        raise InvalidOption(
            f"dtype {spec} is for GPUs: on the CPU it runs slower than fp32 and bf16 changes the "
            "transcripts; use --dtype fp32 (or auto) with the CPU"
        )


def refuse_int8_on_gpu(spec: str, device: str) -> None:
    """The int8 runtime is onnxruntime on the CPU; a GPU runs bf16 or fp16 faster than int8 would gain."""
    if DTYPES.get(spec) == torch.int8 and device.startswith("cuda"):
        raise InvalidOption(
            f"dtype int8 runs on the CPU only, not on {device}: use --device cpu with int8, "
            "or bf16 / fp16 (or auto) on the GPU"
        )


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on compute capability >= 8.0, fp16 on older GPUs; on the CPU int8 where it was
    measured faster (``runtimes.int8_preferred``), else fp32.

    Half precision on the CPU is refused rather than run slowly with changed tokens, int8 on a GPU too.
    """
    if spec == "auto":
        if device.type != "cuda":
            from .runtimes import int8_preferred

            return torch.int8 if int8_preferred() else torch.float32
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    if spec not in DTYPES:
        raise InvalidOption(f"unknown dtype {spec!r}: use auto, fp32, fp16, bf16 or int8 (CPU)")
    if device.type == "cpu":
        refuse_half_precision_on_cpu(spec)
    refuse_int8_on_gpu(spec, str(device))
    return DTYPES[spec]
