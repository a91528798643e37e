"""GPU numerics: fp32 on the GPU against the CPU, bf16 / fp16 against fp32, batch invariance, a batch of 64;
with two GPUs, requests routed over both (``tests/test_gpu_speed.py`` holds the speed figures).

Marker ``gpu``: skipped without CUDA; ``scripts/gpu-check.sh`` runs them on a GPU machine. The checkpoint is
the full-size RANDOM one (``$GPU_TEST_MODEL_DIR`` when the script has written it already). Random weights
put near-ties between logits that real weights would separate, so token agreement is asserted with loose
bounds only: every figure is printed, and appended as a JSON line to ``$GPU_REPORT_DIR/gpu-tests.jsonl``
when that is set, so the script's report shows them. The recordings are ``../shared/audio`` beside the
checkout, or ``$GPU_TEST_AUDIO_DIR`` (the GPU machine gets a carried copy).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from difflib import SequenceMatcher
from pathlib import Path

import numpy as np
import pytest
import torch

from sensevoice_serve.audio import SAMPLE_RATE, decode_audio
from sensevoice_serve.pipeline import SenseVoice, Utterance
from sensevoice_serve.router import Router
from sensevoice_serve.scheduler import Scheduler

from .conftest import SHARED_AUDIO

GPU = "cuda"
REPORT_FILE = "gpu-tests.jsonl"
AUDIO_DIR = Path(os.environ.get("GPU_TEST_AUDIO_DIR") or SHARED_AUDIO)
# fp32 on two devices differs only in summation order: the same bound as our parity with the reference.
FP32_RELATIVE_LOGIT_ERROR = 1e-4
# Loose on purpose (see the module docstring): a floor that catches a broken path, not a precision claim.
FP32_MIN_TOKEN_AGREEMENT = 0.98
# On the CPU, bf16 and fp16 agreed with fp32 on 95 % and 99 % of tokens (max relative error 6e-3 and 8e-4).
HALF_MIN_TOKEN_AGREEMENT = 0.8
HALF_MAX_RELATIVE_LOGIT_ERROR = 0.05

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@dataclass
class Outputs:
    """One engine's answers per clip: float32 CTC log-probs (valid frames, on the CPU) and token ids."""

    log_probs: list[torch.Tensor]
    tokens: list[list[int]]


@dataclass
class Agreement:
    tokens_same: int
    tokens_total: int
    token_agreement: float
    max_relative_logit_error: float  # max |Δ log-prob| / max |reference log-prob|, over every clip
    mean_abs_logit_error: float
    finite: bool


def record(name: str, **figures: object) -> None:
    """Print one result, and append it to the report file when the script asked for one."""
    line = json.dumps({"test": name, "torch": torch.__version__, **figures}, sort_keys=True)
    print(f"\n[gpu-report] {line}")
    directory = os.environ.get("GPU_REPORT_DIR")
    if directory:
        with open(Path(directory) / REPORT_FILE, "a", encoding="utf-8") as report:
            report.write(line + "\n")


def matching_tokens(a: Sequence[int], b: Sequence[int]) -> int:
    return sum(block.size for block in SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks())


def logit_errors(reference: Sequence[torch.Tensor], other: Sequence[torch.Tensor]) -> tuple[float, float]:
    """Max |Δ| over every clip relative to the reference's largest magnitude, and the mean |Δ|."""
    scale = max(float(log_probs.abs().max()) for log_probs in reference)
    deltas = [(a - b).abs() for a, b in zip(reference, other, strict=True)]
    values = sum(delta.numel() for delta in deltas)
    return max(float(d.max()) for d in deltas) / scale, sum(float(d.sum()) for d in deltas) / values


def compare(reference: Outputs, other: Outputs) -> Agreement:
    same = sum(matching_tokens(a, b) for a, b in zip(reference.tokens, other.tokens, strict=True))
    total = sum(max(len(a), len(b)) for a, b in zip(reference.tokens, other.tokens, strict=True))
    max_relative, mean_abs = logit_errors(reference.log_probs, other.log_probs)
    return Agreement(
        tokens_same=same,
        tokens_total=total,
        token_agreement=same / total if total else 1.0,
        max_relative_logit_error=max_relative,
        mean_abs_logit_error=mean_abs,
        finite=all(bool(torch.isfinite(lp).all()) for lp in other.log_probs),
    )


def run_clips(engine: SenseVoice, clips: Sequence[np.ndarray]) -> Outputs:
    """Each clip alone: its log-probs from the model, its tokens through the engine's own batch path."""
    log_probs, tokens = [], []
    with torch.inference_mode():
        for clip in clips:
            features, lengths = engine.features([clip])
            clip_log_probs, frames = engine.model(features, lengths, ["auto"], [True])
            log_probs.append(clip_log_probs[0, : int(frames[0])].float().cpu())
            tokens.append([token.id for token in engine.run_batch([Utterance(clip)])[0].tokens])
    return Outputs(log_probs, tokens)


def run_together(engine: SenseVoice, clips: Sequence[np.ndarray]) -> Outputs:
    """All clips as one padded forward; the same figures as ``run_clips``, for comparison with it."""
    with torch.inference_mode():
        features, lengths = engine.features(list(clips))
        count = len(clips)
        log_probs, frames = engine.model(features, lengths, ["auto"] * count, [True] * count)
        engine.forward_batch_sizes.clear()
        segments = engine.run_batch([Utterance(clip) for clip in clips])
    assert engine.forward_batch_sizes == [len(clips)], "the clips must run as one padded forward"
    return Outputs(
        [log_probs[i, : int(n)].float().cpu() for i, n in enumerate(frames)],
        [[token.id for token in segment.tokens] for segment in segments],
    )


def load(model_dir: Path, device: str, dtype: str) -> SenseVoice:
    return SenseVoice.from_pretrained(model_dir, device=device, dtype=dtype)


def model_directory(request: pytest.FixtureRequest) -> Path:
    """``$GPU_TEST_MODEL_DIR`` (the script's full-size checkpoint), else one written for the session."""
    given = os.environ.get("GPU_TEST_MODEL_DIR")
    return Path(given) if given else request.getfixturevalue("full_model_dir")


def read_recordings() -> dict[str, np.ndarray]:
    paths = sorted(p for p in AUDIO_DIR.glob("*") if p.is_file() and p.suffix != ".md")
    if not paths:
        pytest.skip(f"no recordings in {AUDIO_DIR}")
    return {path.name: decode_audio(path).samples for path in paths}


@pytest.fixture(scope="module")
def model_dir(request: pytest.FixtureRequest) -> Path:
    return model_directory(request)


@pytest.fixture(scope="module")
def recordings() -> dict[str, np.ndarray]:
    return read_recordings()


@pytest.fixture(scope="module")
def strict_fp32() -> Iterator[None]:
    """No TF32 (cuBLAS and cuDNN): fp32 on the GPU must then agree with the CPU to summation order."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def cpu_engine(model_dir: Path) -> SenseVoice:
    return load(model_dir, "cpu", "fp32")


@pytest.fixture(scope="module")
def gpu_engine(model_dir: Path, strict_fp32: None) -> SenseVoice:
    return load(model_dir, GPU, "fp32")


@pytest.fixture(scope="module")
def cpu_fp32(cpu_engine: SenseVoice, recordings: dict[str, np.ndarray]) -> Outputs:
    return run_clips(cpu_engine, list(recordings.values()))


@pytest.fixture(scope="module")
def gpu_fp32(gpu_engine: SenseVoice, recordings: dict[str, np.ndarray]) -> Outputs:
    return run_clips(gpu_engine, list(recordings.values()))


def test_fp32_on_the_gpu_matches_the_cpu(
    gpu_fp32: Outputs, cpu_fp32: Outputs, recordings: dict[str, np.ndarray]
) -> None:
    agreement = compare(cpu_fp32, gpu_fp32)
    record("fp32 GPU (TF32 off) vs CPU", clips=list(recordings), **asdict(agreement))
    assert agreement.finite
    assert agreement.max_relative_logit_error <= FP32_RELATIVE_LOGIT_ERROR
    assert agreement.token_agreement >= FP32_MIN_TOKEN_AGREEMENT


def test_fp32_gpu_model_matches_the_cpu_on_the_same_features(
    cpu_engine: SenseVoice, gpu_engine: SenseVoice, recordings: dict[str, np.ndarray]
) -> None:
    """The model alone (features from the CPU for both): tells a model difference from a feature one."""
    on_cpu, on_gpu = [], []
    with torch.inference_mode():
        for clip in recordings.values():
            features, lengths = cpu_engine.features([clip])
            cpu_log_probs, frames = cpu_engine.model(features, lengths, ["auto"], [True])
            on_device = torch.from_numpy(features).to(gpu_engine.device)
            gpu_log_probs, _ = gpu_engine.model(on_device, lengths, ["auto"], [True])
            on_cpu.append(cpu_log_probs[0, : int(frames[0])])
            on_gpu.append(gpu_log_probs[0, : int(frames[0])].cpu())
    max_relative, mean_abs = logit_errors(on_cpu, on_gpu)
    figures = {"max_relative_logit_error": max_relative, "mean_abs_logit_error": mean_abs}
    record("fp32 GPU model (TF32 off) vs CPU, same features", **figures)
    assert max_relative <= FP32_RELATIVE_LOGIT_ERROR


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_against_fp32(
    model_dir: Path, recordings: dict[str, np.ndarray], gpu_fp32: Outputs, cpu_fp32: Outputs, dtype: str
) -> None:
    half = run_clips(load(model_dir, GPU, dtype), list(recordings.values()))
    agreement = compare(gpu_fp32, half)
    fp32_drift = compare(cpu_fp32, gpu_fp32)
    record(
        f"{dtype} vs fp32 on the GPU",
        clips=list(recordings),
        **asdict(agreement),
        fp32_gpu_vs_cpu_token_agreement=fp32_drift.token_agreement,
        fp32_gpu_vs_cpu_max_relative_logit_error=fp32_drift.max_relative_logit_error,
    )
    assert agreement.finite, f"{dtype} produced inf or NaN log-probs"
    assert agreement.token_agreement >= HALF_MIN_TOKEN_AGREEMENT
    assert agreement.max_relative_logit_error <= HALF_MAX_RELATIVE_LOGIT_ERROR


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_batch_invariance_on_the_gpu(
    model_dir: Path, recordings: dict[str, np.ndarray], strict_fp32: None, dtype: str
) -> None:
    names = ["jfk.flac", "zh_sample.wav", "hotwords.mp3", "stereo_diarization.wav"]
    clips = [recordings[name] for name in names if name in recordings]
    if len({len(clip) for clip in clips}) < 2:
        pytest.skip("needs recordings of different lengths")
    engine = load(model_dir, GPU, dtype)
    agreement = compare(run_clips(engine, clips), run_together(engine, clips))
    record(f"batch invariance {dtype}: alone vs one padded batch", clips=len(clips), **asdict(agreement))
    assert agreement.finite
    if dtype == "fp32":
        assert agreement.max_relative_logit_error <= FP32_RELATIVE_LOGIT_ERROR
        assert agreement.token_agreement >= FP32_MIN_TOKEN_AGREEMENT
    else:
        assert agreement.token_agreement >= HALF_MIN_TOKEN_AGREEMENT


def mixed_lengths(material: np.ndarray, count: int) -> list[np.ndarray]:
    """``count`` clips from 0.02 s (no feature frame at all) to 30 s, cut from the speech end to end."""
    seconds = np.geomspace(0.02, 30.0, count)
    starts = np.linspace(0, len(material) - 1, count, dtype=np.int64)
    tiled = np.tile(material, int(np.ceil(30.0 * SAMPLE_RATE / len(material))) + 1)
    return [tiled[start : start + int(s * SAMPLE_RATE)] for start, s in zip(starts, seconds, strict=True)]


def peak_gpu_mb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.startswith("cuda") else None


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_mixed_length_batch_of_64(
    model_dir: Path, recordings: dict[str, np.ndarray], strict_fp32: None, dtype: str
) -> None:
    clips = mixed_lengths(np.concatenate(list(recordings.values())), 64)
    engine = load(model_dir, GPU, dtype)
    if engine.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(engine.device)
    with torch.inference_mode():
        engine.forward_batch_sizes.clear()
        segments = engine.run_batch([Utterance(clip) for clip in clips])
    peak = peak_gpu_mb(engine.device)
    assert engine.forward_batch_sizes == [64]
    assert [s.end for s in segments] == pytest.approx([len(c) / SAMPLE_RATE for c in clips], abs=1e-3)
    for segment, clip in zip(segments, clips, strict=True):
        assert all(0 <= t.start <= t.end <= len(clip) / SAMPLE_RATE + 0.06 for t in segment.tokens)
    agreement = compare(run_clips(engine, clips), run_together(engine, clips))
    record(f"batch of 64 ({dtype}): alone vs together", peak_gpu_mb=peak, **asdict(agreement))
    assert agreement.finite
    floor = FP32_MIN_TOKEN_AGREEMENT if dtype == "fp32" else HALF_MIN_TOKEN_AGREEMENT
    assert agreement.token_agreement >= floor


def run_routed(engines: Sequence[SenseVoice], clips: Sequence[np.ndarray]) -> tuple[list[list[int]], float]:
    """Every clip submitted at once to a Router over one scheduler per engine: tokens and wall seconds."""
    router = Router([Scheduler(engine, max_batch_frames=20_000) for engine in engines])
    router.start()
    try:
        started = time.perf_counter()
        futures = [router.submit([Utterance(clip)]) for clip in clips]
        results = [future.result(timeout=300) for future in futures]
        seconds = time.perf_counter() - started
    finally:
        router.stop()
    return [[token.id for token in result.segments[0].tokens] for result in results], seconds


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_gpus_behind_the_router(
    model_dir: Path, recordings: dict[str, np.ndarray], strict_fp32: None
) -> None:
    """Requests spread over both GPUs (one engine and scheduler each, as serve runs them), with the tokens
    each clip gets alone on the first GPU."""
    engines = [load(model_dir, f"cuda:{index}", "fp32") for index in (0, 1)]
    clips = mixed_lengths(np.concatenate(list(recordings.values())), 48)
    alone = [[token.id for token in engines[0].run_batch([Utterance(clip)])[0].tokens] for clip in clips]
    for engine in engines:
        engine.forward_batch_sizes.clear()
    together, two_gpu_seconds = run_routed(engines, clips)
    utterances_per_gpu = [sum(engine.forward_batch_sizes) for engine in engines]
    _, one_gpu_seconds = run_routed(engines[:1], clips)
    same = sum(matching_tokens(a, b) for a, b in zip(alone, together, strict=True))
    total = sum(max(len(a), len(b)) for a, b in zip(alone, together, strict=True))
    record(
        "two GPUs behind the router (fp32)",
        utterances_per_gpu=utterances_per_gpu,
        token_agreement=same / total if total else 1.0,
        one_gpu_seconds=one_gpu_seconds,
        two_gpu_seconds=two_gpu_seconds,
        audio_seconds=sum(len(clip) for clip in clips) / SAMPLE_RATE,
    )
    assert all(utterances_per_gpu) and sum(utterances_per_gpu) == len(clips)
    assert (same / total if total else 1.0) >= FP32_MIN_TOKEN_AGREEMENT
