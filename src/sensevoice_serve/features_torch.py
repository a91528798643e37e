"""The frontend in torch, for accelerators: the whole batch in one pass, its audio uploaded through one pinned
buffer. ``features.FeatureExtractor`` builds it for any device but the CPU, where NumPy computes the same
features without importing torch; tests build it directly to compare the two on a CPU.
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
from collections.abc import Sequence

import numpy as np
import torch

from .features import (
    INT16_SCALE,
    LOG_FLOOR,
    PREEMPHASIS,
    FeatureExtractor,
    FrontendConfig,
    analysis_window,
    kaldi_mel_banks,
    lfr_gather_index,
    num_fbank_frames,
    num_lfr_frames,
)


@functools.lru_cache(maxsize=16)
def _spectral_constants(config: FrontendConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(window, mel banks) copied to ``device`` once per configuration and device."""
    return torch.from_numpy(analysis_window(config)).to(device), torch.from_numpy(kaldi_mel_banks(config)).to(
        device
    )


class TorchFeatureExtractor(FeatureExtractor):
    """The frontend as a few tensor operations over the whole batch: on an accelerator, one pass saves a dozen
    kernel launches per item. Features stay on ``device``; lengths are on the CPU."""

    def _prepare(self) -> None:
        self.torch_device = torch.device(self.device)
        self._shift = torch.from_numpy(self.cmvn_shift).to(self.torch_device)
        self._scale = torch.from_numpy(self.cmvn_scale).to(self.torch_device)
        self._window, self._mel_banks = _spectral_constants(self.config, self.torch_device)
        self._staging = HostStaging(self.torch_device) if self.torch_device.type != "cpu" else None

    def fbank(self, waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self._log_mel(self._frames(torch.as_tensor(waveform).to(self.torch_device, torch.float32)))

    def lfr(self, fbank: torch.Tensor) -> torch.Tensor:
        return self._stack_lfr(fbank, [fbank.shape[0]])[0]

    def _extract(self, waveforms: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._staging is not None and all(_on_host(waveform) for waveform in waveforms):
            tensors = self._staging.upload(waveforms)
        else:
            tensors = [
                torch.as_tensor(waveform).to(self.torch_device, torch.float32) for waveform in waveforms
            ]
        frames = [self._frames(tensor) for tensor in tensors]
        counts = [item.shape[0] for item in frames]
        log_mel = self._log_mel(frames[0] if len(frames) == 1 else torch.cat(frames))
        features = (self._stack_lfr(log_mel, counts) + self._shift) * self._scale
        lengths = torch.tensor([num_lfr_frames(tensor.numel(), self.config) for tensor in tensors])
        beyond_end = (
            torch.arange(features.shape[1], device=self.torch_device)
            >= lengths.to(self.torch_device)[:, None]
        )
        return features.masked_fill_(beyond_end[..., None], 0.0), lengths

    def _frames(self, waveform: torch.Tensor) -> torch.Tensor:
        """(T, window_samples) int16-scaled frames, snip-edges style (no frame reaches past the end)."""
        if waveform.dim() != 1:
            raise ValueError(f"expected a 1-D waveform, got shape {tuple(waveform.shape)}")
        count = num_fbank_frames(waveform.numel(), self.config)
        if count == 0:
            return waveform.new_zeros(0, self.config.window_samples)
        frames = waveform.unfold(0, self.config.window_samples, self.config.shift_samples)[:count]
        return frames * INT16_SCALE

    def _log_mel(self, frames: torch.Tensor) -> torch.Tensor:
        """(T, window_samples) frames -> (T, n_mels) kaldi log-mel energies (dither 0, energy floor 0)."""
        if frames.shape[0] == 0:  # MKL's FFT rejects an empty batch
            return frames.new_zeros(0, self.config.n_mels)
        centred = frames - frames.mean(dim=1, keepdim=True)
        # Kaldi's pre-emphasis treats the sample before the first as the first itself.
        previous = torch.cat([centred[:, :1], centred[:, :-1]], dim=1)
        windowed = (centred - PREEMPHASIS * previous) * self._window
        spectrum = torch.fft.rfft(windowed, n=self.config.fft_size)
        power = spectrum.real.square() + spectrum.imag.square()
        return (power @ self._mel_banks).clamp_min(LOG_FLOOR).log()

    def _stack_lfr(self, fbank: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """(items, longest, feature_dim) LFR frames of items whose fbank frames lie end to end in ``fbank``
        (see ``lfr_gather_index``)."""
        index = torch.from_numpy(lfr_gather_index(counts, self.config)).to(fbank.device)
        return fbank[index].reshape(len(counts), index.shape[1], self.config.feature_dim)


def _on_host(waveform: np.ndarray | torch.Tensor) -> bool:
    return not isinstance(waveform, torch.Tensor) or waveform.device.type == "cpu"


class HostStaging:
    """A batch's waveforms to ``device`` in one copy, through a reused page-locked (pinned) host buffer.

    Copies from pageable memory are staged by the driver and block the host; from pinned memory they run
    at full bus speed and asynchronously (``non_blocking``), ordered before the feature kernels on the same
    stream, so the host goes on to launch those. The buffer is written again only once its last copy has
    left it (a CUDA event). It grows to the largest batch seen (4 bytes a sample: about 230 MB for 60,000
    frames) and is kept. On a CPU it is an ordinary buffer and the copy is synchronous.
    """

    GROWTH = 1.25  # headroom when the buffer grows, so that batches a little larger do not reallocate it

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pinned = device.type == "cuda"
        self._host = torch.empty(0, dtype=torch.float32)
        self._copied: torch.cuda.Event | None = None  # the last copy out of the buffer is done
        self._lock = threading.Lock()  # one engine may be called from several threads (the Python API)

    @property
    def capacity(self) -> int:
        """Samples the host buffer holds."""
        return self._host.numel()

    def upload(self, waveforms: Sequence[np.ndarray | torch.Tensor]) -> list[torch.Tensor]:
        """float32 views of one device tensor holding ``waveforms`` end to end, in order."""
        tensors = [torch.as_tensor(waveform) for waveform in waveforms]
        if any(tensor.dim() != 1 for tensor in tensors):
            shapes = [tuple(tensor.shape) for tensor in tensors]
            raise ValueError(f"expected 1-D waveforms, got shapes {shapes}")
        sizes = [tensor.numel() for tensor in tensors]
        total = sum(sizes)
        with self._lock:
            if self._copied is not None:
                self._copied.synchronize()
            if total > self.capacity:
                # A normal tensor whatever the caller's mode: one made in inference mode could never be
                # written again outside it, and every later batch would fail.
                with torch.inference_mode(False):
                    self._host = torch.empty(
                        math.ceil(total * self.GROWTH), dtype=torch.float32, pin_memory=self._pinned
                    )
            for tensor, start in zip(tensors, itertools.accumulate([0, *sizes]), strict=False):
                self._host[start : start + tensor.numel()].copy_(tensor)
            on_device = torch.empty(total, dtype=torch.float32, device=self.device)
            on_device.copy_(self._host[:total], non_blocking=self._pinned)
            if self._pinned:
                self._copied = torch.cuda.Event()
                self._copied.record(torch.cuda.current_stream(self.device))
        return list(on_device.split(sizes))
