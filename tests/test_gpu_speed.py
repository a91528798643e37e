"""GPU serving paths that only a GPU can check, and the figures that decide the next speed work.

Marker ``gpu``, skipped without CUDA (``scripts/gpu-check.sh`` runs them, with ``tests/test_gpu.py``'s
checkpoint, recordings and report file). Asserted: results, never speed. Recorded for the report:

* pinned staging: a batch's audio is copied while the GPU is still busy, and the next batch's audio may not
  overwrite it before the copy has left (the CUDA event), checked against the unstaged path;
* overlap: the scheduler with and without the finishing thread, same tokens, wall time of each (on a CPU it
  did not help; on a GPU it should, by the share of time spent finishing batches);
* forward launch: how long the CPU takes to enqueue one forward against how long the GPU runs it. Enqueueing
  close to (or above) the GPU time means the forward is launch-bound: CUDA graphs or ``torch.compile`` over
  bucketed shapes would pay; far below, they would not.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import sensevoice_serve
from sensevoice_serve.audio import SAMPLE_RATE
from sensevoice_serve.decoding import DecodeOptions
from sensevoice_serve.features import FeatureExtractor, FrontendConfig, load_cmvn
from sensevoice_serve.pipeline import SenseVoice, Utterance
from sensevoice_serve.scheduler import Scheduler

from .test_gpu import load, model_directory, read_recordings, record

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
CMVN = Path(sensevoice_serve.__file__).parent / "assets" / "am.mvn"
BUSY_GPU_CYCLES = 500_000_000  # torch.cuda._sleep: a fraction of a second of a busy GPU
OVERLAP_REPEATS = 2


def speech(recordings: dict[str, np.ndarray], count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` clips of 1-15 s cut at random from the recordings end to end."""
    material = np.tile(np.concatenate(list(recordings.values())), 2)
    rng = np.random.default_rng(seed)
    lengths = (rng.uniform(1.0, 15.0, count) * SAMPLE_RATE).astype(int)
    starts = rng.integers(0, len(material) // 2, count)
    return [material[start : start + n] for n, start in zip(lengths, starts, strict=True)]


def test_staged_audio_is_pinned_and_never_overwritten_in_flight() -> None:
    recordings = read_recordings()
    staged = FeatureExtractor.for_device(FrontendConfig(), *load_cmvn(CMVN), device="cuda")
    unstaged = FeatureExtractor.for_device(FrontendConfig(), *load_cmvn(CMVN), device="cuda")
    unstaged._staging = None
    first, second = speech(recordings, 8, seed=1), speech(recordings, 8, seed=2)
    torch.cuda.synchronize()
    torch.cuda._sleep(BUSY_GPU_CYCLES)  # the first batch's copy waits behind this in the stream
    first_features, _ = staged(first)
    second_features, _ = staged(second)  # writes the host buffer again: only once the first copy has left
    torch.cuda.synchronize()
    assert staged._staging._host.is_pinned()
    for features, clips in ((first_features, first), (second_features, second)):
        torch.testing.assert_close(features, unstaged(clips)[0], rtol=1e-6, atol=1e-6)


def run_scheduler(engine: SenseVoice, requests: list[Utterance], overlap: bool) -> tuple[list, float]:
    """Everything submitted before the worker starts (so the batches are the same either way)."""
    scheduler = Scheduler(engine, max_batch_frames=20_000, max_batch_size=16, overlap=overlap)
    futures = [scheduler.submit([utterance]) for utterance in requests]
    started = time.perf_counter()
    scheduler.start()
    try:
        results = [future.result(timeout=300) for future in futures]
    finally:
        scheduler.stop()
    return [[t.id for t in result.segments[0].tokens] for result in results], time.perf_counter() - started


def test_overlap_keeps_the_results_and_its_speed_is_recorded(request: pytest.FixtureRequest) -> None:
    engine, recordings = load(model_directory(request), "cuda", "bf16"), read_recordings()
    # A quarter with beam search, a heavier CPU half (with random weights every frame is searched).
    requests = [
        Utterance(clip, DecodeOptions(beam_size=4 if i % 4 == 0 else 1))
        for i, clip in enumerate(speech(recordings, 64))
    ]
    run_scheduler(engine, requests[:16], overlap=True)  # warm-up
    seconds: dict[bool, list[float]] = {False: [], True: []}
    tokens: dict[bool, list] = {}
    for _ in range(OVERLAP_REPEATS):
        for overlap in (False, True):
            tokens[overlap], wall = run_scheduler(engine, requests, overlap)
            seconds[overlap].append(wall)
    off, on = statistics.median(seconds[False]), statistics.median(seconds[True])
    record(
        "scheduler overlap (bf16, 64 requests of 1-15 s, a quarter with beam 4)",
        off_seconds=seconds[False],
        on_seconds=seconds[True],
        on_over_off=on / off,
        audio_seconds=sum(u.duration for u in requests),
    )
    assert tokens[True] == tokens[False]


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_forward_launch_against_gpu_time_is_recorded(request: pytest.FixtureRequest, dtype: str) -> None:
    engine = load(model_directory(request), "cuda", dtype)
    material = np.concatenate(list(read_recordings().values()))
    shapes = []
    with torch.inference_mode():
        for batch, seconds in ((1, 5), (8, 10), (32, 30)):
            clips = [np.resize(material, int(seconds * SAMPLE_RATE))] * batch
            features, lengths = engine.features(clips)
            arguments = (features, lengths, ["auto"] * batch, [True] * batch)
            engine.model.encode(*arguments)  # warm-up: kernel selection, allocator growth
            torch.cuda.synchronize()
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            started = time.perf_counter()
            encoded, _ = engine.model.encode(*arguments)
            launch = time.perf_counter() - started
            end.record()
            torch.cuda.synchronize()
            gpu = begin.elapsed_time(end) / 1000
            shapes.append({"batch": batch, "seconds": seconds, "launch_s": launch, "gpu_s": gpu})
            assert bool(torch.isfinite(encoded.float()).all())
    record(f"forward launch vs GPU time ({dtype})", shapes=shapes)
