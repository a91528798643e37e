"""ONNX export in the form sherpa-onnx's SenseVoice recognizer loads (``OfflineRecognizer.from_sense_voice``).

What sherpa-onnx expects (its ``offline-sense-voice-model.cc`` and ``offline-recognizer-sense-voice-impl.h``):

- inputs ``x`` (N, T, 560) float32 LFR+CMVN features zero-padded, ``x_length`` (N,) int32 frame counts,
  ``language`` (N,) int32 and ``text_norm`` (N,) int32 query-embedding rows; output ``logits``
  (N, T + 4, vocab) float32, which it decodes greedily (argmax, so logits need no softmax);
- the four query frames in the order language, event, emotion, text-norm, as the model was trained;
- metadata it reads: ``vocab_size``, ``blank_id``, ``lfr_window_size``, ``lfr_window_shift``,
  ``normalize_samples`` (0: it scales float samples to the int16 range, as kaldi does), ``neg_mean`` and
  ``inv_stddev`` (the am.mvn vectors, comma-separated), ``lang_*`` and ``with_itn`` / ``without_itn`` row
  ids; a ``comment`` containing "Nano" would switch it to a different model family, so ours never does;
- ``tokens.txt`` beside the model: one "piece id" line per vocabulary entry.

The int8 model quantizes MatMul weights to unsigned 8 bits, as sherpa-onnx's own export does: it reports
that C++ onnxruntime gives wrong results for this model with signed (QInt8) weights.

The CPU int8 runtime (``runtimes/int8_build.py``) traces its own graphs with ``export_graph``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ModelLoadError

if TYPE_CHECKING:
    from torch import nn

    from .model import SenseVoiceSmall
    from .tokenizer import Tokenizer

MODEL_FILENAME = "model.onnx"
INT8_MODEL_FILENAME = "model.int8.onnx"
TOKENS_FILENAME = "tokens.txt"
# Opset 17 has LayerNormalization and is read by every onnxruntime sherpa-onnx has shipped since 2023.
OPSET = 17
INPUT_NAMES = ["x", "x_length", "language", "text_norm"]
OUTPUT_NAMES = ["logits"]
DYNAMIC_AXES = {**{name: {0: "N"} for name in INPUT_NAMES}, "x": {0: "N", 1: "T"}, "logits": {0: "N", 1: "T"}}
SHERPA_LANGUAGES = ("auto", "zh", "en", "yue", "ja", "ko", "nospeech")


def encoder_graph(model: SenseVoiceSmall) -> nn.Module:
    """The encoder as ONNX runs it: features and int32 lengths and query rows in, encoder frames out."""
    # Imported here, like everything torch, so that the CLI can register this command without torch.
    import torch
    from torch import nn

    class EncoderGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self, x: torch.Tensor, x_length: torch.Tensor, language: torch.Tensor, text_norm: torch.Tensor
        ) -> torch.Tensor:
            encoded, _ = self.model.encode_rows(x, x_length.long(), language.long(), text_norm.long())
            return encoded

    return EncoderGraph().eval()


def sherpa_graph(model: SenseVoiceSmall) -> nn.Module:
    """Our model behind sherpa-onnx's calling convention: per-utterance query rows in, raw CTC logits out."""
    import torch
    from torch import nn

    class SherpaSenseVoiceGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder_graph(model)

        def forward(
            self, x: torch.Tensor, x_length: torch.Tensor, language: torch.Tensor, text_norm: torch.Tensor
        ) -> torch.Tensor:
            return model.ctc.logits(self.encoder(x, x_length, language, text_norm))

    return SherpaSenseVoiceGraph().eval()


@dataclass(frozen=True)
class ExportedModel:
    model: Path
    int8_model: Path | None
    tokens: Path
    random_weights: bool


def sherpa_metadata(tokenizer: Tokenizer, cmvn_path: Path, lfr_m: int, lfr_n: int, random: bool) -> dict:
    from .features import load_cmvn
    from .queries import language_row, textnorm_row

    shift, scale = load_cmvn(cmvn_path)
    return {
        "model_type": "sense_voice_ctc",
        "version": "2",  # sherpa-onnx's marker for unsigned-int8 weights in the quantized file
        "comment": "SenseVoiceSmall exported by sensevoice-serve",
        "random_weights": int(random),
        "vocab_size": tokenizer.vocab_size,
        "blank_id": 0,
        "lfr_window_size": lfr_m,
        "lfr_window_shift": lfr_n,
        "normalize_samples": 0,
        "neg_mean": ",".join(repr(float(v)) for v in shift.tolist()),
        "inv_stddev": ",".join(repr(float(v)) for v in scale.tolist()),
        **{f"lang_{name}": language_row(name) for name in SHERPA_LANGUAGES},
        "with_itn": textnorm_row(True),
        "without_itn": textnorm_row(False),
    }


def write_tokens(tokenizer: Tokenizer, path: Path) -> None:
    lines = (f"{tokenizer.piece(token_id)} {token_id}\n" for token_id in range(tokenizer.vocab_size))
    path.write_text("".join(lines), encoding="utf-8")


def export_onnx(model_dir: str | Path, output_dir: str | Path, int8: bool = True) -> ExportedModel:
    """Write model.onnx (float32), optionally model.int8.onnx, and tokens.txt into ``output_dir``."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as error:
        raise ModelLoadError(f"ONNX export needs {error.name}: pip install onnx onnxruntime") from error
    import torch

    from .checkpoint import load_model, resolve_model
    from .tokenizer import Tokenizer

    files = resolve_model(model_dir)
    tokenizer = Tokenizer(files.tokenizer)
    tokenizer.require_tags()
    model = load_model(files, tokenizer, torch.device("cpu"), torch.float32)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    model_path = output / MODEL_FILENAME

    example = example_batch(files.frontend.feature_dim)
    export_graph(sherpa_graph(model), example, model_path, INPUT_NAMES, OUTPUT_NAMES, DYNAMIC_AXES)

    proto = onnx.load(str(model_path))
    del proto.metadata_props[:]
    frontend = files.frontend
    metadata = sherpa_metadata(tokenizer, files.cmvn, frontend.lfr_m, frontend.lfr_n, files.random_weights)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=str(value))
    onnx.save(proto, str(model_path))

    int8_path = None
    if int8:
        int8_path = output / INT8_MODEL_FILENAME
        quantize_dynamic(
            model_input=model_path,
            model_output=int8_path,
            op_types_to_quantize=["MatMul"],
            weight_type=QuantType.QUInt8,
        )
    tokens_path = output / TOKENS_FILENAME
    write_tokens(tokenizer, tokens_path)
    return ExportedModel(model_path, int8_path, tokens_path, files.random_weights)


def example_batch(feature_dim: int) -> tuple:
    """Inputs to trace on: two utterances of different lengths, so tracing sees real padding and keeps batch
    and time dynamic."""
    import torch

    from .queries import language_row, textnorm_row

    return (
        torch.randn(2, 100, feature_dim),
        torch.tensor([80, 100], dtype=torch.int32),
        torch.tensor([language_row("auto"), language_row("zh")], dtype=torch.int32),
        torch.tensor([textnorm_row(True), textnorm_row(False)], dtype=torch.int32),
    )


def export_graph(
    graph: nn.Module, example: tuple, path: Path, inputs: list[str], outputs: list[str], axes: dict
) -> None:
    """``graph`` traced on ``example`` into one ONNX file at opset ``OPSET``, with ``axes`` dynamic."""
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns about every traced shape computation; they are all intended.
        warnings.simplefilter("ignore")
        # The TorchScript exporter writes one self-contained file (the model is < 2 GB), which is what
        # sherpa-onnx loads; the dynamo exporter would also need onnxscript.
        torch.onnx.export(
            graph,
            example,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
        )


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export-onnx", help="write an ONNX model (+ int8) and tokens.txt that sherpa-onnx loads"
    )
    parser.add_argument("--model", required=True, help="model directory in the official layout")
    parser.add_argument("--output-dir", required=True, help="where model.onnx, tokens.txt go")
    parser.add_argument(
        "--int8",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write model.int8.onnx (dynamic MatMul quantization; default: on)",
    )
    parser.set_defaults(handler=_export_command)


def _export_command(args: argparse.Namespace) -> int:
    exported = export_onnx(args.model, args.output_dir, int8=args.int8)
    for path in (exported.model, exported.int8_model, exported.tokens):
        if path is not None:
            print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if exported.random_weights:
        print("note: the source model holds RANDOM weights; so does the export", file=sys.stderr)
    print(
        f"load it with sherpa_onnx.OfflineRecognizer.from_sense_voice("
        f"model='{exported.int8_model or exported.model}', tokens='{exported.tokens}')"
    )
    return 0
