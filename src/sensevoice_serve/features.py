"""SenseVoiceSmall's frontend: kaldi-compatible log-mel fbank, low-frame-rate stacking (LFR) and CMVN.

Vectorised in torch (frames are strided views, one rfft and one matmul per batch), so it runs on the model's
device and agrees with kaldi-native-fbank to float precision.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from .errors import ModelLoadError

INT16_SCALE = 32768.0  # kaldi works on int16-range samples
PREEMPHASIS = 0.97
LOW_FREQUENCY = 20.0
FLOAT_EPSILON = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class FrontendConfig:
    sample_rate: int = 16000
    n_mels: int = 80
    frame_length_ms: float = 25
    frame_shift_ms: float = 10
    window: str = "hamming"
    lfr_m: int = 7
    lfr_n: int = 6

    @classmethod
    def from_model_config(cls, frontend_conf: dict) -> FrontendConfig:
        """From config.yaml's ``frontend_conf`` (fs, window, n_mels, frame_length/shift, lfr_m, lfr_n)."""
        defaults = cls()
        config = cls(
            sample_rate=int(frontend_conf.get("fs", defaults.sample_rate)),
            n_mels=int(frontend_conf.get("n_mels", defaults.n_mels)),
            frame_length_ms=float(frontend_conf.get("frame_length", defaults.frame_length_ms)),
            frame_shift_ms=float(frontend_conf.get("frame_shift", defaults.frame_shift_ms)),
            window=str(frontend_conf.get("window", defaults.window)),
            lfr_m=int(frontend_conf.get("lfr_m", defaults.lfr_m)),
            lfr_n=int(frontend_conf.get("lfr_n", defaults.lfr_n)),
        )
        if config.window not in ("hamming", "hanning", "povey"):
            raise ModelLoadError(f"unsupported frontend window {config.window!r}")
        return config

    @property
    def feature_dim(self) -> int:
        return self.n_mels * self.lfr_m

    @property
    def window_samples(self) -> int:
        return int(self.sample_rate * self.frame_length_ms / 1000)

    @property
    def shift_samples(self) -> int:
        return int(self.sample_rate * self.frame_shift_ms / 1000)

    @property
    def fft_size(self) -> int:
        return 1 << math.ceil(math.log2(self.window_samples))


def num_fbank_frames(num_samples: int, config: FrontendConfig) -> int:
    if num_samples < config.window_samples:
        return 0
    return 1 + (num_samples - config.window_samples) // config.shift_samples


def num_lfr_frames(num_samples: int, config: FrontendConfig = FrontendConfig()) -> int:
    """Feature frames for ``num_samples`` samples: cheap arithmetic for planning batches."""
    return math.ceil(num_fbank_frames(num_samples, config) / config.lfr_n)


def load_cmvn(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, scale) from a Kaldi nnet ``am.mvn``: the vectors after ``<AddShift>`` and ``<Rescale>``."""
    text = Path(path).read_text()
    vectors = {}
    for tag in ("AddShift", "Rescale"):
        # The tag line's own bracket holds the values; the [ 0 ] after <Splice> is a different block.
        match = re.search(rf"<{tag}>[^\n]*\n\s*<LearnRateCoef>\s*\S+\s*\[([^\]]*)\]", text)
        if match is None:
            raise ModelLoadError(f"{path}: no <{tag}> vector found; is this an am.mvn file?")
        try:
            vectors[tag] = torch.tensor([float(v) for v in match.group(1).split()], dtype=torch.float32)
        except ValueError as error:
            raise ModelLoadError(f"{path}: malformed <{tag}> vector: {error}") from error
    shift, scale = vectors["AddShift"], vectors["Rescale"]
    if shift.numel() != scale.numel() or shift.numel() == 0:
        raise ModelLoadError(f"{path}: <AddShift> has {shift.numel()} values, <Rescale> {scale.numel()}")
    return shift, scale


def kaldi_mel_banks(config: FrontendConfig) -> torch.Tensor:
    """(fft_size // 2, n_mels) triangles equally spaced on kaldi's mel scale (Nyquist bin excluded)."""

    def mel(frequency: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log(1.0 + np.asarray(frequency, dtype=np.float64) / 700.0)

    bins = config.fft_size // 2
    nyquist = config.sample_rate / 2
    low, high = mel(LOW_FREQUENCY), mel(nyquist)
    spacing = (high - low) / (config.n_mels + 1)
    left = low + spacing * np.arange(config.n_mels)
    center, right = left + spacing, left + 2 * spacing
    bin_mel = mel(np.arange(bins) * config.sample_rate / config.fft_size)[:, None]
    rising = (bin_mel - left) / (center - left)
    falling = (right - bin_mel) / (right - center)
    return torch.from_numpy(np.maximum(0.0, np.minimum(rising, falling))).float()


def analysis_window(config: FrontendConfig) -> torch.Tensor:
    n = torch.arange(config.window_samples, dtype=torch.float64)
    cosine = torch.cos(2 * math.pi * n / (config.window_samples - 1))
    if config.window == "hamming":
        window = 0.54 - 0.46 * cosine
    elif config.window == "hanning":
        window = 0.5 - 0.5 * cosine
    else:
        window = (0.5 - 0.5 * cosine) ** 0.85
    return window.float()


class FeatureExtractor:
    def __init__(
        self,
        config: FrontendConfig,
        cmvn_shift: torch.Tensor,
        cmvn_scale: torch.Tensor,
        device: torch.device | str = "cpu",
    ):
        if cmvn_shift.numel() != config.feature_dim:
            raise ModelLoadError(
                f"am.mvn has {cmvn_shift.numel()} values but features have {config.feature_dim}"
            )
        self.config = config
        self.device = torch.device(device)
        self.shift = cmvn_shift.to(self.device)
        self.scale = cmvn_scale.to(self.device)
        self.mel_banks = kaldi_mel_banks(config).to(self.device)
        self.window = analysis_window(config).to(self.device)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, device: torch.device | str = "cpu") -> FeatureExtractor:
        directory = Path(model_dir)
        config = yaml.safe_load((directory / "config.yaml").read_text()) or {}
        frontend = FrontendConfig.from_model_config(config.get("frontend_conf") or {})
        return cls(frontend, *load_cmvn(directory / "am.mvn"), device=device)

    def _frames(self, waveform: torch.Tensor) -> torch.Tensor:
        """(T, window) frames of int16-scaled samples, snip-edges style (no frame reaches past the end)."""
        count = num_fbank_frames(waveform.numel(), self.config)
        if count == 0:
            return waveform.new_zeros(0, self.config.window_samples)
        return waveform.unfold(0, self.config.window_samples, self.config.shift_samples)[:count] * INT16_SCALE

    def _log_mel(self, frames: torch.Tensor) -> torch.Tensor:
        frames = frames - frames.mean(dim=1, keepdim=True)
        previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
        frames = (frames - PREEMPHASIS * previous) * self.window
        spectrum = torch.fft.rfft(frames, n=self.config.fft_size)
        power = spectrum.real.square() + spectrum.imag.square()
        energies = power[:, : self.config.fft_size // 2] @ self.mel_banks
        return torch.clamp_min(energies, FLOAT_EPSILON).log()

    def fbank(self, waveform: torch.Tensor) -> torch.Tensor:
        """1-D waveform in [-1, 1] -> (T, n_mels) log-mel energies; T = 0 for under one window of audio."""
        return self._log_mel(self._frames(waveform.to(self.device, torch.float32)))

    def lfr(self, fbank: torch.Tensor) -> torch.Tensor:
        """(T, n_mels) -> (ceil(T / n), n_mels * m): m stacked frames every n, edges padded by repetition."""
        m, n = self.config.lfr_m, self.config.lfr_n
        frames = fbank.shape[0]
        outputs = math.ceil(frames / n)
        if outputs == 0:
            return fbank.new_zeros(0, self.config.feature_dim)
        left = (m - 1) // 2
        index = torch.arange(outputs, device=fbank.device)[:, None] * n + torch.arange(m, device=fbank.device)
        # Position p of the left-padded sequence is frame p - left, clamped to the first / last frame.
        index = (index - left).clamp(0, frames - 1)
        return fbank[index].reshape(outputs, -1)

    def __call__(self, waveforms: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch of 1-D waveforms -> features (B, T_max, feature_dim) zero-padded, and lengths (B,)."""
        tensors = [torch.as_tensor(w, dtype=torch.float32).to(self.device) for w in waveforms]
        frames = [self._frames(w) for w in tensors]
        counts = [f.shape[0] for f in frames]
        # One FFT and one matmul over every frame of the batch.
        log_mel = self._log_mel(torch.cat(frames)) if sum(counts) else None
        features = []
        start = 0
        for count in counts:
            fbank = (
                log_mel[start : start + count]
                if count
                else torch.zeros(0, self.config.n_mels, device=self.device)
            )
            start += count
            features.append((self.lfr(fbank) + self.shift) * self.scale)
        lengths = torch.tensor([f.shape[0] for f in features], dtype=torch.long)
        batch = torch.zeros(
            len(features), max(lengths.tolist(), default=0), self.config.feature_dim, device=self.device
        )
        for index, feature in enumerate(features):
            batch[index, : feature.shape[0]] = feature
        return batch, lengths
