"""Long files and bulk folders: wall time, x real time and peak memory, the way users run them.

    .venv/bin/python benchmarks/longform.py --random-weights            # full-size RANDOM checkpoint
    .venv/bin/python benchmarks/longform.py --model DIR --long-minutes 10,120 --short-files 200

Recordings are built from the real speech in ``../shared/audio`` (or ``--speech-dir``): the recordings over
and over with 0.5-3 s pauses of faint noise between them, written to FLAC a piece at a time.

* Long files: each is transcribed by its own ``sensevoice transcribe FILE --output results.jsonl`` process
  (what a user runs); wall time includes start-up and model loading; peak RSS is the process's own. A short
  file is run the same way first, as the baseline the long files' memory is compared against.
* A folder of short files (2-20 s, wav and mp3): transcribed in one process, once as one call over all of
  them and once as one call per file, with the same engine and threads; the ratio is the gain from batching
  segments of different files together. The bulk CLI over the folder is timed too (start-up included).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from sensevoice_serve.audio import SAMPLE_RATE
from sensevoice_serve.bench.material import (
    decodable_recordings,
    default_cache_dir,
    encode_mp3,
    random_full_checkpoint,
    shared_speech_dir,
)

NOISE_LEVEL = 1e-3


def recordings(directory: Path) -> list[np.ndarray]:
    decoded = list(decodable_recordings(directory))
    if not decoded:
        raise SystemExit(f"no decodable audio in {directory}")
    return decoded


def speech_with_pauses(speech: list[np.ndarray], rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Pause, recording, pause, recording, ... without end."""
    while True:
        for samples in speech:
            pause = round(rng.uniform(0.5, 3.0) * SAMPLE_RATE)
            yield (rng.standard_normal(pause) * NOISE_LEVEL).astype(np.float32)
            yield samples


def write_long_recording(path: Path, seconds: float, speech: list[np.ndarray]) -> None:
    remaining = round(seconds * SAMPLE_RATE)
    with sf.SoundFile(path, "w", SAMPLE_RATE, 1, subtype="PCM_16") as output:
        for piece in speech_with_pauses(speech, np.random.default_rng(0)):
            output.write(piece[:remaining])
            remaining -= min(len(piece), remaining)
            if remaining == 0:
                return


def write_short_files(directory: Path, count: int, speech: list[np.ndarray]) -> float:
    """``count`` files of 2-20 s cut from the speech, alternately WAV and MP3; returns their seconds."""
    rng = np.random.default_rng(1)
    material = np.concatenate(speech)
    total = 0.0
    for index in range(count):
        length = round(rng.uniform(2.0, 20.0) * SAMPLE_RATE)
        start = int(rng.integers(0, len(material) - length))
        samples = material[start : start + length]
        if index % 2:
            (directory / f"{index:04d}.mp3").write_bytes(encode_mp3(samples))
        else:
            sf.write(directory / f"{index:04d}.wav", samples, SAMPLE_RATE, subtype="PCM_16")
        total += length / SAMPLE_RATE
    return total


def cli_run(model: Path, inputs: list[Path], results: Path, threads: int | None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one ``sensevoice transcribe --output`` process."""
    command = [sys.executable, "-m", "sensevoice_serve.cli", "transcribe", "--model", str(model)]
    if threads:
        command += ["--torch-threads", str(threads)]
    started = time.perf_counter()
    process = subprocess.Popen(
        [*command, "--output", str(results), *map(str, inputs)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"sensevoice transcribe failed:\n{stderr.decode()}")
    return wall, usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def bench_long_files(
    model: Path, minutes: list[float], speech: list[np.ndarray], work: Path, threads: int | None
):
    print("| file | audio | wall (incl. start-up) | x real time | peak RSS | vs baseline |")
    print("|---|---|---|---|---|---|")
    baseline = None
    for seconds in [30.0, *(m * 60 for m in minutes)]:
        recording = work / f"long-{seconds:.0f}s.flac"
        write_long_recording(recording, seconds, speech)
        wall, peak = cli_run(model, [recording], work / f"long-{seconds:.0f}s.jsonl", threads)
        recording.unlink()
        baseline = baseline if baseline is not None else peak
        label = "baseline" if seconds == 30.0 else f"{seconds / 60:g} min"
        print(
            f"| {label} | {seconds / 60:.1f} min | {wall:.1f} s | {seconds / wall:.1f}x | {peak:,.0f} MB"
            f" | {peak - baseline:+,.0f} MB |"
        )


def bench_short_files(model: Path, count: int, speech: list[np.ndarray], work: Path, threads: int | None):
    import torch

    from sensevoice_serve.pipeline import SenseVoice

    folder = work / "short"
    folder.mkdir()
    audio_seconds = write_short_files(folder, count, speech)
    paths = sorted(folder.iterdir())
    if threads:
        torch.set_num_threads(threads)
    engine = SenseVoice.from_pretrained(model, device="cpu", dtype="fp32")
    engine.transcribe(paths[:2])  # warm-up: first-call costs are not what is compared

    started = time.perf_counter()
    for path in paths:
        engine.transcribe(path)
    one_each = time.perf_counter() - started
    started = time.perf_counter()
    engine.transcribe(paths)
    together = time.perf_counter() - started
    cli_wall, cli_peak = cli_run(model, [folder], work / "short.jsonl", threads)

    print(f"\n{count} files, {audio_seconds / 60:.1f} min of audio, torch threads {torch.get_num_threads()}")
    print("| how | wall | x real time | vs one call each |")
    print("|---|---|---|---|")
    for how, wall in (
        ("one call per file (in process)", one_each),
        ("one call for all (in process)", together),
        (f"`sensevoice transcribe DIR --output` (start-up incl., peak RSS {cli_peak:,.0f} MB)", cli_wall),
    ):
        print(f"| {how} | {wall:.1f} s | {audio_seconds / wall:.1f}x | {one_each / wall:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="model directory")
    source.add_argument("--random-weights", action="store_true", help="full-size RANDOM checkpoint (cached)")
    parser.add_argument("--long-minutes", default="10,120", help="comma-separated long-file lengths")
    parser.add_argument("--short-files", type=int, default=200)
    parser.add_argument("--speech-dir", type=Path, default=shared_speech_dir())
    parser.add_argument("--threads", type=int, help="torch threads (default: the tuned choice)")
    args = parser.parse_args()
    if args.speech_dir is None:
        raise SystemExit("no speech: pass --speech-dir (the checkout's ../shared/audio is not there)")

    model = args.model or random_full_checkpoint(default_cache_dir())
    if args.random_weights:
        print("RANDOM weights: the text is meaningless; speed and memory are not\n")
    speech = recordings(args.speech_dir)
    with tempfile.TemporaryDirectory(prefix="sensevoice-longform-") as work:
        minutes = [float(m) for m in args.long_minutes.split(",") if m]
        if minutes:
            bench_long_files(model, minutes, speech, Path(work), args.threads)
        if args.short_files:
            bench_short_files(model, args.short_files, speech, Path(work), args.threads)


if __name__ == "__main__":
    main()
