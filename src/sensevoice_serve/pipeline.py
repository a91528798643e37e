"""The public Python API: ``SenseVoice.from_pretrained(...).transcribe([...])``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .audio import SAMPLE_RATE, Audio, AudioInput, decode_audio
from .batching import plan_batches
from .checkpoint import ModelFiles, load_model, resolve_model
from .decoding import CTCDecoder, DecodeOptions
from .device import resolve_device, resolve_dtype
from .errors import SenseVoiceError
from .features import FeatureExtractor, load_cmvn, num_lfr_frames
from .model import SenseVoiceSmall
from .results import Segment, Transcription
from .tokenizer import Tokenizer

DEFAULT_MAX_BATCH_FRAMES = 6000  # LFR frames (60 ms each) of padded audio per forward: 6 minutes


@dataclass
class Utterance:
    """A stretch of 16 kHz mono audio to run through the model, with where it sits in its source."""

    samples: np.ndarray
    options: DecodeOptions = field(default_factory=DecodeOptions)
    offset: float = 0.0

    @property
    def frames(self) -> int:
        return num_lfr_frames(len(self.samples))

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE


@dataclass
class BatchTimings:
    features: float = 0.0
    model: float = 0.0
    decoding: float = 0.0


class SenseVoice:
    """One model on one device; every caller (CLI, server, bench) runs batches through ``run_batch``."""

    def __init__(
        self,
        files: ModelFiles,
        model: SenseVoiceSmall,
        tokenizer: Tokenizer,
        features: FeatureExtractor,
        device: torch.device,
        dtype: torch.dtype,
    ):
        self.files = files
        self.model = model
        self.tokenizer = tokenizer
        self.features = features
        self.device = device
        self.dtype = dtype
        self.decoder = CTCDecoder(model.ctc, tokenizer)
        self.forward_batch_sizes: list[int] = []  # one entry per forward: what batching really did

    @classmethod
    def from_pretrained(
        cls, model: str | os.PathLike = "iic/SenseVoiceSmall", device: str = "auto", dtype: str = "auto"
    ) -> SenseVoice:
        """Load a model directory in the official layout, or a hub id (downloaded when online)."""
        files = resolve_model(model)
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        tokenizer = Tokenizer(files.tokenizer)
        tokenizer.require_tags()
        network = load_model(files, tokenizer, torch_device, torch_dtype)
        shift, scale = load_cmvn(files.cmvn)
        features = FeatureExtractor(files.frontend, shift, scale, device=torch_device)
        return cls(files, network, tokenizer, features, torch_device, torch_dtype)

    @property
    def random_weights(self) -> bool:
        return self.files.random_weights

    @torch.inference_mode()
    def run_batch(
        self, utterances: Sequence[Utterance], timings: BatchTimings | None = None
    ) -> list[Segment]:
        """One padded forward over ``utterances`` (any mix of lengths and options), results in their order."""
        timings = timings or BatchTimings()
        started = time.perf_counter()
        feats, lengths = self.features([u.samples for u in utterances])
        self._synchronize()
        timings.features += time.perf_counter() - started

        started = time.perf_counter()
        encoded, encoded_lengths = self.model.encode(
            feats.to(self.dtype),
            lengths,
            [u.options.language for u in utterances],
            [u.options.use_itn for u in utterances],
        )
        self._synchronize()
        timings.model += time.perf_counter() - started
        self.forward_batch_sizes.append(len(utterances))

        started = time.perf_counter()
        segments = self.decoder.decode(
            encoded,
            encoded_lengths,
            [u.options for u in utterances],
            [u.offset for u in utterances],
            [u.duration for u in utterances],
        )
        timings.decoding += time.perf_counter() - started
        return segments

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
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
        max_batch_frames: int = DEFAULT_MAX_BATCH_FRAMES,
        batch_size: int | None = None,
    ) -> list[Transcription]:
        """Transcribe paths, bytes, file objects, arrays or decoded ``Audio``; one result per input, in order.

        Raises the first input's decode error; the CLI and server handle inputs one by one to report each.
        """
        if isinstance(inputs, (str, bytes, bytearray, os.PathLike, np.ndarray, Audio)) or hasattr(
            inputs, "read"
        ):
            inputs = [inputs]
        options = DecodeOptions(language=language, use_itn=use_itn, ban_emo_unk=ban_emo_unk)
        audios = [decode_audio(item) for item in inputs]
        segments = self.run_utterances(
            [Utterance(audio.samples, options) for audio in audios], max_batch_frames, batch_size
        )
        return [
            Transcription(
                source=audio.source, duration=audio.duration, segments=[segment], warnings=audio.warnings
            )
            for audio, segment in zip(audios, segments, strict=True)
        ]


__all__ = ["SenseVoice", "Utterance", "BatchTimings", "SenseVoiceError"]
