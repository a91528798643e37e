"""How close an int8 runtime comes to the float32 model, on the same features.

Per recording, against our float32 torch model: the share of frames whose best token is the same, the
greedy transcript's token agreement (1 - token edit distance / reference length) and the relative error of
the logits (Frobenius norm of the difference over the reference's). Two int8 runtimes are measured: ours
(``runtimes.int8``) and the int8 ONNX export that sherpa-onnx loads (``export.py``), run by onnxruntime as
sherpa-onnx runs it, so both see exactly the features the float32 model sees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..audio import SAMPLE_RATE, decode_audio
from ..queries import language_row, textnorm_row
from ..scoring import collapse

Logits = Callable[[np.ndarray, np.ndarray], np.ndarray]  # features (1, T, 560), lengths -> (T + 4, V)
PIECE_SECONDS = 30.0  # recordings are cut into pieces the model sees whole, as the VAD would


@dataclass
class Fidelity:
    frames: int = 0
    agreeing_frames: int = 0
    reference_tokens: int = 0
    token_edits: int = 0
    relative_errors: list[float] = field(default_factory=list)

    @property
    def frame_agreement(self) -> float:
        return self.agreeing_frames / max(self.frames, 1)

    @property
    def token_agreement(self) -> float:
        return 1 - self.token_edits / max(self.reference_tokens, 1)

    @property
    def logits_relative_error(self) -> float:
        return float(np.mean(self.relative_errors)) if self.relative_errors else 0.0

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        best, candidate_best = reference.argmax(-1), candidate.argmax(-1)
        self.frames += best.size
        self.agreeing_frames += int((best == candidate_best).sum())
        tokens = [spike.token_id for spike in collapse(best)]
        self.reference_tokens += len(tokens)
        self.token_edits += edit_distance(tokens, [spike.token_id for spike in collapse(candidate_best)])
        self.relative_errors.append(float(np.linalg.norm(candidate - reference) / np.linalg.norm(reference)))

    def to_dict(self) -> dict:
        return {
            "frames": self.frames,
            "frame_agreement": round(self.frame_agreement, 4),
            "token_agreement": round(self.token_agreement, 4),
            "logits_relative_error": round(self.logits_relative_error, 4),
        }


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def recording_pieces(paths: Sequence[Path]) -> list[np.ndarray]:
    """Every recording's samples in pieces of at most ``PIECE_SECONDS``."""
    step = int(PIECE_SECONDS * SAMPLE_RATE)
    pieces = []
    for path in paths:
        samples = decode_audio(path).samples
        pieces.extend(samples[start : start + step] for start in range(0, len(samples), step))
    return pieces


def runtime_logits(runtime) -> Logits:
    """Logits of one of our runtimes (the torch model or ``runtimes.int8``), language auto, with ITN."""

    def logits(features: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        encoded, _ = runtime.encode(features, lengths, ["auto"], [True])
        return np.asarray(runtime.ctc.logits(encoded[0]), dtype=np.float32)  # the torch model's on the CPU

    return logits


def onnx_logits(model_path: Path, threads: int = 1) -> Logits:
    """Logits of an ONNX export in sherpa-onnx's form (``export.py``), language auto, with ITN."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])

    def logits(features: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        feed = {
            "x": features,
            "x_length": lengths.astype(np.int32),
            "language": np.array([language_row("auto")], dtype=np.int32),
            "text_norm": np.array([textnorm_row(True)], dtype=np.int32),
        }
        return session.run(None, feed)[0][0]

    return logits


def measure_fidelity(
    features: Callable[[list[np.ndarray]], tuple[np.ndarray, np.ndarray]],
    pieces: Sequence[np.ndarray],
    reference: Logits,
    candidates: dict[str, Logits],
) -> dict[str, Fidelity]:
    """Each candidate against ``reference`` on every piece, one piece at a time (no padding)."""
    results = {name: Fidelity() for name in candidates}
    for samples in pieces:
        feats, lengths = features([samples])
        expected = reference(feats, lengths)
        for name, candidate in candidates.items():
            results[name].add(expected, candidate(feats, lengths))
    return results
