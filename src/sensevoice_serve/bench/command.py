"""``sensevoice bench``: the flags, and which run they ask for (bench, --tune or --compare).

Only the standard library is imported at the top: the CLI imports this module to register the command,
and the engine loads when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InvalidOption

if TYPE_CHECKING:
    from .material import BenchClip

DEFAULT_CLIP_SECONDS = (5.0, 10.0, 30.0, 60.0)
DEFAULT_CONCURRENCY = (1, 4, 16, 64)
DEFAULT_REQUESTS = 20
EXIT_OK, EXIT_REQUEST_ERRORS = 0, 1
# Comma-separated lists of positive numbers: flag, type of each number, default, metavar, what it is.
NUMBER_LIST_FLAGS = (
    ("--clip-seconds", float, DEFAULT_CLIP_SECONDS, "S,S,...", "clip lengths cut from real speech, as mp3"),
    ("--concurrency", int, DEFAULT_CONCURRENCY, "N,N,...", "concurrent clients for throughput"),
)
# What serve would use (the tuned profile, else the automatic choice), overridden by these: name, type, help.
SETTINGS_FLAGS = (
    ("device", str, "auto | cpu | cuda | cuda:N (default: tuned / automatic)"),
    ("dtype", str, "auto | fp32 | fp16 | bf16 | int8 (CPU) (default: tuned / automatic)"),
    ("torch_threads", int, "torch's intra-op threads"),
    ("decode_workers", int, "audio decoding processes"),
    ("max_batch_frames", int, "padded 60 ms frames per forward"),
    ("max_wait_ms", float, "how long a request waits for company"),
)


def _numbers(kind: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from error
        if not values or any(value <= 0 for value in values):
            raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
        return values

    return parse


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "bench",
        help="measure latency, throughput and memory on this machine (--tune, --compare)",
        description="Measure this machine through the path the server uses; see benchmarks/README.md.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="model directory or hub id (default: the configured model)")
    source.add_argument(
        "--random-weights",
        action="store_true",
        help="a generated full-size RANDOM-weight checkpoint, cached in ~/.cache/sensevoice-serve/"
        "random-full (speed does not depend on weight values; results are labelled)",
    )
    for flag, kind, default, metavar, what in NUMBER_LIST_FLAGS:
        shown = ",".join(f"{value:g}" for value in default)
        parser.add_argument(
            flag, type=_numbers(kind), default=default, metavar=metavar, help=f"{what} (default: {shown})"
        )
    parser.add_argument(
        "--clips", nargs="+", metavar="FILE", help="benchmark these files instead, a row each"
    )
    parser.add_argument(
        "--clips-dir", help="recordings to cut clips from (default: ../shared/audio beside the checkout)"
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=DEFAULT_REQUESTS,
        help=f"one-at-a-time requests per clip for the latency percentiles, and the least sent at each "
        f"concurrency (default {DEFAULT_REQUESTS})",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="also write the results as JSON to PATH; alone, print JSON instead of the tables",
    )
    for name, kind, what in SETTINGS_FLAGS:
        parser.add_argument("--" + name.replace("_", "-"), type=kind, help=what)
    parser.add_argument(
        "--devices",
        help="an engine on each of these (cuda:0,cuda:1), requests routed as serve routes them; the "
        "report adds what each device did (default: one device)",
    )
    parser.add_argument(
        "--tune",
        action="store_true",
        help="measure a few settings candidates and write the best to the profile serve and transcribe load",
    )
    parser.add_argument(
        "--profile",
        help="where --tune writes the profile (default: the one serve and transcribe load, "
        "~/.config/sensevoice-serve/profile.json or $SENSEVOICE_PROFILE)",
    )
    parser.add_argument(
        "--compare", nargs=2, metavar=("A.json", "B.json"), help="print two --json results side by side"
    )
    parser.set_defaults(handler=_bench_command)


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _emit(report: dict, markdown: str, json_target: str | None) -> None:
    text = json.dumps(report, indent=2)
    if json_target == "-":
        print(text)
        return
    if json_target:
        Path(json_target).write_text(text + "\n")
    print(markdown, end="")


def _model_dir(args: argparse.Namespace) -> Path:
    from ..checkpoint import resolve_model
    from ..settings import load_settings
    from .material import default_cache_dir, random_full_checkpoint

    if args.random_weights:
        _progress("using the full-size RANDOM-weight checkpoint (generated once, ~0.9 GB)")
        return random_full_checkpoint(default_cache_dir())
    # A hub id becomes its local directory once, here, so every process below loads the same files.
    return resolve_model(args.model or load_settings().model).directory


def _clips(args: argparse.Namespace) -> list[BenchClip]:
    from .material import file_clips, shared_speech_dir, speech_clips, speech_material

    if args.clips:
        return file_clips(args.clips)
    speech_dir = Path(args.clips_dir) if args.clips_dir else shared_speech_dir()
    if speech_dir is None:
        raise InvalidOption("no recordings to cut clips from: pass --clips-dir DIR or --clips FILE...")
    return speech_clips(args.clip_seconds, speech_material(speech_dir, max(args.clip_seconds)))


def _bench_command(args: argparse.Namespace) -> int:
    if args.compare:
        from .compare import load_report, render_comparison

        print(render_comparison(load_report(args.compare[0]), load_report(args.compare[1])), end="")
        return EXIT_OK
    if args.requests < 1:
        raise InvalidOption("--requests must be at least 1")
    from ..tuning import default_profile_path, probe_machine, resolve_tuned_settings, save_profile
    from .report import render_markdown, render_tune_markdown
    from .run import run_bench
    from .tune import run_tune, untuned_settings

    model_dir, clips = _model_dir(args), _clips(args)
    explicit = {
        name: getattr(args, name)
        for name, _, _ in SETTINGS_FLAGS
        if getattr(args, name) not in (None, "auto")
    }
    if args.tune:
        baseline = untuned_settings(explicit, probe_machine())
        report, best = run_tune(model_dir, clips, baseline, args.requests, max(args.concurrency), _progress)
        profile = save_profile(Path(args.profile) if args.profile else default_profile_path(), best)
        markdown = render_tune_markdown(report) + f"\nWrote the best settings to {profile}.\n"
        _emit(report, markdown, args.json)
        return EXIT_OK
    report = run_bench(
        model_dir, clips, resolve_tuned_settings(explicit), args.requests, args.concurrency, _progress,
        args.devices,
    )  # fmt: skip
    _emit(report, render_markdown(report), args.json)
    return EXIT_REQUEST_ERRORS if any(row["stability"]["errors"] for row in report["clips"]) else EXIT_OK
