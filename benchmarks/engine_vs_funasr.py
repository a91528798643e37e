"""Warm transcription time of ours vs funasr's AutoModel on the same checkpoint, in the same process and run.

    .venv/bin/python benchmarks/engine_vs_funasr.py --model models/random-full [--repeats 5]

Both sides get the same decoded 16 kHz samples (decoding is timed separately by `sensevoice bench`), dither
off on the reference; the figures are medians over ``--repeats`` after one warm-up, reported as ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from sensevoice_serve.audio import decode_audio
from sensevoice_serve.pipeline import SenseVoice

SHARED_AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"
CLIPS = ["jfk.flac", "zh_sample.wav", "hotwords.mp3", "multilingual.mp3", "stereo_diarization.wav"]


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="model directory (e.g. a make-test-model full dir)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from funasr import AutoModel

    threads = torch.get_num_threads()
    reference = AutoModel(
        model=args.model, device="cpu", disable_update=True, log_level="ERROR", frontend_conf={"dither": 0.0}
    )
    torch.set_num_threads(threads)  # funasr changes the process-wide thread count; compare like with like
    ours = SenseVoice.from_pretrained(args.model, device="cpu", dtype="fp32")
    samples = {name: decode_audio(SHARED_AUDIO / name).samples for name in CLIPS}
    batch = list(samples.values())
    audio_seconds = sum(len(s) for s in batch) / 16000

    def funasr_run(inputs: list[np.ndarray]) -> Callable[[], object]:
        return lambda: reference.generate(input=inputs, language="auto", use_itn=True, batch_size=len(inputs),
                                          disable_pbar=True)  # fmt: skip

    def ours_run(inputs: list[np.ndarray]) -> Callable[[], object]:
        return lambda: ours.transcribe(inputs, language="auto", use_itn=True, max_segment_seconds=120)

    rows = [
        ("jfk.flac (11 s)", [samples["jfk.flac"]], 11.0),
        (f"all {len(batch)} shared files ({audio_seconds:.0f} s)", batch, audio_seconds),
    ]
    print(f"torch threads: {torch.get_num_threads()}, repeats: {args.repeats} (median)")
    print("| input | funasr AutoModel | sensevoice-serve | speed-up |")
    print("|---|---|---|---|")
    for label, inputs, _ in rows:
        theirs = median_seconds(funasr_run(inputs), args.repeats)
        mine = median_seconds(ours_run(inputs), args.repeats)
        print(f"| {label} | {theirs:.3f} s | {mine:.3f} s | {theirs / mine:.2f}x |")


if __name__ == "__main__":
    main()
