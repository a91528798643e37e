"""The CPU runtimes ``int8_candidates.py`` compares, one factory each: ``factory(model_dir, threads)`` loads
the candidate (building its artifacts once, under ~/.cache/sensevoice-serve/candidates/) and returns its
``logits(features (B, T, 560), lengths (B,)) -> (B, T + 4, vocab)`` float32, language auto, with ITN.

Nothing heavy is imported at the top: each factory imports its own runtime, so that a fresh process that
loads one candidate holds only that one (torch is never imported by the onnxruntime and OpenVINO ones).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from anchor_engines import sherpa_onnx_model

from sensevoice_serve.audio import SAMPLE_RATE
from sensevoice_serve.bench.material import default_cache_dir, shared_speech_dir, speech_material
from sensevoice_serve.checkpoint import resolve_model
from sensevoice_serve.export import MODEL_FILENAME
from sensevoice_serve.features import FeatureExtractor
from sensevoice_serve.queries import language_row, textnorm_row
from sensevoice_serve.tokenizer import Tokenizer

Logits = Callable[[np.ndarray, np.ndarray], np.ndarray]
BASELINE = "baseline"
CALIBRATION_CLIPS, CALIBRATION_SECONDS = 20, 10.0


@dataclass
class Loaded:
    logits: Logits
    note: str = ""


def candidates_dir() -> Path:
    return default_cache_dir() / "candidates"


def export_key(model_dir: Path) -> str:
    """The directory name of the model's ONNX export (it hashes the weights file), built on first use."""
    return sherpa_onnx_model(model_dir).parent.name


def runtime_logits(runtime) -> Logits:
    """Batched logits of one of our runtimes: the torch model or ``runtimes.int8``."""

    def logits(features: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        batch = len(lengths)
        encoded, _ = runtime.encode(features, lengths, ["auto"] * batch, [True] * batch)
        return np.asarray(runtime.ctc.logits(encoded), dtype=np.float32)

    return logits


def torch_model(model_dir: Path, threads: int, dtype: str):
    """Our torch model in ``dtype``, on the CPU (bf16 too, which the product's API refuses there)."""
    import torch

    from sensevoice_serve.checkpoint import load_model

    torch.set_num_threads(threads)
    files = resolve_model(model_dir)
    return load_model(files, Tokenizer(files.tokenizer), torch.device("cpu"), getattr(torch, dtype))


def torch_fp32(model_dir: Path, threads: int) -> Loaded:
    return Loaded(runtime_logits(torch_model(model_dir, threads, "float32")), "the reference")


def torch_bf16(model_dir: Path, threads: int) -> Loaded:
    model = torch_model(model_dir, threads, "bfloat16")
    return Loaded(runtime_logits(model), "bf16 weights and activations; CTC head in fp32")


def torch_ao_dynamic(model_dir: Path, threads: int) -> Loaded:
    import warnings

    import torch

    model = torch_model(model_dir, threads, "float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantize_dynamic is deprecated in favour of torchao
        torch.ao.quantization.quantize_dynamic(model.encoder, {torch.nn.Linear}, torch.qint8, inplace=True)
    note = f"encoder Linear layers, per-tensor, engine {torch.backends.quantized.engine}; quantized at load"
    return Loaded(runtime_logits(model), note)


def torchao_dynamic(model_dir: Path, threads: int) -> Loaded:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    model = torch_model(model_dir, threads, "float32")
    quantize_(model.encoder, Int8DynamicActivationInt8WeightConfig())
    note = f"torchao {metadata.version('torchao')}, encoder Linear layers, eager; quantized at load"
    return Loaded(runtime_logits(model), note)


def ours_int8(model_dir: Path, threads: int) -> Loaded:
    from sensevoice_serve.runtimes import cpu_flags
    from sensevoice_serve.runtimes.int8 import load_int8_runtime
    from sensevoice_serve.runtimes.int8_cache import signed_weights

    files = resolve_model(model_dir)
    runtime = load_int8_runtime(files, Tokenizer(files.tokenizer), candidates_dir(), threads)
    weights = "s8" if signed_weights(cpu_flags()) else "u8"
    note = f"the product: {weights} per-channel weights, dynamic activations, pre-packed, no torch"
    return Loaded(runtime_logits(runtime), note)


def query_feed(features: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
    """The ONNX export's inputs (``export.py``)."""
    batch = len(lengths)
    return {
        "x": np.ascontiguousarray(features, dtype=np.float32),
        "x_length": np.asarray(lengths, dtype=np.int32),
        "language": np.full(batch, language_row("auto"), dtype=np.int32),
        "text_norm": np.full(batch, textnorm_row(True), dtype=np.int32),
    }


def onnxruntime_model(path: Path, threads: int, note: str) -> Loaded:
    """An ONNX file run by onnxruntime on the CPU, with its default (all) graph optimizations and the
    product's session options otherwise (``runtimes.int8``), so that only the model's form differs."""
    import onnxruntime

    from sensevoice_serve.runtimes.int8 import session_options

    options = session_options(threads)
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Loaded(lambda features, lengths: session.run(None, query_feed(features, lengths))[0], note)


def ort_sherpa_u8(model_dir: Path, threads: int) -> Loaded:
    note = "sherpa-onnx's form: u8 per-tensor weights, dynamic activations, one graph"
    return onnxruntime_model(sherpa_onnx_model(model_dir), threads, note)


def ort_fp32(model_dir: Path, threads: int) -> Loaded:
    return onnxruntime_model(sherpa_onnx_model(model_dir).with_name(MODEL_FILENAME), threads, "fp32 export")


def calibration_feeds(model_dir: Path) -> list[dict[str, np.ndarray]]:
    """``CALIBRATION_CLIPS`` clips spread evenly over the shared recordings, one feed each."""
    clip = round(CALIBRATION_SECONDS * SAMPLE_RATE)
    material = speech_material(shared_speech_dir(), 1e9)
    material = np.tile(material, clip // len(material) + 1)  # at least one clip long
    features = FeatureExtractor.from_model_dir(model_dir, "cpu")
    starts = np.linspace(0, len(material) - clip, CALIBRATION_CLIPS).astype(int)
    return [query_feed(*features([material[start : start + clip]])) for start in starts]


def build_static_qdq(source: Path, target: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    """s8 per-channel weights and u8 activations with calibrated (MinMax) scales, MatMul only, QDQ form."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self.pending = iter(feeds)

        def get_next(self) -> dict | None:
            return next(self.pending, None)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_suffix(".partial.onnx")
    started = time.perf_counter()
    quantize_static(source, staging, Feeds(), quant_format=QuantFormat.QDQ, per_channel=True,
                    op_types_to_quantize=["MatMul"], activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)  # fmt: skip
    staging.rename(target)
    manifest = {"clips": len(feeds), "seconds": round(time.perf_counter() - started, 1)}
    target.with_suffix(".json").write_text(json.dumps(manifest))


def ort_static_qdq(model_dir: Path, threads: int) -> Loaded:
    target = candidates_dir() / export_key(model_dir) / "model.qdq.onnx"
    if not target.is_file():
        source = sherpa_onnx_model(model_dir).with_name(MODEL_FILENAME)
        build_static_qdq(source, target, calibration_feeds(model_dir))
    built = json.loads(target.with_suffix(".json").read_text())
    calibration = (
        f"MinMax over {built['clips']} x {CALIBRATION_SECONDS:g} s clips in {built['seconds']:.0f} s"
    )
    note = f"s8 per-channel weights, u8 static activations ({calibration}), MatMul only"
    return onnxruntime_model(target, threads, note)


def openvino_model(path: Path, threads: int, config: dict, note: str) -> Loaded:
    """``path`` compiled by OpenVINO for the CPU; the note says which inference precision it chose."""
    import openvino

    core = openvino.Core()
    compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads, **config})
    precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    kernels = layer_precisions(compiled, "FullyConnected")
    request = compiled.create_infer_request()

    def logits(features: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        request.infer(query_feed(features, lengths))
        return request.get_output_tensor(0).data.copy()

    return Loaded(logits, f"{note}; inference precision {precision}, Linear layers run in {kernels}")


def layer_precisions(compiled, layer_type: str) -> str:
    """The precisions the compiled graph's layers of ``layer_type`` actually run in."""
    found = set()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == layer_type:
            found.add(info["runtimePrecision"].astype(str))
    return ", ".join(sorted(found)) or "none"


def openvino_default(model_dir: Path, threads: int) -> Loaded:
    path = sherpa_onnx_model(model_dir).with_name(MODEL_FILENAME)
    return openvino_model(path, threads, {}, "fp32 ONNX export, default config")


def openvino_f32(model_dir: Path, threads: int) -> Loaded:
    path = sherpa_onnx_model(model_dir).with_name(MODEL_FILENAME)
    return openvino_model(path, threads, {"INFERENCE_PRECISION_HINT": "f32"}, "fp32 ONNX export, f32 asked")


def openvino_int8_ir(model_dir: Path) -> Path:
    """The fp32 export with int8 weights by NNCF's data-free weight compression, saved as OpenVINO IR."""
    target = candidates_dir() / export_key(model_dir) / "openvino-int8" / "model.xml"
    if not target.is_file():
        import nncf
        import openvino

        source = openvino.Core().read_model(str(sherpa_onnx_model(model_dir).with_name(MODEL_FILENAME)))
        compressed = nncf.compress_weights(source, mode=nncf.CompressWeightsMode.INT8_ASYM)
        openvino.save_model(compressed, str(target), compress_to_fp16=False)
    return target


def openvino_int8_weights(model_dir: Path, threads: int) -> Loaded:
    note = "NNCF int8 asymmetric per-channel weights, default config"
    return openvino_model(openvino_int8_ir(model_dir), threads, {}, note)


def openvino_int8_f32(model_dir: Path, threads: int) -> Loaded:
    """Int8 weights with the layers that stay in floating point run in f32: where the speed comes from."""
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    return openvino_model(openvino_int8_ir(model_dir), threads, config, "NNCF int8 weights, f32 asked")


def openvino_int8_cached(model_dir: Path, threads: int) -> Loaded:
    """As ``openvino_int8_weights``, loading the compiled model from OpenVINO's cache once it is there."""
    cache = candidates_dir() / export_key(model_dir) / "openvino-compiled"
    note = "the same, compiled model cached (CACHE_DIR)"
    return openvino_model(openvino_int8_ir(model_dir), threads, {"CACHE_DIR": str(cache)}, note)


def baseline(model_dir: Path, threads: int) -> Loaded:
    """No model: the fresh process's own footprint."""
    return Loaded(lambda features, lengths: features)


FACTORIES: dict[str, Callable[[Path, int], Loaded]] = {
    "torch fp32": torch_fp32,
    "torch bf16": torch_bf16,
    "torch int8 dynamic (torch.ao)": torch_ao_dynamic,
    "torch int8 dynamic (torchao)": torchao_dynamic,
    "onnxruntime s8 (ours)": ours_int8,
    "onnxruntime u8 (sherpa-onnx export)": ort_sherpa_u8,
    "onnxruntime fp32": ort_fp32,
    "onnxruntime static QDQ int8": ort_static_qdq,
    "openvino default": openvino_default,
    "openvino f32": openvino_f32,
    "openvino int8 weights (nncf)": openvino_int8_weights,
    "openvino int8 weights (nncf) f32": openvino_int8_f32,
    "openvino int8 weights (nncf) + model cache": openvino_int8_cached,
}
