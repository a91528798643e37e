"""The ``sensevoice`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from tqdm import tqdm

from .errors import SenseVoiceError
from .settings import Settings, load_settings

AUDIO_SUFFIXES = {
    ".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus", ".oga", ".webm", ".mp4", ".mkv", ".mov",
    ".wma", ".amr", ".aiff", ".aif", ".caf", ".3gp", ".avi",
}  # fmt: skip
FILES_PER_CHUNK = 64  # decoded audio held at once in a transcribe run

EXIT_OK, EXIT_FILE_ERRORS, EXIT_USAGE = 0, 1, 2


def expand_inputs(paths: Sequence[str]) -> list[Path]:
    """Files as given; directories searched recursively for audio and video files, sorted."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        else:
            found.append(path)
    return found


def _chunks(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _output_path(source: Path, output_dir: Path, output_format: str, used: set[Path]) -> Path:
    """``DIR/stem.fmt``; inputs that share a stem (a.wav, a.mp3) get the full file name instead."""
    target = output_dir / f"{source.stem}.{output_format}"
    if target in used:
        target = output_dir / f"{source.name}.{output_format}"
    used.add(target)
    return target


def run_transcribe(files: list[Path], settings: Settings) -> int:
    from .audio import decode_audio
    from .decoding import DecodeOptions
    from .pipeline import SenseVoice, Utterance
    from .results import Transcription
    from .writers import WRITERS

    if not files:
        print("error: no audio files found", file=sys.stderr)
        return EXIT_USAGE
    options = DecodeOptions(settings.language, settings.use_itn, settings.ban_emo_unk)
    engine = SenseVoice.from_pretrained(settings.model, device=settings.device, dtype=settings.dtype)
    if engine.random_weights:
        print(f"warning: {settings.model} holds RANDOM weights; its text is meaningless", file=sys.stderr)
    write = WRITERS[settings.output_format]
    output_dir = Path(settings.output_dir) if settings.output_dir else None
    if output_dir:
        output_dir.mkdir(parents=True, exist_ok=True)
    used: set[Path] = set()
    failures = 0
    progress = tqdm(total=len(files), unit="file", disable=len(files) < 2, file=sys.stderr)
    for chunk in _chunks(files, FILES_PER_CHUNK):
        decoded = []
        for path in chunk:
            try:
                decoded.append((path, decode_audio(path)))
            except SenseVoiceError as error:
                failures += 1
                progress.write(f"error: {path}: {error}", file=sys.stderr)
                progress.update()
        segments = engine.run_utterances(
            [Utterance(audio.samples, options) for _, audio in decoded],
            settings.max_batch_frames,
            settings.batch_size,
        )
        for (path, audio), segment in zip(decoded, segments, strict=True):
            result = Transcription(str(path), audio.duration, [segment], audio.warnings)
            for warning in audio.warnings:
                progress.write(f"warning: {path}: {warning}", file=sys.stderr)
            text = write(result)
            if output_dir:
                _output_path(path, output_dir, settings.output_format, used).write_text(
                    text, encoding="utf-8"
                )
            else:
                sys.stdout.write(text)
                sys.stdout.flush()
            progress.update()
    progress.close()
    return EXIT_FILE_ERRORS if failures else EXIT_OK


def _add_engine_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model directory or hub id (default: iic/SenseVoiceSmall)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", help="auto | fp32 | fp16 | bf16")


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
    transcribe.add_argument("--batch-size", type=int, help="at most this many utterances per forward")
    transcribe.add_argument("--max-batch-frames", type=int, help="padded 60 ms frames per forward")

    transcribe.set_defaults(handler=_transcribe_command)

    make = commands.add_parser(
        "make-test-model", help="write a RANDOM-weight model directory (tests, benchmarks)"
    )
    make.add_argument("size", choices=["tiny", "full"])
    make.add_argument("directory")
    make.add_argument("--seed", type=int, default=0)
    make.set_defaults(handler=_make_test_model_command)
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
