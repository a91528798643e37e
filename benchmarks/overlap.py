"""Does finishing a batch on a thread of its own (``overlap.BatchStages``) make the scheduler faster here?

    .venv/bin/python benchmarks/overlap.py --model /tmp/tiny-model            # any model directory
    .venv/bin/python benchmarks/overlap.py --random-weights --device cuda     # full-size RANDOM checkpoint
    .venv/bin/python benchmarks/overlap.py --model DIR --beam-size 4          # a heavier CPU half

``--requests`` requests of 1-15 s (cut from the real speech in ``../shared/audio``) are submitted at once to
a ``Scheduler`` with ``--batch-size`` utterances per forward, and the time until the last one is answered is
taken; overlap off and on alternate in every repetition, in one process with the same torch threads, so a
noisy shared machine slows both alike. Printed: the median wall time of each (and of this process's CPU
time, which a busy machine moves less), audio seconds per second, the ratio on/off (below 1: overlap
helps), and the share of the engine's time spent decoding (scores and finishing; finishing is the part
overlap can hide).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from sensevoice_serve.audio import SAMPLE_RATE
from sensevoice_serve.batching import Utterance
from sensevoice_serve.bench.material import (
    default_cache_dir,
    random_full_checkpoint,
    shared_speech_dir,
    speech_material,
)
from sensevoice_serve.decoding import DecodeOptions
from sensevoice_serve.pipeline import SenseVoice
from sensevoice_serve.scheduler import BatchReport, Scheduler


def requests(material: np.ndarray, count: int, options: DecodeOptions, seed: int = 0) -> list[Utterance]:
    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(count):
        length = int(rng.uniform(1.0, 15.0) * SAMPLE_RATE)
        start = int(rng.integers(0, len(material) - length))
        clips.append(Utterance(material[start : start + length], options))
    return clips


def run_once(engine: SenseVoice, utterances: list[Utterance], overlap: bool, batch_size: int) -> dict:
    parts = {"features": 0.0, "model": 0.0, "decoding": 0.0}

    def note(report: BatchReport) -> None:
        for name in parts:
            parts[name] += getattr(report.timings, name)

    scheduler = Scheduler(
        engine, max_batch_frames=100_000, max_batch_size=batch_size, max_wait=0.05, on_batch=note,
        overlap=overlap,
    )  # fmt: skip
    scheduler.start()
    try:
        started, cpu = time.perf_counter(), time.process_time()
        futures = [scheduler.submit([utterance]) for utterance in utterances]
        for future in futures:
            future.result()
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        scheduler.stop()
    return {"wall": wall, "cpu": cpu, **parts}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path)
    source.add_argument("--random-weights", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, help="model threads (default: the runtime's)")
    parser.add_argument("--speech-dir", type=Path)
    args = parser.parse_args()
    model_dir = args.model or random_full_checkpoint(default_cache_dir())
    engine = SenseVoice.from_pretrained(model_dir, device=args.device, dtype=args.dtype, threads=args.threads)
    material = speech_material(args.speech_dir or shared_speech_dir(), 60.0)
    utterances = requests(material, args.requests, DecodeOptions(beam_size=args.beam_size))
    audio = sum(u.duration for u in utterances)
    run_once(engine, utterances[:8], False, args.batch_size)  # warm-up
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(args.reps):
        for overlap in (False, True):
            runs[overlap].append(run_once(engine, utterances, overlap, args.batch_size))
    print(
        f"{model_dir} on {engine.device} ({engine.dtype}), torch threads {torch.get_num_threads()}, "
        f"{args.requests} requests ({audio:.0f} s of audio), batch size {args.batch_size}, "
        f"beam {args.beam_size}, {args.reps} repetitions"
    )
    medians = {}
    for overlap, results in runs.items():
        walls = [r["wall"] for r in results]
        medians[overlap] = statistics.median(walls)
        engine_time = sum(r["features"] + r["model"] + r["decoding"] for r in results)
        finishing = sum(r["decoding"] for r in results) / engine_time
        cpu = statistics.median(r["cpu"] for r in results)
        print(
            f"overlap {'on ' if overlap else 'off'}: median {medians[overlap]:.2f} s "
            f"(runs {', '.join(f'{w:.2f}' for w in walls)}), {audio / medians[overlap]:.1f}x real time, "
            f"process CPU {cpu:.2f} s, decoding {finishing:.0%} of the engine's time"
        )
    print(f"on / off: {medians[True] / medians[False]:.3f}")


if __name__ == "__main__":
    main()
