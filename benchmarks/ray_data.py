"""``sensevoice transcribe --ray`` (Ray Data, a local cluster) against the plain bulk CLI on many short files.

    python benchmarks/ray_data.py --model models/random-tiny --files 500 --rounds 2

Writes ``--files`` clips of 2-8 s (16 kHz WAV) cut from the recordings in ../shared/audio into a temporary
directory, then runs both commands on it as users do (``--output results.jsonl``), interleaved per round.
Reported: wall time from the command's start to its exit (Ray's cluster start and stop included), the time
Ray Data says its execution took, files per second and audio seconds per wall second; and whether both
wrote the same text for every file.

    python benchmarks/ray_data.py --decode-rates

instead measures what one decoding task does per core (one torch thread): decode to 16 kHz and segment each
shared recording, with the VAD off and on, as audio seconds per second (best of 3). It sizes the cores a
cluster needs for decoding.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from sensevoice_serve.audio import decode_audio

SHARED_AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"
SAMPLE_RATE = 16000
EXECUTION = re.compile(r"execution finished in ([0-9.]+) seconds")


def make_clips(directory: Path, count: int) -> float:
    """``count`` clips cut from the shared recordings; their total seconds."""
    speech = np.concatenate(
        [
            decode_audio(p).samples
            for p in sorted(SHARED_AUDIO.iterdir())
            if p.suffix in {".wav", ".mp3", ".flac"}
        ]
    )
    rng = np.random.default_rng(0)
    total = 0.0
    for index in range(count):
        length = int(rng.uniform(2, 8) * SAMPLE_RATE)
        start = int(rng.integers(0, len(speech) - length))
        sf.write(
            directory / f"{index:05d}.wav", speech[start : start + length], SAMPLE_RATE, subtype="PCM_16"
        )
        total += length / SAMPLE_RATE
    return total


def transcribe(model: Path, clips: Path, output: Path, flags: list[str]) -> tuple[float, float | None]:
    """Wall seconds of the command, and Ray Data's own execution seconds (with --ray)."""
    command = [sys.executable, "-m", "sensevoice_serve.cli", "transcribe", "--model", str(model), str(clips)]
    command += ["--output", str(output), *flags]
    environment = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="svb-", dir="/tmp")}
    started = time.perf_counter()
    finished = subprocess.run(command, env=environment, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if finished.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{finished.stderr[-3000:]}")
    execution = EXECUTION.search(finished.stderr)
    return wall, float(execution.group(1)) if execution else None


def decode_rates() -> None:
    import torch

    from sensevoice_serve.decoding import DecodeOptions
    from sensevoice_serve.segmentation import SegmentationOptions, default_detector, stream_utterances

    torch.set_num_threads(1)
    paths = sorted(p for p in SHARED_AUDIO.iterdir() if p.suffix in {".wav", ".mp3", ".flac"})
    for vad in ("off", "on"):
        options = SegmentationOptions(vad, 30.0, False)
        detector = default_detector(options)
        for path in paths:
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                stream, utterances = stream_utterances(path, DecodeOptions(), options, detector)
                pieces = len(list(utterances))
                best = min(best, time.perf_counter() - started)
            print(f"VAD {vad:>3} {path.name:>24}: {stream.duration:5.1f} s of audio, {pieces} piece(s), "
                  f"{best * 1000:6.1f} ms, {stream.duration / best:7.0f}x real time per core")  # fmt: skip
    print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


def texts(results: Path) -> dict[str, str]:
    return {record["path"]: record["text"] for record in map(json.loads, results.read_text().splitlines())}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path)
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--decode-rates", action="store_true", help="per-core decoding rates instead")
    parser.add_argument("--cli-args", default="", help='more flags for both commands: "--torch-threads 1"')
    args = parser.parse_args()
    if args.decode_rates:
        decode_rates()
        return

    with tempfile.TemporaryDirectory(prefix="svb-data-") as temp:
        clips = Path(temp) / "clips"
        clips.mkdir()
        audio = make_clips(clips, args.files)
        print(f"model {args.model}; {args.files} clips, {audio / 60:.1f} min of audio; "
              f"{os.cpu_count()} cores; {args.cli_args}")  # fmt: skip
        walls: dict[str, list[float]] = {"plain CLI": [], "--ray": []}
        for number in range(1, args.rounds + 1):
            outputs = {}
            for name in walls:
                outputs[name] = Path(temp) / f"{number}-{name.strip('-').replace(' ', '-')}.jsonl"
                flags = [*(["--ray"] if name == "--ray" else []), *args.cli_args.split()]
                wall, execution = transcribe(args.model, clips, outputs[name], flags)
                walls[name].append(wall)
                inside = f", Ray Data execution {execution:.1f} s" if execution else ""
                print(
                    f"round {number} {name:>9}: {wall:.1f} s wall{inside}; {args.files / wall:.1f} files/s, "
                    f"{audio / wall:.1f}x real time (load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
            same = texts(outputs["plain CLI"]) == texts(outputs["--ray"])
            print(f"round {number}: same text for every file: {same}")
        for name, values in walls.items():
            wall = statistics.median(values)
            speed = f"{args.files / wall:.1f} files/s, {audio / wall:.1f}x real time"
            print(f"median {name:>9}: {wall:.1f} s, {speed}")


if __name__ == "__main__":
    main()
