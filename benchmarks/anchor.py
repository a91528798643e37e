"""Anchor comparison: ours (fp32 and int8) against sherpa-onnx int8 and funasr's AutoModel, side by side on
one machine, the same number of threads each (funasr-onnx: see ``anchor_engines.py``).

    .venv/bin/pip install -c constraints.txt -e '.[bench]'     # sherpa-onnx and funasr
    .venv/bin/python benchmarks/anchor.py --random-weights --threads 2 [--repeats 5] [--engines A,B]

One table, an engine per column (``anchor_engines.py`` holds them):

- N x S s batch (default 16 x 10 s): all clips in one call, in x real time (audio seconds per second);
- one clip of each ``--clip-seconds`` length: latency;
- ready after start: a fresh process per engine, from its launch until the model is loaded and has run one
  second of noise; peak RSS: that process's high-water mark once it has also transcribed jfk.flac (11 s).

Every engine gets the same decoded 16 kHz clips, cut from the real speech in ../shared/audio. Speed figures
are medians over ``--repeats`` after a warm-up, the engines taking turns (A, B, C, A, B, C...) so that a busy
moment hits all alike; the load average is printed with them. Then ours int8 as users start it (``serve``
until /ready answers 200 and its idle memory, ``transcribe`` of jfk.flac), and how far each int8 model is
from our float32 one on every recording (``bench/fidelity.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from anchor_engines import ENGINES, FACTORIES, SAMPLE_RATE, model_path
from anchor_users import fidelity_rows, serve_and_transcribe

from sensevoice_serve.audio import decode_audio
from sensevoice_serve.bench.material import (
    default_cache_dir,
    random_full_checkpoint,
    shared_speech_dir,
    speech_material,
)
from sensevoice_serve.checkpoint import resolve_model

ENGINES_SCRIPT = Path(__file__).with_name("anchor_engines.py")
SHERPA, OURS_INT8 = "sherpa-onnx int8", "ours int8"


def interleaved_medians(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each run, the runs taking turns so that a busy moment hits them all alike."""
    for run in runs.values():
        run()  # warm-up: first-call allocations and kernel selection
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def cut(material: np.ndarray, seconds: float, index: int) -> np.ndarray:
    """The index-th stretch of ``seconds`` of the material, wrapping around."""
    count = round(seconds * SAMPLE_RATE)
    return np.tile(material, count * (index + 1) // len(material) + 2)[count * index : count * (index + 1)]


def speed_rows(engines: dict, material: np.ndarray, args: argparse.Namespace) -> list[tuple[str, dict]]:
    """(row label, {engine: cell}) for the batch and each single clip; cells hold seconds and x real time."""
    count, seconds = args.batch
    workloads = [
        (f"{count} x {seconds:g} s batch, x real time", [cut(material, seconds, i) for i in range(count)])
    ]
    workloads += [
        (f"one {length:g} s clip, latency", [cut(material, length, 0)]) for length in args.clip_seconds
    ]
    rows = []
    for label, clips in workloads:
        audio = sum(len(clip) for clip in clips) / SAMPLE_RATE
        runs = {name: (lambda run=run, clips=clips: run(clips)) for name, run in engines.items()}
        medians = interleaved_medians(runs, args.repeats)
        rows.append((label, {name: {"seconds": s, "x_real_time": audio / s} for name, s in medians.items()}))
        print(f"[anchor] {label}: done, load average {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    return rows


def cold_rows(
    names: Sequence[str], models: dict[str, Path], threads: int, clip: Path
) -> list[tuple[str, dict]]:
    """Each engine in a fresh process: seconds to ready, peak RSS with one 11 s file transcribed."""
    ready, memory = {}, {}
    for name in names:
        launched = time.time()  # wall clock: the child reports its moments on the same clock
        command = [sys.executable, str(ENGINES_SCRIPT), name, str(models[name]), str(threads), str(clip)]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if completed.returncode != 0:
            print(f"[anchor] {name} cold start failed: {completed.stderr[-400:]}", file=sys.stderr)
            continue
        marks = json.loads(completed.stdout.strip().splitlines()[-1])
        ready[name] = {"seconds": marks["ready"] - launched}
        memory[name] = {"mb": marks["peak_rss_mb"]}
    return [("ready after start (fresh process)", ready), ("peak RSS (load + one 11 s file)", memory)]


def cell(row_label: str, value: dict) -> str:
    if "x_real_time" in value:
        if row_label.endswith("x real time"):
            return f"{value['x_real_time']:.1f}x ({value['seconds']:.2f} s)"
        return f"{value['seconds'] * 1000:.0f} ms ({value['x_real_time']:.1f}x)"
    return f"{value['seconds']:.2f} s" if "seconds" in value else f"{value['mb']:.0f} MB"


def verdict(row_label: str, cells: dict) -> str:
    """The target for ours int8 in this row, and whether this run met it."""
    ours, sherpa = cells.get(OURS_INT8), cells.get(SHERPA)
    if ours is None:
        return ""
    if row_label.endswith("x real time") and sherpa:
        ratio = ours["x_real_time"] / sherpa["x_real_time"]
        return f">= 1.5x sherpa: {ratio:.2f}x {'met' if ratio >= 1.5 else 'NOT met'}"
    if "latency" in row_label and sherpa:
        share = ours["seconds"] / sherpa["seconds"]
        return f"<= sherpa: {share:.2f} of it {'met' if share <= 1 else 'NOT met'}"
    if "ready" in row_label:
        return f"<= 2 s: {'met' if ours['seconds'] <= 2 else 'NOT met'}"
    if "RSS" in row_label:
        return f"<= 600 MB: {'met' if ours['mb'] <= 600 else 'NOT met'}"
    return ""


def print_table(names: Sequence[str], rows: list[tuple[str, dict]]) -> None:
    print("| workload | " + " | ".join(names) + " | target for ours int8 |")
    print("|---|" + "---|" * (len(names) + 1))
    for label, cells in rows:
        shown = [cell(label, cells[name]) if name in cells else "-" for name in names]
        print("| " + " | ".join([label, *shown, verdict(label, cells)]) + " |", flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="model directory in the official layout")
    source.add_argument(
        "--random-weights", action="store_true", help="the cached full-size RANDOM checkpoint"
    )
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"some of: {', '.join(ENGINES)}")
    parser.add_argument("--clip-seconds", default="5,10,30", type=lambda t: [float(p) for p in t.split(",")])
    parser.add_argument(
        "--batch", default="16x10", type=lambda t: (int(t.split("x")[0]), float(t.split("x")[1]))
    )
    parser.add_argument(
        "--clips-dir", type=Path, help="recordings to cut clips from (default ../shared/audio)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for each engine")
    parser.add_argument("--skip", default="", help="sections to leave out: speed, cold, users, fidelity")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    model_dir = random_full_checkpoint(default_cache_dir()) if args.random_weights else args.model
    names = [name.strip() for name in args.engines.split(",") if name.strip()]
    unknown = set(names) - set(ENGINES)
    if unknown:
        sys.exit(f"unknown engines: {', '.join(sorted(unknown))}")
    speech_dir = args.clips_dir or shared_speech_dir()
    material = speech_material(speech_dir, 1e9)  # every recording
    label = " (RANDOM weights)" if resolve_model(model_dir).random_weights else ""
    print(f"model: {model_dir}{label}; {args.threads} CPU threads each; {os.cpu_count()} cores; "
          f"load average at start {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    models = {name: model_path(name, model_dir) for name in names}
    rows: list[tuple[str, dict]] = []
    if "speed" not in args.skip:
        engines = {name: FACTORIES[name](models[name], args.threads) for name in names}
        rows += speed_rows(engines, material, args)
        del engines
    if "cold" not in args.skip:
        with tempfile.TemporaryDirectory() as scratch:
            clip = Path(scratch) / "jfk.npy"
            np.save(clip, decode_audio(speech_dir / "jfk.flac").samples)
            rows += cold_rows(names, models, args.threads, clip)
    print_table(names, rows)
    if "users" not in args.skip:
        print("\n" + serve_and_transcribe(model_dir, args.threads, speech_dir / "jfk.flac"))
    if "fidelity" not in args.skip:
        print(
            "\n"
            + fidelity_rows(
                model_dir, models.get(SHERPA) or model_path(SHERPA, model_dir), speech_dir, args.threads
            )
        )
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
