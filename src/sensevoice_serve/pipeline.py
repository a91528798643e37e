"""The public Python API: ``SenseVoice.from_pretrained(...).transcribe([...])``.

Imports run one way: this module uses ``longform`` (segmentation and the decoding thread) and hands it
``self`` as the model that runs utterances; ``longform`` never imports this module. Nothing here imports
torch: the int8 runtime runs without it, and the torch runtime brings it along.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import numpy as np

from .audio import Audio, AudioInput
from .batching import BatchTimings, Utterance, plan_batches
from .checkpoint import ModelFiles, resolve_model
from .decoding import BatchScores, CTCDecoder
from .device import resolve_device, resolve_dtype
from .errors import SenseVoiceError
from .features import FeatureExtractor, load_cmvn
from .hotwords import DEFAULT_HOTWORD_SCORE
from .longform import transcribe_sources
from .results import Segment, Transcription
from .runtimes import Runtime, load_runtime
from .segmentation import SegmentationOptions
from .settings import decode_options
from .tokenizer import Tokenizer

DEFAULT_MAX_BATCH_FRAMES = 6000  # LFR frames (60 ms each) of padded audio per forward: 6 minutes


@dataclass(eq=False, repr=False)
class SenseVoice:
    """One model on one device; every caller (CLI, server, bench) runs batches through ``run_batch``."""

    files: ModelFiles
    model: Runtime  # the torch model, or the int8 runtime: the same two calls (runtimes/)
    tokenizer: Tokenizer
    features: FeatureExtractor
    device: str  # "cpu", "cuda:0"
    dtype: str  # "fp32", "bf16", "fp16", "int8"
    decoder: CTCDecoder = field(init=False)
    forward_batch_sizes: list[int] = field(init=False, default_factory=list)  # per forward: what batching did

    def __post_init__(self) -> None:
        self.decoder = CTCDecoder(self.model.ctc, self.tokenizer)

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike = "iic/SenseVoiceSmall",
        device: str = "auto",
        dtype: str = "auto",
        cache_dir: str | os.PathLike | None = None,
        threads: int | None = None,
    ) -> SenseVoice:
        """Load a model directory in the official layout, or a hub id (downloaded when online).

        ``dtype="int8"`` (CPU only; what ``auto`` picks on a CPU with an int8 dot product) runs the int8
        runtime, built from model.pt once into ``cache_dir`` (default: ``$SENSEVOICE_CACHE_DIR`` or
        ~/.cache/sensevoice-serve), without torch. ``fp32`` is exact; int8 changes a few tokens.
        ``threads``: the model's compute threads (default: every core for int8; torch's setting, which is
        process-wide, for the others).
        """
        files = resolve_model(model)
        chosen_device = resolve_device(device)
        chosen_dtype = resolve_dtype(dtype, chosen_device)
        tokenizer = Tokenizer(files.tokenizer)
        tokenizer.require_tags()
        network = load_runtime(files, tokenizer, chosen_device, chosen_dtype, cache_dir, threads)
        shift, scale = load_cmvn(files.cmvn)
        features = FeatureExtractor.for_device(files.frontend, shift, scale, device=chosen_device)
        return cls(files, network, tokenizer, features, chosen_device, chosen_dtype)

    @property
    def random_weights(self) -> bool:
        return self.files.random_weights

    def run_batch(
        self, utterances: Sequence[Utterance], timings: BatchTimings | None = None
    ) -> list[Segment]:
        """One padded forward over ``utterances`` (any mix of lengths and options), results in their order."""
        return self.start_batch(utterances, timings).finish()

    def start_batch(
        self, utterances: Sequence[Utterance], timings: BatchTimings | None = None
    ) -> ScoredBatch:
        """The device's part of ``run_batch``: features, the forward and the CTC scores, on the CPU once this
        returns, so the device is free for the next batch while ``finish`` (the CPU's part: tags, text, token
        times, beam search) runs, in another thread if the caller likes. Out of device memory raises here."""
        timings = timings if timings is not None else BatchTimings()
        with self._on_device():
            started = time.perf_counter()
            feats, lengths = self.features([u.samples for u in utterances])
            self._synchronize()
            timings.features += time.perf_counter() - started

            started = time.perf_counter()
            encoded, encoded_lengths = self.model.encode(
                feats,
                lengths,
                [u.options.language for u in utterances],
                [u.options.use_itn for u in utterances],
            )
            self._synchronize()
            timings.model += time.perf_counter() - started
            self.forward_batch_sizes.append(len(utterances))

            started = time.perf_counter()
            scores = self.decoder.score(encoded, encoded_lengths, [u.options for u in utterances])
            timings.decoding += time.perf_counter() - started
        return ScoredBatch(self.decoder, scores, list(utterances), timings)

    def _on_device(self) -> AbstractContextManager:
        """This engine's GPU as the current one, so that whatever a thread creates without naming a device
        (streams, events, kernels) lands on it, whichever GPU the thread last used."""
        if not self.device.startswith("cuda"):
            return nullcontext()
        import torch

        return torch.cuda.device(self.device)

    def _synchronize(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)

    def run_utterances(
        self,
        utterances: Sequence[Utterance],
        max_batch_frames: int = DEFAULT_MAX_BATCH_FRAMES,
        max_batch_size: int | None = None,
        on_batch: Callable[[list[int]], None] | None = None,
    ) -> list[Segment]:
        """Length-sorted batches within the frame budget; results in input order."""
        segments: list[Segment | None] = [None] * len(utterances)
        for batch in plan_batches([u.frames for u in utterances], max_batch_frames, max_batch_size):
            for index, segment in zip(batch, self.run_batch([utterances[i] for i in batch]), strict=True):
                segments[index] = segment
            if on_batch is not None:
                on_batch(batch)
        return segments  # type: ignore[return-value]

    def transcribe(
        self,
        inputs: AudioInput | Sequence[AudioInput],
        *,
        language: str = "auto",
        use_itn: bool = True,
        ban_emo_unk: bool = False,
        beam_size: int | None = None,
        hotwords: Sequence[str] = (),
        hotword_score: float = DEFAULT_HOTWORD_SCORE,
        vad: str = "auto",
        max_segment_seconds: float = 30.0,
        split_channels: bool = False,
        max_batch_frames: int = DEFAULT_MAX_BATCH_FRAMES,
        batch_size: int | None = None,
    ) -> list[Transcription]:
        """Transcribe paths, bytes, file objects, arrays or decoded ``Audio``; one result per input, in order.

        Audio longer than ``max_segment_seconds`` is split at pauses by a VAD (``vad="auto"``) and its
        segments batched with everything else. ``hotwords`` (``"phrase"`` or ``"phrase:boost"``) are
        boosted by a beam search of ``beam_size`` (default: 1, greedy, or 4 with hotwords); a phrase the
        model cannot write is skipped, and each result's ``warnings`` say so. Raises the first failing
        input's error; the CLI and the server report inputs one by one instead.
        """
        if isinstance(inputs, (str, bytes, bytearray, os.PathLike, np.ndarray, Audio)) or hasattr(
            inputs, "read"
        ):
            inputs = [inputs]
        options = decode_options(language, use_itn, ban_emo_unk, beam_size, hotwords, hotword_score)
        skipped_hotwords = self.decoder.prepare(options)
        segmentation = SegmentationOptions(vad, max_segment_seconds, split_channels)
        results: list[Transcription | None] = [None] * len(inputs)
        for outcome in transcribe_sources(
            self,
            enumerate(inputs),
            options,
            segmentation,
            max_batch_frames=max_batch_frames,
            batch_size=batch_size,
        ):
            if outcome.error is not None:
                raise outcome.error
            outcome.result.warnings += skipped_hotwords
            results[outcome.key] = outcome.result
        return results  # type: ignore[return-value]


@dataclass
class ScoredBatch:
    """A batch whose device work is done (``SenseVoice.start_batch``); ``finish`` makes its Segments."""

    decoder: CTCDecoder
    scores: BatchScores
    utterances: list[Utterance]
    timings: BatchTimings

    def finish(self) -> list[Segment]:
        """Tags, text, token times and beam search, on the CPU alone: safe in any thread."""
        started = time.perf_counter()
        segments = self.decoder.finish(
            self.scores,
            [u.options for u in self.utterances],
            [u.offset for u in self.utterances],
            [u.duration for u in self.utterances],
        )
        self.timings.decoding += time.perf_counter() - started
        return segments


__all__ = ["SenseVoice", "ScoredBatch", "Utterance", "BatchTimings", "SenseVoiceError"]
