"""The ``sensevoice`` command."""

from __future__ import annotations

import argparse
import glob
import importlib
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from .errors import SenseVoiceError
from .settings import Settings, load_settings

if TYPE_CHECKING:
    from .checkpoint import ModelFiles
    from .manifest import ResumePlan
    from .tuning import TunedSettings

AUDIO_SUFFIXES = {
    ".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus", ".oga", ".webm", ".mp4", ".mkv", ".mov",
    ".wma", ".amr", ".aiff", ".aif", ".caf", ".3gp", ".avi",
}  # fmt: skip
EXIT_OK, EXIT_FILE_ERRORS, EXIT_USAGE = 0, 1, 2
# Modules that add their own subcommand through register(commands).
COMMAND_MODULES = ("server", "doctor", "bench", "export")
GLOB_CHARACTERS = set("*?[")
PROGRESS_SECONDS = 0.5  # least time between redraws of the progress bar


def expand_inputs(paths: Sequence[str]) -> list[Path]:
    """Files as given, glob patterns expanded, directories searched recursively for audio and video."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        elif not path.exists() and GLOB_CHARACTERS & set(raw):
            found += sorted(Path(p) for p in glob.glob(raw, recursive=True) if Path(p).is_file())
        else:
            found.append(path)
    return found


class _Progress:
    """Files done, audio hours and speed (x real time) on one bar, moving within long files too.

    One file gets a bar only on a terminal, where a long recording would otherwise show nothing for minutes.
    """

    def __init__(self, total: int):
        self.live = sys.stderr.isatty()  # in a log file, redraws within files would only add lines
        quiet = total < 2 and not self.live
        self.bar = tqdm(total=total, unit="file", disable=quiet, file=sys.stderr, dynamic_ncols=True)
        self.finished_seconds = 0.0
        self.reached: dict[object, float] = {}  # files under way: seconds transcribed so far
        self.started = time.perf_counter()
        self.shown_at = 0.0

    def advance(self, key: object, seconds: float) -> None:
        self.reached[key] = max(self.reached.get(key, 0.0), seconds)
        self._show()

    def done(self, key: object, audio_seconds: float = 0.0) -> None:
        self.reached.pop(key, None)
        self.finished_seconds += audio_seconds
        self._show()
        self.bar.update()

    def _show(self) -> None:
        if self.bar.disable:
            return
        audio_seconds = self.finished_seconds + sum(self.reached.values())
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        self.bar.set_postfix_str(
            f"{audio_seconds / 3600:.2f} h audio, {audio_seconds / elapsed:.1f}x real time", refresh=False
        )
        if self.live and elapsed - self.shown_at >= PROGRESS_SECONDS:  # a segment can take milliseconds
            self.shown_at = elapsed
            self.bar.refresh()

    def write(self, message: str) -> None:
        self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def run_transcribe(files: list[Path], settings: Settings) -> int:
    """Transcribe ``files`` into the outputs ``settings`` ask for; the exit code."""
    from .checkpoint import resolve_model

    if not files:
        print("error: no audio files found", file=sys.stderr)
        return EXIT_USAGE
    if conflict := _output_conflict(settings):
        print(f"error: {conflict}", file=sys.stderr)
        return EXIT_USAGE
    settings.decode_options()  # bad hotwords or beam size: refused before any model loads
    if settings.ray:
        from .ray.command import transcribe_on_ray

        return transcribe_on_ray(files, settings)
    tuned = settings.tuned()
    model_files = resolve_model(settings.model)  # a hub id is downloaded once, here
    failures = 0
    keys: dict[Path, str] = {}
    if settings.output:
        plan = _plan_bulk_run(files, settings, model_files, tuned.dtype)
        failures = len(plan.unreadable) + plan.not_retried
        files, keys = plan.todo, plan.keys
    if files:
        failures += _transcribe_files(files, settings, tuned, model_files.directory, keys)
    return EXIT_FILE_ERRORS if failures else EXIT_OK


def _output_conflict(settings: Settings) -> str | None:
    """Why the output flags cannot all be honoured, if they cannot."""
    if settings.output and Path(settings.output).suffix.lower() == ".parquet" and not settings.ray:
        return "--output *.parquet needs --ray (Ray Data writes Parquet); without it use a .jsonl file"
    explicit_format = "output_format" in settings.model_fields_set and settings.output_format != "json"
    if settings.output and explicit_format and not settings.output_dir:
        return (
            f"--format {settings.output_format} has nowhere to go: --output writes JSON Lines only; "
            f"add --output-dir DIR to also write {settings.output_format} files"
        )
    return None


def _plan_bulk_run(files: list[Path], settings: Settings, model_files: ModelFiles, dtype: str) -> ResumePlan:
    """The files a bulk run still has to do; says what it leaves out, and why."""
    from .manifest import plan_resume

    manifest = Path(settings.output)
    plan = plan_resume(files, manifest, output_options(settings, model_files, dtype), settings.retry_failed)
    report_plan(plan, manifest)
    return plan


def output_options(settings: Settings, model_files: ModelFiles, dtype: str) -> dict:
    """What changes a file's result, besides the file: part of its key in a bulk results file."""
    from .device import DTYPES
    from .manifest import file_identity

    options = {
        "model": [file_identity(path) for path in model_files.paths],  # new weights: every file again
        "dtype": DTYPES.get(dtype, dtype),
        "language": settings.language,
        "use_itn": settings.use_itn,
        "ban_emo_unk": settings.ban_emo_unk,
        "vad": settings.vad,
        "max_segment_seconds": settings.max_segment_seconds,
        "split_channels": settings.split_channels,
    }
    decoding = settings.decode_options()
    if decoding.beam_size > 1:  # greedy keeps the keys of runs made before beam search existed
        options["beam_size"] = decoding.beam_size
        options["hotwords"] = [[hotword.phrase, hotword.boost] for hotword in decoding.hotwords]
    return options


def report_plan(plan: ResumePlan, manifest: Path) -> None:
    """Say what a bulk run leaves out of ``plan``, and why."""
    for path, reason in plan.unreadable:
        print(f"error: {path}: {reason}", file=sys.stderr)
    if plan.already_done:
        print(f"{plan.already_done} file(s) already in {manifest}: skipped", file=sys.stderr)
    if plan.not_retried:
        print(
            f"{plan.not_retried} recorded failure(s) in {manifest} not retried (use --retry-failed)",
            file=sys.stderr,
        )


def _transcribe_files(
    files: list[Path], settings: Settings, tuned: TunedSettings, model_dir: Path, keys: dict[Path, str]
) -> int:
    """Transcribe into the sinks the settings ask for; the number of files that failed."""
    from .longform import SegmentationOptions, transcribe_sources
    from .pipeline import SenseVoice
    from .sinks import open_sinks

    engine = SenseVoice.from_pretrained(
        model_dir,
        device=tuned.device,
        dtype=tuned.dtype,
        cache_dir=settings.cache_dir,
        threads=tuned.torch_threads,
    )
    progress = _Progress(len(files))
    options = settings.decode_options()
    for reason in engine.decoder.prepare(options):  # once for the run, not with every file's warnings
        progress.write(f"warning: {reason}")
    sinks = open_sinks(settings, keys, several=len(files) > 1)
    outcomes = transcribe_sources(
        engine,
        enumerate(files),
        options,
        SegmentationOptions(settings.vad, settings.max_segment_seconds, settings.split_channels),
        max_batch_frames=tuned.max_batch_frames,
        batch_size=settings.batch_size,
        on_progress=progress.advance,
    )
    failures = 0
    try:
        for outcome in outcomes:
            path = files[outcome.key]
            if outcome.error is not None:
                failures += 1
                progress.write(f"error: {path}: {outcome.error}")
                for sink in sinks:
                    sink.fail(path, str(outcome.error))
                progress.done(outcome.key)
                continue
            for warning in outcome.result.warnings:
                progress.write(f"warning: {path}: {warning}")
            for sink in sinks:
                sink.write(path, outcome.result)
            progress.done(outcome.key, outcome.result.duration)
    finally:
        outcomes.close()  # after an error here (a full disk) the decoding thread stops too
        progress.close()
        for sink in sinks:
            sink.close()
    return failures


def _add_engine_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model directory or hub id (default: iic/SenseVoiceSmall)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", help="auto | fp32 | fp16 | bf16 | int8 (CPU)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sensevoice", description="SenseVoiceSmall speech understanding")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)

    transcribe = commands.add_parser("transcribe", help="transcribe audio/video files or directories")
    transcribe.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR")
    _add_engine_flags(transcribe)
    transcribe.add_argument("--language", help="auto | zh | en | yue | ja | ko")
    transcribe.add_argument("--itn", dest="use_itn", action=argparse.BooleanOptionalAction, default=None,
                            help="punctuation and inverse text normalisation (default: on)")  # fmt: skip
    transcribe.add_argument("--ban-emo-unk", action=argparse.BooleanOptionalAction, default=None)
    transcribe.add_argument("--format", dest="output_format", choices=["json", "txt", "srt", "vtt", "tsv"])
    transcribe.add_argument("--output-dir", help="write one file per input here (default: standard output)")
    transcribe.add_argument(
        "--output", help="bulk mode: append one JSON line per file here; reruns skip done files"
    )
    transcribe.add_argument(
        "--retry-failed", action="store_true", default=None, help="bulk mode: retry recorded failures"
    )
    transcribe.add_argument(
        "--vad", choices=["auto", "on", "off"], help="segment long audio (auto: when over the cap)"
    )
    transcribe.add_argument(
        "--max-segment-seconds", type=float, help="longest segment the model sees (default 30)"
    )
    transcribe.add_argument(
        "--split-channels", action="store_true", default=None, help="transcribe each channel alone"
    )
    transcribe.add_argument(
        "--beam-size", type=int, help="1: greedy; 2-16: beam search (default: 1, or 4 with hotwords)"
    )
    transcribe.add_argument("--hotwords", help="phrases to boost, comma-separated: 'ComfyUI:3.0,张三'")
    transcribe.add_argument("--hotwords-file", help="more hotwords, one per line (phrase or phrase:boost)")
    transcribe.add_argument("--hotword-score", type=float, help="boost of a hotword without one (1.5)")
    transcribe.add_argument("--batch-size", type=int, help="at most this many utterances per forward")
    transcribe.add_argument("--torch-threads", type=int, help="torch threads (default: tuned)")
    transcribe.add_argument("--max-batch-frames", type=int, help="padded 60 ms frames per forward")
    transcribe.add_argument(
        "--ray", action="store_true", default=None, help="run on Ray Data (also: --output results.parquet)"
    )
    transcribe.add_argument("--ray-address", help="with --ray: a running Ray cluster (default: a local one)")

    transcribe.set_defaults(handler=_transcribe_command)

    make = commands.add_parser(
        "make-test-model", help="write a RANDOM-weight model directory (tests, benchmarks)"
    )
    make.add_argument("size", choices=["tiny", "full"])
    make.add_argument("directory")
    make.add_argument("--seed", type=int, default=0)
    make.set_defaults(handler=_make_test_model_command)

    for module in COMMAND_MODULES:
        importlib.import_module(f"sensevoice_serve.{module}").register(commands)
    return parser


def _transcribe_command(args: argparse.Namespace) -> int:
    flags = {k: v for k, v in vars(args).items() if k not in {"command", "inputs", "verbose", "handler"}}
    return run_transcribe(expand_inputs(args.inputs), load_settings(**flags))


def _make_test_model_command(args: argparse.Namespace) -> int:
    from .random_checkpoint import write_random_checkpoint

    path = write_random_checkpoint(args.directory, args.size, args.seed)
    print(f"wrote a {args.size} RANDOM-weight SenseVoiceSmall checkpoint to {path}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        return args.handler(args)
    except SenseVoiceError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
