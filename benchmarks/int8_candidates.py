"""Which CPU runtime runs the model fastest here, and how close each stays to float32: every candidate side by
side on one machine, the same threads and the same features each (issue 12: choose the int8 runtime by
measurement). The candidates live in ``int8_candidate_factories.py``.

    .venv/bin/pip install -c constraints.txt -e '.[bench]'     # openvino, nncf, torchao
    .venv/bin/python benchmarks/int8_candidates.py [--model DIR] [--threads 2] [--repeats 5]

Per candidate, one table row:

- 16 x 10 s batch (x real time) and one 10 s clip (ms): the encoder + CTC forward over NumPy features
  (``FeatureExtractor`` on the CPU), clips cut from ../shared/audio; medians of ``--repeats`` after a
  warm-up, all candidates in this one process taking turns (A, B, C, A, B, C...) so that a busy moment
  hits all alike;
- load (s) and peak RSS (MB): a fresh process per candidate, from the files (artifacts already built) to
  ready, its imports included; peak RSS (VmHWM) once it has also run the 10 s clip. The bare process
  (interpreter, NumPy and this script's imports) is the ``baseline`` row;
- fidelity to torch float32 on every recording in ../shared/audio, in pieces of at most 30 s: the share of
  frames with the same best token and the logits' relative error (``bench/fidelity.py``).

Default model: the full-size RANDOM checkpoint (as ``anchor.py --random-weights``). Built artifacts go
under ~/.cache/sensevoice-serve/candidates/ (the sherpa-onnx export is shared with ``anchor.py``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
from anchor import cut, interleaved_medians
from anchor_engines import peak_rss_mb
from int8_candidate_factories import BASELINE, FACTORIES, Loaded, baseline, candidates_dir

from sensevoice_serve.bench.fidelity import measure_fidelity, recording_pieces
from sensevoice_serve.bench.material import (
    default_cache_dir,
    random_full_checkpoint,
    shared_speech_dir,
    speech_material,
)
from sensevoice_serve.features import FeatureExtractor

SCRIPT = Path(__file__).resolve()
AUDIO_SUFFIXES = {".flac", ".mp3", ".wav", ".ogg", ".m4a"}
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")
REFERENCE = "torch fp32"
PACKAGES = ("torch", "onnxruntime", "openvino", "nncf", "torchao")


def load_all(names: Sequence[str], model_dir: Path, threads: int, probe: tuple) -> dict[str, Loaded | str]:
    """Each candidate loaded (its artifacts built first if needed) and run once; a failure is its message."""
    loaded: dict[str, Loaded | str] = {}
    for name in names:
        started = time.perf_counter()
        try:
            candidate = FACTORIES[name](model_dir, threads)
            candidate.logits(*probe)
        except Exception as error:  # a candidate that cannot run here is a result, not a crash
            loaded[name] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:160]}"
        else:
            loaded[name] = candidate
        log(f"{name}: ready in {time.perf_counter() - started:.1f} s")
    return loaded


def speed(runnable: dict[str, Loaded], workloads: dict[str, tuple], repeats: int) -> dict[str, dict]:
    """{workload: {candidate: median seconds}}, the candidates taking turns."""
    results = {}
    for label, inputs in workloads.items():
        runs = {name: (lambda c=c, inputs=inputs: c.logits(*inputs)) for name, c in runnable.items()}
        results[label] = interleaved_medians(runs, repeats)
        log(f"{label}: done, load average {os.getloadavg()[0]:.1f}")
    return results


def fidelity(runnable: dict[str, Loaded], features: FeatureExtractor, speech_dir: Path) -> dict[str, dict]:
    """{candidate: Fidelity.to_dict()} against torch float32 (none when it is not among the candidates)."""
    if REFERENCE not in runnable:
        log(f"fidelity: skipped, {REFERENCE} is not among the candidates")
        return {}
    paths = [path for path in sorted(speech_dir.iterdir()) if path.suffix.lower() in AUDIO_SUFFIXES]
    pieces = recording_pieces(paths)
    single = {name: (lambda f, n, c=c: c.logits(f, n)[0]) for name, c in runnable.items()}
    results = measure_fidelity(features, pieces, single[REFERENCE], single)
    log(f"fidelity: {len(pieces)} pieces of {len(paths)} recordings")
    return {name: result.to_dict() for name, result in results.items()}


def cold(names: Sequence[str], model_dir: Path, threads: int, probe_file: Path) -> dict[str, dict]:
    """{candidate: {"load_s", "peak_rss_mb"}}, each in a fresh process (``--child``)."""
    results = {}
    for name in [BASELINE, *names]:
        command = [sys.executable, str(SCRIPT), "--child", name, "--model", str(model_dir),
                   "--threads", str(threads), "--probe", str(probe_file)]  # fmt: skip
        completed = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if completed.returncode != 0:
            log(f"{name}: fresh process failed: {completed.stderr.strip()[-300:]}")
            continue
        results[name] = json.loads(completed.stdout.strip().splitlines()[-1])
    return results


def child(name: str, model_dir: Path, threads: int, probe_file: Path) -> None:
    """This process as ``cold`` measures it: load, one forward, then the moments and peak RSS as JSON."""
    with np.load(probe_file) as probe:
        features, lengths = probe["features"], probe["lengths"]
    started = time.perf_counter()
    candidate = {BASELINE: baseline, **FACTORIES}[name](model_dir, threads)
    ready = time.perf_counter()
    candidate.logits(features, lengths)
    print(json.dumps({"load_s": ready - started, "peak_rss_mb": peak_rss_mb()}))


def workloads(features: FeatureExtractor, material: np.ndarray, batch: int, seconds: float) -> dict:
    """The two timed inputs: ``batch`` clips of ``seconds`` (all alike in length, no padding) and one."""
    return {
        "batch": features([cut(material, seconds, i) for i in range(batch)]),
        "one": features([cut(material, seconds, 0)]),
    }


def row(name: str, note: str, figures: dict, audio: dict[str, float]) -> str:
    timed = figures["speed"]
    batch = timed.get("batch", {}).get(name)
    one = timed.get("one", {}).get(name)
    started, close = figures["cold"].get(name), figures["fidelity"].get(name)
    cells = [
        name,
        f"{audio['batch'] / batch:.1f}x ({batch:.2f} s)" if batch else "-",
        f"{one * 1000:.0f}" if one else "-",
        f"{started['load_s']:.2f}" if started else "-",
        f"{started['peak_rss_mb']:.0f}" if started else "-",
        f"{close['frame_agreement']:.2%}" if close else "-",
        f"{close['logits_relative_error']:.4f}" if close else "-",
        note,
    ]
    return "| " + " | ".join(cells) + " |"


def print_table(notes: dict[str, str], figures: dict, audio: dict[str, float], batch: int) -> None:
    print(f"| candidate | {batch} x 10 s (x RT) | one 10 s (ms) | load (s) | peak RSS (MB) "
          "| frames agreeing with fp32 | logits rel. error | notes |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    baseline = figures["cold"].get(BASELINE)
    if baseline:
        print(f"| {BASELINE} | - | - | - | {baseline['peak_rss_mb']:.0f} | - | - "
              "| bare interpreter, NumPy and this script's imports |")  # fmt: skip
    for name, note in notes.items():
        print(row(name, note, figures, audio), flush=True)


def describe_machine(model_dir: Path, threads: int) -> None:
    from sensevoice_serve.checkpoint import resolve_model
    from sensevoice_serve.runtimes import cpu_flags

    flags = cpu_flags()
    shown = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in ISA_FLAGS)
    versions = ", ".join(f"{package} {installed_version(package)}" for package in PACKAGES)
    random = " (RANDOM weights)" if resolve_model(model_dir).random_weights else ""
    print(f"model: {model_dir}{random}; {threads} threads each; {os.cpu_count()} cores")
    print(f"CPU flags: {shown}\n{versions}\nload average at start {os.getloadavg()[0]:.2f}\n", flush=True)


def installed_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def log(message: str) -> None:
    print(f"[candidates] {message}", file=sys.stderr, flush=True)


def measure(args: argparse.Namespace, names: list[str]) -> None:
    speech_dir = args.clips_dir or shared_speech_dir()
    features = FeatureExtractor.from_model_dir(args.model, "cpu")
    timed_inputs = workloads(features, speech_material(speech_dir, 1e9), args.batch, args.clip_seconds)
    audio = {"batch": args.batch * args.clip_seconds, "one": args.clip_seconds}
    loaded = load_all(names, args.model, args.threads, timed_inputs["one"])
    runnable = {name: c for name, c in loaded.items() if isinstance(c, Loaded)}
    figures: dict[str, dict] = {"speed": {}, "cold": {}, "fidelity": {}}
    if "speed" not in args.skip:
        figures["speed"] = speed(runnable, timed_inputs, args.repeats)
    if "fidelity" not in args.skip:
        figures["fidelity"] = fidelity(runnable, features, speech_dir)
    notes = {name: c if isinstance(c, str) else c.note for name, c in loaded.items()}
    del loaded, runnable
    gc.collect()  # the models, before the fresh processes measure their memory
    if "cold" not in args.skip:
        with tempfile.TemporaryDirectory() as scratch:
            probe_file = Path(scratch) / "probe.npz"
            np.savez(probe_file, features=timed_inputs["one"][0], lengths=timed_inputs["one"][1])
            working = [name for name in names if not notes[name].startswith("failed")]
            figures["cold"] = cold(working, args.model, args.threads, probe_file)
    print_table(notes, figures, audio, args.batch)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="model directory (default: the full-size RANDOM one)")
    parser.add_argument("--candidates", default=",".join(FACTORIES), help=f"some of: {', '.join(FACTORIES)}")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for each candidate")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16, help="clips in the timed batch")
    parser.add_argument("--clip-seconds", type=float, default=10.0)
    parser.add_argument("--clips-dir", type=Path, help="recordings (default ../shared/audio)")
    parser.add_argument("--skip", default="", help="sections to leave out: speed, cold, fidelity")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--probe", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.model = args.model or random_full_checkpoint(default_cache_dir())
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        child(args.child, args.model, args.threads, args.probe)
        return
    names = [name.strip() for name in args.candidates.split(",") if name.strip()]
    unknown = set(names) - set(FACTORIES)
    if unknown:
        sys.exit(f"unknown candidates: {', '.join(sorted(unknown))}")
    describe_machine(args.model, args.threads)
    log(f"artifacts in {candidates_dir()}")
    measure(args, names)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
