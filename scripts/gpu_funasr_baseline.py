"""funasr's AutoModel against ours on one device: the same checkpoint, clips and batches (gpu-check.sh step).

    python3 scripts/gpu_funasr_baseline.py --model DIR --clips-dir DIR [--device cuda] \
        [--dtypes fp32,bf16] [--clip-seconds 5,10,30] [--repeats 5] [--json PATH]

AutoModel is how most users run SenseVoiceSmall; on a GPU it runs in fp32. Every engine gets the same 16 kHz
samples (decoding is ``sensevoice bench``'s business), cut from the recordings in ``--clips-dir`` joined end
to end: one clip at a time for each length, then all of them as one batch. Figures are medians of
``--repeats`` timed runs after a warm-up, the engines taking turns so that a busy moment hits all alike; the
ratio is funasr's time over ours (above 1: ours is faster). Prints a markdown table; ``--json`` also writes
the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from sensevoice_serve.audio import SAMPLE_RATE, decode_audio
from sensevoice_serve.errors import AudioDecodeError
from sensevoice_serve.pipeline import SenseVoice

Transcriber = Callable[[Sequence[np.ndarray]], object]
FUNASR = "funasr AutoModel (fp32)"


def speech(directory: Path, seconds: float) -> np.ndarray:
    """The decodable recordings in ``directory``, by name, joined and repeated to at least ``seconds``."""
    pieces = []
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        try:
            pieces.append(decode_audio(path).samples)
        except AudioDecodeError:
            continue  # the README
    if not pieces:
        raise SystemExit(f"no decodable audio in {directory}")
    joined = np.concatenate(pieces)
    return np.tile(joined, int(np.ceil(seconds * SAMPLE_RATE / len(joined))))


def funasr_transcriber(model_dir: Path, device: str) -> Transcriber:
    threads = torch.get_num_threads()
    with contextlib.redirect_stdout(sys.stderr):  # its notices would land in the markdown on stdout
        from funasr import AutoModel

        model = AutoModel(
            model=str(model_dir),
            device=device,
            ncpu=threads,  # AutoModel sets torch's process-wide thread count from it (default 4)
            disable_update=True,
            log_level="ERROR",
            frontend_conf={"dither": 0.0},
        )
    torch.set_num_threads(threads)

    def transcribe(clips: Sequence[np.ndarray]) -> object:
        batch = len(clips)
        return model.generate(
            input=list(clips), language="auto", use_itn=True, batch_size=batch, disable_pbar=True
        )

    return transcribe


def our_transcriber(model_dir: Path, device: str, dtype: str, longest_seconds: float) -> Transcriber:
    engine = SenseVoice.from_pretrained(model_dir, device=device, dtype=dtype)
    cap = max(30.0, longest_seconds + 1)  # one utterance per clip, as AutoModel runs them

    def transcribe(clips: Sequence[np.ndarray]) -> object:
        return engine.transcribe(list(clips), language="auto", use_itn=True, max_segment_seconds=cap)

    return transcribe


def taking_turns(engines: dict[str, Transcriber], clips: Sequence[np.ndarray], repeats: int) -> dict:
    """Median seconds of each engine on ``clips``, after one warm-up run each."""
    for transcribe in engines.values():
        transcribe(clips)
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(repeats):
        for name, transcribe in engines.items():
            started = time.perf_counter()
            transcribe(clips)
            seconds[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in seconds.items()}


def markdown(rows: list[dict], names: list[str]) -> str:
    ours = [name for name in names if name != FUNASR]
    lines = [
        "| clips | audio s | " + " | ".join(names) + " | " + " | ".join(f"funasr / {n}" for n in ours) + " |",
        "|---|---|" + "---|" * (len(names) + len(ours)),
    ]
    for row in rows:
        times = row["median_seconds"]
        cells = [
            f"{times[n] * 1000:.1f} ms ({row['audio_seconds'] / times[n]:.0f}× real time)" for n in names
        ]
        ratios = [f"{times[FUNASR] / times[n]:.2f}×" for n in ours]
        lines.append(f"| {row['label']} | {row['audio_seconds']:g} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="model directory in the official layout")
    parser.add_argument("--clips-dir", type=Path, required=True, help="recordings to cut the clips from")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtypes", default="fp32,bf16", help="our precisions to run (AutoModel runs fp32)")
    parser.add_argument("--clip-seconds", default="5,10,30")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    lengths = [float(part) for part in args.clip_seconds.split(",")]
    material = speech(args.clips_dir, max(lengths))
    clips = [material[: round(seconds * SAMPLE_RATE)] for seconds in lengths]
    device = "cuda:0" if args.device == "cuda" else args.device
    engines = {FUNASR: funasr_transcriber(args.model, device)}
    for dtype in args.dtypes.split(","):
        engines[f"ours ({dtype})"] = our_transcriber(args.model, device, dtype, max(lengths))

    batches = [(f"{seconds:g} s", [clip]) for seconds, clip in zip(lengths, clips, strict=True)]
    if len(clips) > 1:
        batches.append((f"all {len(clips)} at once", clips))
    rows = []
    for label, batch in batches:
        audio_seconds = sum(len(clip) for clip in batch) / SAMPLE_RATE
        median_seconds = taking_turns(engines, batch, args.repeats)
        rows.append({"label": label, "audio_seconds": audio_seconds, "median_seconds": median_seconds})
    names = list(engines)
    print(f"device {device}, torch {torch.__version__}, median of {args.repeats} runs after a warm-up\n")
    print(markdown(rows, names), end="")
    if args.json:
        report = {"device": device, "torch": torch.__version__, "repeats": args.repeats, "rows": rows}
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
