"""Anchor comparison: the same clips through funasr's AutoModel, sherpa-onnx (int8) and ours, in one run.

    .venv/bin/pip install -c constraints.txt -e '.[bench]'
    .venv/bin/python benchmarks/anchor.py --random-weights [--clip-seconds 5,10,30] [--repeats 5] \
        [--threads N]

funasr's AutoModel is how most users run SenseVoiceSmall today; sherpa-onnx runs an int8 ONNX export of the
same checkpoint, written by ``sensevoice export-onnx`` into ``~/.cache/sensevoice-serve/onnx/``. All three
get the same decoded 16 kHz samples (decoding is measured by ``sensevoice bench``) and the same number of
CPU threads, one request at a time; a final row sends every clip at once as one batch. Figures are medians
over ``--repeats`` after a warm-up, the engines taking turns so that a busy moment on the machine hits all
alike. Ratios above 1 mean ours is faster. Clips up to 30 s keep every engine on one utterance per clip
(ours would otherwise split longer audio at pauses, which the others do not).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from sensevoice_serve.audio import SAMPLE_RATE, decode_audio
from sensevoice_serve.bench.material import (
    default_cache_dir,
    random_full_checkpoint,
    shared_speech_dir,
    speech_clips,
    speech_material,
)
from sensevoice_serve.checkpoint import resolve_model
from sensevoice_serve.export import INT8_MODEL_FILENAME, TOKENS_FILENAME, export_onnx
from sensevoice_serve.pipeline import SenseVoice

Transcriber = Callable[[Sequence[np.ndarray]], object]


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


def int8_export(model_dir: Path) -> Path:
    """The int8 export of this checkpoint, made once per weights file (keyed by its size and mtime)."""
    weights = resolve_model(model_dir).weights
    stat = weights.stat()
    key = hashlib.sha256(f"{weights.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    directory = default_cache_dir() / "onnx" / key
    if not (directory / INT8_MODEL_FILENAME).is_file():
        print(f"exporting {model_dir} to ONNX (float32 + int8) in {directory}", flush=True)
        export_onnx(model_dir, directory, int8=True)
    return directory


def funasr_transcriber(model_dir: Path, threads: int) -> Transcriber:
    from funasr import AutoModel

    # ncpu: AutoModel sets torch's thread count from it (default 4), process-wide.
    model = AutoModel(
        model=str(model_dir),
        device="cpu",
        ncpu=threads,
        disable_update=True,
        log_level="ERROR",
        frontend_conf={"dither": 0.0},
    )

    def transcribe(clips: Sequence[np.ndarray]) -> object:
        return model.generate(input=list(clips), language="auto", use_itn=True, batch_size=len(clips),
                              disable_pbar=True)  # fmt: skip

    return transcribe


def sherpa_transcriber(onnx_dir: Path, threads: int) -> Transcriber:
    import sherpa_onnx

    recognizer = sherpa_onnx.OfflineRecognizer.from_sense_voice(
        model=str(onnx_dir / INT8_MODEL_FILENAME),
        tokens=str(onnx_dir / TOKENS_FILENAME),
        num_threads=threads,
        use_itn=True,
    )

    def transcribe(clips: Sequence[np.ndarray]) -> object:
        streams = []
        for samples in clips:
            stream = recognizer.create_stream()
            stream.accept_waveform(SAMPLE_RATE, samples)
            streams.append(stream)
        recognizer.decode_streams(streams)
        return [stream.result.text for stream in streams]

    return transcribe


def our_transcriber(model_dir: Path, longest_seconds: float) -> Transcriber:
    engine = SenseVoice.from_pretrained(model_dir, device="cpu", dtype="fp32")
    cap = max(30.0, longest_seconds + 1)  # one utterance per clip, as the others run them

    def transcribe(clips: Sequence[np.ndarray]) -> object:
        return engine.transcribe(list(clips), language="auto", use_itn=True, max_segment_seconds=cap)

    return transcribe


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="model directory in the official layout")
    source.add_argument(
        "--random-weights", action="store_true", help="the cached full-size RANDOM checkpoint"
    )
    parser.add_argument("--clip-seconds", default="5,10,30", help="clip lengths cut from real speech")
    parser.add_argument(
        "--clips-dir", type=Path, help="recordings to cut clips from (default ../shared/audio)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads for each")
    args = parser.parse_args()

    model_dir = random_full_checkpoint(default_cache_dir()) if args.random_weights else args.model
    lengths = [float(part) for part in args.clip_seconds.split(",")]
    speech_dir = args.clips_dir or shared_speech_dir()
    if speech_dir is None:
        parser.error("no recordings to cut clips from: pass --clips-dir")
    clips = speech_clips(lengths, speech_material(speech_dir, max(lengths)))
    samples = [decode_audio(clip.encoded).samples for clip in clips]
    onnx_dir = int8_export(model_dir)

    engines = {
        "funasr AutoModel": funasr_transcriber(model_dir, args.threads),
        "sherpa-onnx int8": sherpa_transcriber(onnx_dir, args.threads),
    }
    torch.set_num_threads(args.threads)  # after funasr, which sets the process-wide count itself
    engines["sensevoice-serve"] = our_transcriber(model_dir, max(lengths))

    label = " (RANDOM weights)" if resolve_model(model_dir).random_weights else ""
    print(f"model: {model_dir}{label}; {args.threads} CPU threads each; median of {args.repeats} runs")
    print()
    names = list(engines)
    print("| clips | " + " | ".join(names) + " | ours vs funasr | ours vs sherpa-onnx |")
    print("|---|" + "---|" * (len(names) + 2))
    rows = [(clip.label, [audio]) for clip, audio in zip(clips, samples, strict=True)]
    rows.append((f"all {len(clips)} at once", samples))
    for label_text, inputs in rows:
        audio_seconds = sum(len(s) for s in inputs) / SAMPLE_RATE
        runs = {name: (lambda run=run, inputs=inputs: run(inputs)) for name, run in engines.items()}
        seconds = interleaved_medians(runs, args.repeats)
        cells = [f"{seconds[name] * 1000:.0f} ms ({audio_seconds / seconds[name]:.1f}×)" for name in engines]
        ours = seconds["sensevoice-serve"]
        ratios = [f"{seconds['funasr AutoModel'] / ours:.2f}×", f"{seconds['sherpa-onnx int8'] / ours:.2f}×"]
        print("| " + " | ".join([label_text, *cells, *ratios]) + " |", flush=True)


if __name__ == "__main__":
    main()
