"""Bulk transcription as a Ray Data pipeline (``sensevoice transcribe --ray``).

The files (listed and keyed by the caller) are a dataset of paths; ``decode_file`` decodes and segments each
one in a Ray task on one core (PyAV and the VAD, what the plain CLI's decoding thread does); ``Transcriber``
runs the model in an actor pool, one engine per actor (a GPU each when the cluster has them), on batches of
files whose segments it batches together; the rows stream back to the caller in the order they finish.

A file's decoded pieces travel as one row: their samples as float32 bytes, and per piece its sample count,
offset and channel (JSON), which the actor cuts back into utterances. Errors travel as text: a file that
cannot be decoded gets its error row and is not run.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray

from ..batching import Utterance
from ..decoding import DecodeOptions
from ..longform import SegmentationOptions, assemble, input_error
from ..results import Transcription
from ..segmentation import default_detector, stream_utterances
from ..settings import Settings
from .resources import EnginePlan, engine_settings

# Files per actor call: their segments share the engine's batches. At least enough short (5 s) files to fill
# one forward of the engine's frame budget, so a GPU's large batches are full.
SHORT_FILE_FRAMES = 84
MIN_ROWS_PER_CALL = 32
# Files per dataset block: the unit a decoding task takes; small, so the work spreads and streams.
FILES_PER_BLOCK = 4
NO_CHANNEL = -1
# What a decoding task is scheduled as holding: torch and the VAD (~0.3 GB), the file's samples (a 2-hour file
# ~0.5 GB, more with its pieces). Scheduling only: Ray does not cap the task at it.
DECODING_MEMORY_BYTES = 1024**3


@dataclass
class FileResult:
    """One file's end, back in the caller: its result, or the error that stopped it."""

    path: Path
    result: Transcription | None
    error: str | None


def rows_per_call(max_batch_frames: int) -> int:
    return max(MIN_ROWS_PER_CALL, max_batch_frames // SHORT_FILE_FRAMES)


def segmentation_options(settings: Settings) -> SegmentationOptions:
    return SegmentationOptions(settings.vad, settings.max_segment_seconds, settings.split_channels)


def decode_file(row: dict[str, Any], segmentation: SegmentationOptions) -> dict[str, Any]:
    """A Ray task's work on one file: decode it and cut it into the utterances the model will see."""
    path = row["path"]
    try:
        stream, utterances = stream_utterances(
            Path(path), DecodeOptions(), segmentation, default_detector(segmentation)
        )
        pieces = list(utterances)
    except Exception as error:
        return {**row, "source": path, "error": str(input_error(error, path)), "duration": 0.0,
                "warnings": "[]", "pieces": "[]", "samples": b""}  # fmt: skip
    spans = [
        (len(p.utterance.samples), p.utterance.offset, NO_CHANNEL if p.channel is None else p.channel)
        for p in pieces
    ]
    samples = [np.ascontiguousarray(p.utterance.samples, dtype=np.float32) for p in pieces]
    return {
        **row,
        "source": stream.source,
        "error": "",
        "duration": stream.duration,
        "warnings": json.dumps(list(stream.warnings)),
        "pieces": json.dumps(spans),
        "samples": b"".join(s.tobytes() for s in samples),
    }


class Transcriber:
    """An actor of the pool: one engine, run on the utterances of a batch of decoded files."""

    def __init__(self, model_dir: str, settings: dict[str, Any]) -> None:
        from ..pipeline import SenseVoice

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        engine = engine_settings(Settings(**settings), cpus)
        tuned = engine.tuned()
        self.engine = SenseVoice.from_pretrained(
            model_dir,
            device=tuned.device,
            dtype=tuned.dtype,
            cache_dir=engine.cache_dir,
            threads=tuned.torch_threads,
        )
        self.max_batch_frames = tuned.max_batch_frames
        self.batch_size = engine.batch_size
        self.options = engine.decode_options()  # the CLI's: language, ITN, beam and hotwords
        # Compiled once here, not in the first batch; the phrases it skipped are in every file's warnings.
        self.skipped_hotwords = self.engine.decoder.prepare(self.options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        files = [i for i, error in enumerate(batch["error"]) if not error]
        utterances: list[Utterance] = []
        channels: list[int | None] = []
        owners: list[int] = []
        for i in files:
            # A writable copy: torch warns about (and must not write into) read-only buffers.
            samples = np.frombuffer(bytearray(batch["samples"][i]), dtype=np.float32)
            start = 0
            for count, offset, channel in json.loads(batch["pieces"][i]):
                utterances.append(Utterance(samples[start : start + count], self.options, offset))
                channels.append(None if channel == NO_CHANNEL else channel)
                owners.append(i)
                start += count
        segments = self.engine.run_utterances(utterances, self.max_batch_frames, self.batch_size)
        per_file: dict[int, list] = {i: [] for i in files}
        for owner, channel, segment in zip(owners, channels, segments, strict=True):
            segment.channel = channel
            per_file[owner].append(segment)
        results = [
            pickle.dumps(
                assemble(
                    str(batch["source"][i]),
                    float(batch["duration"][i]),
                    json.loads(batch["warnings"][i]) + self.skipped_hotwords,
                    per_file[i],
                )
            )
            if i in per_file
            else b""
            for i in range(len(batch["path"]))
        ]
        return {"path": list(batch["path"]), "error": list(batch["error"]), "result": results}


def transcribe_dataset(
    files: list[Path], settings: Settings, plan: EnginePlan, model_dir: Path, max_batch_frames: int
) -> Iterator[FileResult]:
    """Run ``files`` through the pipeline; each file's result or error as soon as it is done."""
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = False
    rows = [{"path": str(path)} for path in files]
    dataset = (
        ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // FILES_PER_BLOCK)))
        .map(
            decode_file,
            fn_kwargs={"segmentation": segmentation_options(settings)},
            num_cpus=1,
            # Also keeps decoding in tasks of its own: Ray Data runs a map inside the next stage's actors
            # (no overlap with inference) when their remote arguments match.
            memory=DECODING_MEMORY_BYTES,
        )
        .map_batches(
            Transcriber,
            fn_constructor_kwargs={"model_dir": str(model_dir), "settings": settings.model_dump()},
            batch_size=rows_per_call(max_batch_frames),
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=plan.count),
            num_cpus=plan.cpus,
            num_gpus=plan.gpus,
        )
    )
    for row in dataset.iter_rows():
        result = pickle.loads(row["result"]) if not row["error"] else None
        yield FileResult(Path(row["path"]), result, row["error"] or None)
