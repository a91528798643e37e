"""The int8 runtime: the model's two graphs (``int8_build``) run by onnxruntime on the CPU.

It answers the same calls as the torch model (``encode`` and ``ctc.logits``) in numpy arrays, so the
pipeline, the scheduler and decoding run it without torch, which is never imported on this path: a process
serving the int8 model is ready a second sooner and some 230 MB smaller. onnxruntime keeps its own thread
pool (the setting ``torch_threads`` sizes it, as it sizes torch's for the torch runtime).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ModelLoadError
from ..queries import NUM_QUERY_FRAMES, language_row, textnorm_row
from .int8_cache import (
    CTC,
    CTC_INPUT,
    CTC_OUTPUT,
    ENCODER,
    ENCODER_OUTPUT,
    GRAPH_FILES,
    discard,
    ensure_int8_model,
)

if TYPE_CHECKING:
    import onnxruntime

    from ..checkpoint import ModelFiles
    from ..tokenizer import Tokenizer

logger = logging.getLogger(__name__)


class Int8CTCHead:
    """``CTCHead.logits`` on the int8 graph: float32 logits of any frames."""

    def __init__(self, session: onnxruntime.InferenceSession):
        self.session = session

    def logits(self, encoded: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        frames = np.ascontiguousarray(encoded.reshape(-1, encoded.shape[-1]), dtype=np.float32)
        (logits,) = self.session.run([CTC_OUTPUT], {CTC_INPUT: frames})
        logits = logits.reshape(*encoded.shape[:-1], -1)
        return logits if rows is None else logits[..., rows]


class Int8SenseVoice:
    """The encoder and CTC head as onnxruntime sessions over int8 weights."""

    def __init__(self, encoder: onnxruntime.InferenceSession, ctc: onnxruntime.InferenceSession):
        self.session = encoder
        self.ctc = Int8CTCHead(ctc)

    def encode(
        self, features: np.ndarray, lengths: np.ndarray, languages: Sequence[str], use_itn: Sequence[bool]
    ) -> tuple[np.ndarray, np.ndarray]:
        """As ``SenseVoiceSmall.encode``: float32 frames (B, T + 4, d) and their lengths."""
        lengths = np.asarray(lengths, dtype=np.int64)
        feed = {
            "x": np.ascontiguousarray(features, dtype=np.float32),
            "x_length": lengths.astype(np.int32),
            "language": np.array([language_row(language) for language in languages], dtype=np.int32),
            "text_norm": np.array([textnorm_row(itn) for itn in use_itn], dtype=np.int32),
        }
        (encoded,) = self.session.run([ENCODER_OUTPUT], feed)
        return encoded, lengths + NUM_QUERY_FRAMES


def session_options(threads: int) -> onnxruntime.SessionOptions:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # The graphs were optimized when they were built; doing it again only costs start-up time.
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3  # errors only: it warns about unused initializers of optimized graphs
    # Without its arena, onnxruntime hands a large batch's activations and logits back to the system: a server
    # stays at its idle memory between bursts. Measured no slower (16 x 10 s batch, interleaved).
    options.enable_cpu_mem_arena = False
    # Idle pool threads sleep instead of spinning: torch computes features and decodes between forwards, and
    # decode processes share the cores; spinning threads would take their time. Measured faster with the
    # pipeline (16 x 10 s: 6.35 s against 7.56 s; one 5 s clip 336 against 384 ms; interleaved, 2 threads).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def open_sessions(entry: Path, threads: int) -> Int8SenseVoice:
    import onnxruntime

    sessions = {
        name: onnxruntime.InferenceSession(
            str(entry / GRAPH_FILES[name][0]), session_options(threads), providers=["CPUExecutionProvider"]
        )
        for name in (ENCODER, CTC)
    }
    return Int8SenseVoice(sessions[ENCODER], sessions[CTC])


def load_int8_runtime(
    files: ModelFiles, tokenizer: Tokenizer, cache_dir: str | Path | None = None, threads: int | None = None
) -> Int8SenseVoice:
    """The int8 runtime of ``files`` on ``threads`` threads (default: every usable core), built into the
    cache first if needed; a cached build that fails to load is rebuilt once."""
    threads = threads or len(os.sched_getaffinity(0))
    entry = ensure_int8_model(files, tokenizer, cache_dir)
    try:
        runtime = open_sessions(entry, threads)
    except Exception as error:  # onnxruntime raises its own types for a damaged graph or data file
        discard(entry, str(error).splitlines()[0] if str(error) else type(error).__name__)
        entry = ensure_int8_model(files, tokenizer, cache_dir)
        try:
            runtime = open_sessions(entry, threads)
        except Exception as again:
            message = f"the int8 model built from {files.weights} does not load: {again}"
            raise ModelLoadError(message) from again
    if files.random_weights:
        logger.warning("%s holds RANDOM weights: its transcripts are meaningless", files.directory)
    return runtime
