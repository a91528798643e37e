"""The engines ``anchor.py`` compares, each behind one call: transcribe a list of 16 kHz float32 clips.

Run as ``python benchmarks/anchor_engines.py NAME MODEL THREADS CLIP.npy`` it is the fresh process that
``anchor.py`` times: it loads the engine, warms it up on one second of noise, notes the moment it is ready,
transcribes the clip (16 kHz samples, decoded by the parent) and prints both moments and its peak resident
memory as JSON. MODEL is what the engine loads (``model_path``): nothing else is imported, so an engine's
figures include only its own imports.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

Transcriber = Callable[[Sequence[np.ndarray]], object]
SAMPLE_RATE = 16000
# funasr-onnx is not among them: its int8 model is made by funasr's export, which calls torch.onnx.export with
# the default (dynamo) exporter of torch >= 2.9 and so needs onnxscript, and the package pins numpy <= 1.26.4.
ENGINES = ("sherpa-onnx int8", "funasr AutoModel", "ours fp32", "ours int8")


def sherpa_onnx_model(model_dir: Path) -> Path:
    """The int8 export sherpa-onnx loads (``sensevoice export-onnx``), made once per weights file."""
    from sensevoice_serve.bench.material import default_cache_dir
    from sensevoice_serve.checkpoint import resolve_model
    from sensevoice_serve.export import INT8_MODEL_FILENAME, export_onnx

    weights = resolve_model(model_dir).weights
    stat = weights.stat()
    key = hashlib.sha256(f"{weights.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    directory = default_cache_dir() / "onnx" / key
    if not (directory / INT8_MODEL_FILENAME).is_file():
        print(f"exporting {model_dir} to ONNX (float32 + int8) in {directory}", file=sys.stderr, flush=True)
        export_onnx(model_dir, directory, int8=True)
    return directory / INT8_MODEL_FILENAME


def model_path(name: str, model_dir: Path) -> Path:
    """What engine ``name`` loads: the model directory, or for sherpa-onnx its int8 export."""
    return sherpa_onnx_model(model_dir) if name == "sherpa-onnx int8" else model_dir


def sherpa_transcriber(model: Path, threads: int) -> Transcriber:
    import sherpa_onnx

    recognizer = sherpa_onnx.OfflineRecognizer.from_sense_voice(
        model=str(model), tokens=str(model.parent / "tokens.txt"), num_threads=threads, use_itn=True
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


def funasr_transcriber(model_dir: Path, threads: int) -> Transcriber:
    from funasr import AutoModel

    # ncpu: AutoModel sets torch's thread count from it (default 4), process-wide.
    model = AutoModel(model=str(model_dir), device="cpu", ncpu=threads, disable_update=True,
                      log_level="ERROR", frontend_conf={"dither": 0.0})  # fmt: skip

    def transcribe(clips: Sequence[np.ndarray]) -> object:
        return model.generate(input=list(clips), language="auto", use_itn=True, batch_size=len(clips),
                              disable_pbar=True)  # fmt: skip

    return transcribe


def our_transcriber(dtype: str) -> Callable[[Path, int], Transcriber]:
    def make(model_dir: Path, threads: int) -> Transcriber:
        from sensevoice_serve.pipeline import SenseVoice

        # int8 runs without torch (not imported at all); fp32 sets torch's threads.
        engine = SenseVoice.from_pretrained(model_dir, device="cpu", dtype=dtype, threads=threads)

        def transcribe(clips: Sequence[np.ndarray]) -> object:
            # One utterance per clip, as the others run them (clips are at most 30 s).
            return engine.transcribe(list(clips), language="auto", use_itn=True, max_segment_seconds=60)

        return transcribe

    return make


FACTORIES: dict[str, Callable[[Path, int], Transcriber]] = {
    "sherpa-onnx int8": sherpa_transcriber,
    "funasr AutoModel": funasr_transcriber,
    "ours fp32": our_transcriber("fp32"),
    "ours int8": our_transcriber("int8"),
}


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cold_start(name: str, model: Path, threads: int, clip: Path) -> None:
    """This process as ``anchor.py`` times it: ready (loaded and warmed up), then one clip."""
    transcribe = FACTORIES[name](model, threads)
    transcribe([np.random.default_rng(0).normal(0, 0.05, SAMPLE_RATE).astype(np.float32)])
    ready = time.time()
    transcribe([np.load(clip)])
    print(json.dumps({"ready": ready, "done": time.time(), "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    cold_start(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
