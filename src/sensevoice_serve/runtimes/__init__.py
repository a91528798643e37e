"""The model behind one small interface, whichever runtime executes it.

A runtime turns a padded batch of features into encoder frames (``encode``) and has a CTC head that turns
frames into logits (``ctc.logits``). ``pipeline.SenseVoice`` runs whichever was loaded; the scheduler, the
VAD, decoding and results never know which one it is.

- torch (``model.SenseVoiceSmall``): fp32, bf16 or fp16, on the CPU or a GPU; fp32 is exact (funasr parity).
- int8 (``runtimes.int8``): onnxruntime with int8 weights and per-batch int8 activations, CPU only, built
  from ``model.pt`` on first use and cached (``runtimes.int8_cache``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..checkpoint import ModelFiles
    from ..tokenizer import Tokenizer

INT8 = "int8"  # the precision that names the int8 runtime: weights in int8, activations quantized per batch
# A core that multiplies int8 in one instruction (VNNI, or Arm's dot product) runs int8 models 2-3x
# faster than float32; without one int8 gains far less.
INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "asimddp")


class CTCLogits(Protocol):
    """A runtime's CTC head (``model.CTCHead``, or the int8 runtime's); decoding scores frames with it."""

    def logits(self, encoded: Any, rows: Any = None) -> Any:
        """Float32 logits of encoder frames (..., d), over the vocabulary or its ``rows`` only: torch
        tensors on the model's device for the torch runtime, numpy arrays for the int8 one."""
        ...


class Runtime(Protocol):
    ctc: CTCLogits

    def encode(
        self, features: Any, lengths: Any, languages: Sequence[str], use_itn: Sequence[bool]
    ) -> tuple[Any, Any]:
        """Float32 features (B, T, 560) and lengths (B,) -> encoder frames (B, T + 4, d) and their lengths
        (numpy in and out for the int8 runtime; the torch one also takes numpy features on the CPU)."""
        ...


def cpu_flags() -> set[str]:
    """This CPU's instruction-set flags (x86 ``flags``, Arm ``Features``) in /proc/cpuinfo, or none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {
        flag
        for line in text.splitlines()
        if line.startswith(("flags", "Features"))
        for flag in line.split()[2:]
    }


def int8_available() -> bool:
    """Whether the int8 runtime can run here: onnxruntime and onnx (which builds the model) are installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def int8_preferred(flags: set[str] | None = None) -> bool:
    """The rule behind ``dtype auto`` on a CPU: int8 where it was measured faster than fp32 (an int8
    dot-product instruction), fp32 elsewhere. ``sensevoice bench --tune`` measures both on the machine."""
    flags = cpu_flags() if flags is None else flags
    return int8_available() and any(flag in flags for flag in INT8_DOT_PRODUCT_FLAGS)


def load_runtime(
    files: ModelFiles,
    tokenizer: Tokenizer,
    device: str,
    dtype: str,
    cache_dir: str | Path | None = None,
    threads: int | None = None,
) -> Runtime:
    """The torch model in ``dtype``, or the int8 runtime (built into ``cache_dir`` on first use), computing
    on ``threads`` threads (torch's are process-wide; None leaves torch's as they are)."""
    if dtype == INT8:
        from .int8 import load_int8_runtime

        return load_int8_runtime(files, tokenizer, cache_dir, threads)
    import torch

    from ..checkpoint import load_model
    from ..device import torch_dtype

    if threads is not None:
        torch.set_num_threads(threads)
    return load_model(files, tokenizer, torch.device(device), torch_dtype(dtype))
