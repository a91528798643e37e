"""Build the int8 model from ``model.pt``: two ONNX graphs, int8 weights, optimized and pre-packed here.

- ``encoder``: features, lengths and the language / text-norm query rows in, encoder frames out (the CTC head
  is a separate graph, so decoding scores only the frames it needs, as with the torch model);
- ``ctc``: encoder frames in, logits out.

Weights are quantized per output channel, activations per batch (onnxruntime's dynamic quantization of
MatMul). Signed weights where the CPU has an int8 dot-product instruction (VNNI): they run fastest there.
Without one, onnxruntime multiplies u8 x s8 with 16-bit intermediate sums that can saturate, so weights
are unsigned, as sherpa-onnx's int8 export does. Each graph is then optimized once by onnxruntime and saved
with its weights pre-packed for this CPU's kernels in a data file beside it, which the runtime maps into
memory instead of copying and re-packing (fast to load, and the weights are held once).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..export import INPUT_NAMES, encoder_graph, example_batch, export_graph
from .int8_cache import CTC, CTC_INPUT, CTC_OUTPUT, ENCODER, ENCODER_OUTPUT, GRAPH_FILES

if TYPE_CHECKING:
    from ..checkpoint import ModelFiles
    from ..tokenizer import Tokenizer


class CTCGraph(nn.Module):
    """The CTC head as a MatMul with a constant weight, the form onnxruntime's dynamic quantization takes."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().t().contiguous(), requires_grad=False)
        self.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.matmul(frames, self.weight) + self.bias


def build_int8_model(files: ModelFiles, tokenizer: Tokenizer, directory: Path, signed_weights: bool) -> None:
    """Write ``encoder.onnx`` + ``encoder.data`` and ``ctc.onnx`` + ``ctc.data`` into ``directory``."""
    from ..checkpoint import load_model

    model = load_model(files, tokenizer, torch.device("cpu"), torch.float32)
    encoder_axes = {name: {0: "N"} for name in INPUT_NAMES} | {
        "x": {0: "N", 1: "T"},
        ENCODER_OUTPUT: {0: "N", 1: "T4"},
    }
    graphs = {
        ENCODER: (
            encoder_graph(model),
            example_batch(files.frontend.feature_dim),
            INPUT_NAMES,
            ENCODER_OUTPUT,
            encoder_axes,
        ),
        CTC: (
            CTCGraph(model.ctc.ctc_lo).eval(),
            (torch.randn(7, model.dims.output_size),),
            [CTC_INPUT],
            CTC_OUTPUT,
            {CTC_INPUT: {0: "R"}, CTC_OUTPUT: {0: "R"}},
        ),
    }
    for name, (graph, example, inputs, output, axes) in graphs.items():
        export_graph(graph, example, directory / f"{name}.float.onnx", inputs, [output], axes)
    del model, graphs  # the float32 weights, before quantization holds its own copy: a lower peak
    gc.collect()
    for name, (onnx_file, data_file) in GRAPH_FILES.items():
        float_path, int8_path = directory / f"{name}.float.onnx", directory / f"{name}.int8.onnx"
        quantize_graph(float_path, int8_path, signed_weights)
        float_path.unlink()
        optimize_graph(int8_path, directory / onnx_file, data_file)
        int8_path.unlink()


def quantize_graph(source: Path, target: Path, signed_weights: bool) -> None:
    """Int8 weights per output channel for every MatMul with a constant weight; activations per batch."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_quantizer():
        quantize_dynamic(
            model_input=source,
            model_output=target,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            weight_type=QuantType.QInt8 if signed_weights else QuantType.QUInt8,
        )


def optimize_graph(source: Path, target: Path, data_file: str) -> None:
    """onnxruntime's graph optimizations, saved with the weights pre-packed for this CPU in ``data_file``."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    # It warns that the saved graph suits this CPU only: the cache key includes the CPU's instruction sets.
    options.log_severity_level = 3
    options.optimized_model_filepath = str(target)
    for key, value in (
        ("session.optimized_model_external_initializers_file_name", data_file),
        ("session.optimized_model_external_initializers_min_size_in_bytes", "1024"),
        ("session.save_external_prepacked_constant_initializers", "1"),
    ):
        options.add_session_config_entry(key, value)
    onnxruntime.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """quantize_dynamic logs on the root logger: its optional pre-processing advised on every call, and a
    line per tensor it leaves alone. A filter on the root logger sees only what is logged on it directly,
    so every named logger's records (other threads' included) still pass."""
    root = logging.getLogger()
    root.addFilter(_errors_only)
    try:
        yield
    finally:
        root.removeFilter(_errors_only)
