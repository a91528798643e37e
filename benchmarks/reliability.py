"""Reliability, measured: fuzzing, overload, soak, kill -9 and the decode deadline, against a live server.

    .venv/bin/python benchmarks/reliability.py fuzz-decoder --inputs 10000 --seed 1
    .venv/bin/python benchmarks/reliability.py fuzz-http --requests 2000 --seed 1
    .venv/bin/python benchmarks/reliability.py overload --seconds 60 --factor 4
    .venv/bin/python benchmarks/reliability.py soak --requests 10000
    .venv/bin/python benchmarks/reliability.py kill-server --kills 3
    .venv/bin/python benchmarks/reliability.py kill-bulk --files 600 --kills 3
    .venv/bin/python benchmarks/reliability.py deadline

Every mode starts what it measures itself (``sensevoice serve``, supervised as users run it, on a free
loopback port, with the tiny RANDOM checkpoint unless ``--model``), stops it at the end, prints its figures
and writes them to ``--work-dir`` as JSON (``MODE.json``), with inputs that broke something under
``crashes/``. Needs the test extras and hypothesis (``pip install -e '.[test]'``). The exit code is 1 when
a mode's criteria are not met. See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # the test suite's generators; this folder's package

from reliability_checks import verdicts  # noqa: E402
from reliability_checks.material import load_clips, seed_corpus  # noqa: E402


def tiny_checkpoint(work_dir: Path) -> Path:
    """The tiny RANDOM-weight checkpoint, written once into the work directory."""
    from sensevoice_serve.checkpoint import RANDOM_WEIGHTS_MARKER
    from sensevoice_serve.random_checkpoint import write_random_checkpoint

    directory = work_dir / "tiny-model"
    if not (directory / RANDOM_WEIGHTS_MARKER).is_file():
        write_random_checkpoint(directory, "tiny", seed=0)
    return directory


def fuzz_decoder_mode(args: argparse.Namespace) -> dict:
    from reliability_checks.decoder_fuzz import fuzz_decoder

    bounds = (args.bound, args.memory_bound)
    return fuzz_decoder(seed_corpus(), args.inputs, args.seed, bounds, args.work_dir / "crashes")


def fuzz_http_mode(args: argparse.Namespace) -> dict:
    from reliability_checks.http_fuzz import fuzz_http
    from reliability_checks.server import running_server

    # Bounded so that a header claiming a rate of a few Hz cannot turn a small upload into hours of audio
    # to transcribe: such a file gets 413 instead, and every answer stays within the bound.
    with running_server(args.model, args.work_dir, max_duration_seconds=args.max_duration) as server:
        return fuzz_http(
            server,
            seed_corpus(),
            args.requests,
            args.seed,
            args.bound,
            args.clients,
            args.work_dir / "crashes",
        )


def overload_mode(args: argparse.Namespace) -> dict:
    from reliability_checks.load import request_bodies
    from reliability_checks.load_modes import measure_capacity, run_overload, warm_up
    from reliability_checks.server import running_server

    bodies = request_bodies(load_clips())
    with running_server(args.model, args.work_dir, max_queue=args.max_queue) as server:
        warm_up(server, bodies)
        levels = [int(level) for level in args.levels.split(",")]
        capacity = measure_capacity(server, bodies, levels, args.level_seconds)
        return run_overload(server, bodies, capacity, args.factor, args.seconds, args.max_queue)


def soak_mode(args: argparse.Namespace) -> dict:
    from reliability_checks.load import request_bodies
    from reliability_checks.load_modes import run_soak, warm_up
    from reliability_checks.server import running_server

    bodies = request_bodies(load_clips())
    with running_server(args.model, args.work_dir) as server:
        warm_up(server, bodies)
        return run_soak(server, bodies, args.requests, args.clients, max(1, args.requests // 40))


def kill_server_mode(args: argparse.Namespace) -> dict:
    from reliability_checks.kill_modes import run_server_kills
    from reliability_checks.load import request_bodies
    from reliability_checks.load_modes import warm_up
    from reliability_checks.server import running_server

    bodies = request_bodies(load_clips())
    with running_server(args.model, args.work_dir) as server:
        warm_up(server, bodies)
        return run_server_kills(server, bodies, args.kills, args.clients)


def kill_bulk_mode(args: argparse.Namespace) -> dict:
    from reliability_checks.kill_modes import run_bulk_kills

    clips = load_clips(lengths=(1, 2, 3))
    return run_bulk_kills(args.model, args.work_dir, clips, args.files, args.kills)


def deadline_mode(args: argparse.Namespace) -> dict:
    from reliability_checks.deadline import run_deadline

    return run_deadline(args.model, args.work_dir, load_clips(lengths=(3,))[0], args.deadline)


def provenance() -> dict:
    described = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True
    )
    return {"commit": described.stdout.strip(), "python": sys.version.split()[0]}


# Each mode: what it does, its function, its options (flag, type, default, help).
MODES: dict[str, tuple[str, Callable[[argparse.Namespace], dict], list[tuple[str, type, object, str]]]] = {
    "fuzz-decoder": (
        "damaged files through the decoder, isolated",
        fuzz_decoder_mode,
        [
            ("--inputs", int, 10000, "inputs to generate"),
            ("--seed", int, 1, "Hypothesis seed: the same inputs for the same seed"),
            ("--bound", float, 10.0, "seconds per input before it counts as a hang"),
            ("--memory-bound", float, 1024.0, "MB of peak RSS in the decoding process before it counts"),
        ],
    ),
    "fuzz-http": (
        "fuzzed requests to both endpoints of a live server",
        fuzz_http_mode,
        [
            ("--requests", int, 2000, "requests to generate"),
            ("--seed", int, 1, "Hypothesis seed: the same requests for the same seed"),
            ("--bound", float, 120.0, "seconds per answer before it counts as a hang"),
            ("--clients", int, 4, "requests in flight at once"),
            ("--max-duration", float, 300.0, "the server's max_duration_seconds"),
        ],
    ),
    "overload": (
        "capacity, then factor x capacity for a while",
        overload_mode,
        [
            ("--factor", float, 4.0, "offered load over the measured capacity"),
            ("--seconds", float, 60.0, "how long the overload lasts"),
            ("--levels", str, "1,2,4,8,16", "client counts for the capacity search"),
            ("--level-seconds", float, 20.0, "how long each client count runs"),
            ("--max-queue", int, 64, "the server's max_queue"),
        ],
    ),
    "soak": (
        "many requests of mixed lengths; memory after warm-up",
        soak_mode,
        [
            ("--requests", int, 10000, "requests in all"),
            ("--clients", int, 4, "clients sending back to back"),
        ],
    ),
    "kill-server": (
        "SIGKILL the serving process under load",
        kill_server_mode,
        [
            ("--kills", int, 3, "kills, each after the replacement served a while"),
            ("--clients", int, 4, "load"),
        ],
    ),
    "kill-bulk": (
        "SIGKILL a bulk CLI run, rerun until done",
        kill_bulk_mode,
        [
            ("--files", int, 600, "short files in the folder"),
            ("--kills", int, 3, "kills before the last run"),
        ],
    ),
    "deadline": (
        "a decompression bomb against the decode deadline",
        deadline_mode,
        [("--deadline", float, 3.0, "the server's decode_timeout_seconds")],
    ),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work-dir", type=Path, default=Path("reliability-results"))
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: a tiny RANDOM one)")
    modes = parser.add_subparsers(dest="mode", required=True)
    for name, (description, run, options) in MODES.items():
        mode = modes.add_parser(name, help=description)
        for flag, kind, default, explained in options:
            mode.add_argument(flag, type=kind, default=default, help=f"{explained} (default: {default})")
        mode.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.work_dir = args.work_dir.resolve()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        args.model = tiny_checkpoint(args.work_dir)
    run: Callable[[argparse.Namespace], dict] = args.run
    figures = {"mode": args.mode, "provenance": provenance(), **run(args)}
    problems = verdicts.problems(args.mode, figures)
    figures["problems"] = problems
    (args.work_dir / f"{args.mode}.json").write_text(json.dumps(figures, indent=1, default=str))
    print(verdicts.render(figures))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
