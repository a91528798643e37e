"""SenseVoiceSmall's frontend (funasr's WavFrontend): kaldi log-mel fbank, low-frame-rate stacking, CMVN.

Two implementations of one recipe, picked by ``FeatureExtractor`` from the device: on the CPU NumPy, item
by item in cache-sized chunks, so the int8 runtime's path never imports torch; on an accelerator torch
(``features_torch``), the whole batch in one pass. Both agree with kaldi-native-fbank to float32 precision.
What they share lives here: the configuration, the CMVN statistics, the window, the mel banks and the LFR
gather indices, all NumPy.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from .errors import ModelLoadError

if TYPE_CHECKING:
    import torch

    Array = np.ndarray | torch.Tensor  # NumPy on the CPU, torch on an accelerator

INT16_SCALE = 32768.0  # kaldi works on int16-range samples; funasr upscales [-1, 1] audio before calling it
PREEMPHASIS = 0.97
LOW_FREQUENCY_HZ = 20.0
LOG_FLOOR = float(np.finfo(np.float32).eps)  # kaldi takes log(max(energy, FLT_EPSILON))
WINDOWS = ("hamming", "hanning", "povey")
# Frames per NumPy pass on the CPU: about 250 kB of FFT input and 130 kB of spectrum, which stay in the cache.
# The fbank of one 30 s clip, one thread: 5.9 ms in chunks of 128 frames (64: 6.6, 256: 5.6), 14 ms in one.
CPU_CHUNK_FRAMES = 128
# The mel banks are banded, so on the CPU they multiply in this many products, each over the span of FFT bins
# its mel bins weigh: 128 frames in 21 us, against 44 us in one product over every bin.
CPU_MEL_BANDS = 4


@dataclass(frozen=True)
class FrontendConfig:
    sample_rate: int = 16000
    n_mels: int = 80
    frame_length_ms: float = 25
    frame_shift_ms: float = 10
    window: str = "hamming"
    lfr_m: int = 7
    lfr_n: int = 6

    def __post_init__(self) -> None:
        if self.window not in WINDOWS:
            raise ModelLoadError(f"unsupported frontend window {self.window!r}; expected one of {WINDOWS}")

    @classmethod
    def from_model_config(cls, frontend_conf: dict) -> FrontendConfig:
        """From config.yaml's ``frontend_conf``; keys it does not describe (cmvn_file, dither) are ignored."""
        defaults = cls()
        return cls(
            sample_rate=int(frontend_conf.get("fs", defaults.sample_rate)),
            n_mels=int(frontend_conf.get("n_mels", defaults.n_mels)),
            frame_length_ms=float(frontend_conf.get("frame_length", defaults.frame_length_ms)),
            frame_shift_ms=float(frontend_conf.get("frame_shift", defaults.frame_shift_ms)),
            window=str(frontend_conf.get("window", defaults.window)),
            lfr_m=int(frontend_conf.get("lfr_m", defaults.lfr_m)),
            lfr_n=int(frontend_conf.get("lfr_n", defaults.lfr_n)),
        )

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


def num_fbank_frames(num_samples: int, config: FrontendConfig = FrontendConfig()) -> int:
    """Kaldi's snip-edges frame count: whole windows only, so none for under one window of audio."""
    if num_samples < config.window_samples:
        return 0
    return 1 + (num_samples - config.window_samples) // config.shift_samples


def num_lfr_frames(num_samples: int, config: FrontendConfig = FrontendConfig()) -> int:
    """Feature frames for ``num_samples`` samples: cheap arithmetic for planning batches."""
    return math.ceil(num_fbank_frames(num_samples, config) / config.lfr_n)


def load_cmvn(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(shift, scale), 1-D float32, from a Kaldi nnet ``am.mvn``; features normalise to (x + shift) * scale.

    The shift (minus the mean) is the ``<AddShift>`` component's vector, the scale (one over the standard
    deviation) the ``<Rescale>`` one's. The ``[ 0 ]`` after ``<Splice>`` is a splice offset, neither of them.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ModelLoadError(f"cannot read CMVN statistics {path}: {error}") from error
    shift = _nnet_component_vector(lines, "<AddShift>", path)
    scale = _nnet_component_vector(lines, "<Rescale>", path)
    if shift.size != scale.size:
        raise ModelLoadError(f"{path}: <AddShift> has {shift.size} values but <Rescale> {scale.size}")
    return shift, scale


def _nnet_component_vector(lines: list[str], tag: str, path: Path) -> np.ndarray:
    """The vector of component ``tag``, laid out as ``<Tag> out in`` then ``<LearnRateCoef> c [ v ... ]``."""
    for number, line in enumerate(lines):
        header = line.split()
        if header[:1] != [tag]:
            continue
        body = lines[number + 1].split() if number + 1 < len(lines) else []
        if body[:1] != ["<LearnRateCoef>"] or "[" not in body or body[-1] != "]":
            raise ModelLoadError(f"{path}: the line after {tag} should read '<LearnRateCoef> c [ values ]'")
        try:
            values = [float(value) for value in body[body.index("[") + 1 : -1]]
        except ValueError as error:
            raise ModelLoadError(f"{path}: {tag} has a non-numeric value: {error}") from error
        if len(header) > 1 and header[1] != str(len(values)):
            raise ModelLoadError(f"{path}: {tag} declares {header[1]} values but holds {len(values)}")
        if not values or not all(map(math.isfinite, values)):
            raise ModelLoadError(f"{path}: {tag} must hold finite values, got {len(values)} values")
        return np.array(values, dtype=np.float32)
    raise ModelLoadError(f"{path}: no {tag} component; is this a Kaldi nnet am.mvn file?")


def kaldi_mel_banks(config: FrontendConfig) -> np.ndarray:
    """(fft_size // 2 + 1, n_mels) float32 triangles, equally spaced on kaldi's mel scale.

    Kaldi ignores the Nyquist bin; it gets an all-zero row here so the power spectrum multiplies in whole,
    without a strided slice.
    """

    def mel(frequency_hz: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log(1.0 + np.asarray(frequency_hz, dtype=np.float64) / 700.0)

    low, high = mel(LOW_FREQUENCY_HZ), mel(config.sample_rate / 2)
    spacing = (high - low) / (config.n_mels + 1)
    left = low + spacing * np.arange(config.n_mels)
    center, right = left + spacing, left + 2 * spacing
    bin_mel = mel(np.arange(config.fft_size // 2) * config.sample_rate / config.fft_size)[:, None]
    rising, falling = (bin_mel - left) / (center - left), (right - bin_mel) / (right - center)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return np.vstack([triangles, np.zeros((1, config.n_mels))]).astype(np.float32)


def analysis_window(config: FrontendConfig) -> np.ndarray:
    """Kaldi's (window_samples,) float32 window: its cosines span N - 1 samples, not N."""
    cosine = np.cos(2 * math.pi * np.arange(config.window_samples) / (config.window_samples - 1))
    if config.window == "hamming":
        window = 0.54 - 0.46 * cosine
    elif config.window == "hanning":
        window = 0.5 - 0.5 * cosine
    else:
        window = (0.5 - 0.5 * cosine) ** 0.85
    return window.astype(np.float32)


def lfr_gather_index(counts: Sequence[int], config: FrontendConfig) -> np.ndarray:
    """(items, longest ceil(count / lfr_n), lfr_m) indices of the fbank frames each LFR frame stacks, for
    items whose fbank frames lie end to end (``counts`` frames each).

    Like funasr's apply_lfr: (lfr_m - 1) // 2 copies of the first frame go in front, output frame i
    flattens frames [i * lfr_n, i * lfr_n + lfr_m) of that, and windows running past the end repeat the
    last frame. Clamping the indices to the item's first and last frame does all of it in one gather.
    Rows past an item's own end are filler.
    """
    m, n = config.lfr_m, config.lfr_n
    frames = np.asarray(counts, dtype=np.int64)
    longest = math.ceil(int(frames.max(initial=0)) / n)
    positions = np.maximum(np.arange(longest)[:, None] * n + np.arange(m) - (m - 1) // 2, 0)
    last_frames = np.maximum(frames - 1, 0)
    starts = np.cumsum(frames) - frames
    index = np.minimum(positions, last_frames[:, None, None]) + starts[:, None, None]
    # An item without frames points at its empty start, maybe past the end; its rows are filler anyway.
    return np.minimum(index, max(int(frames.sum()) - 1, 0))


def _mel_bands(mel_banks: np.ndarray, bands: int) -> list[tuple[slice, slice, np.ndarray]]:
    """``mel_banks`` cut into ``bands`` runs of mel bins: (FFT bins, mel bins, weights) for each, the FFT bins
    spanning those its mel bins weigh, so that the products skip the zeros outside the band."""
    weighed = mel_banks != 0
    pieces = []
    for mel_bins in np.array_split(np.arange(mel_banks.shape[1]), bands):
        fft_bins = np.flatnonzero(weighed[:, mel_bins].any(axis=1))
        rows = slice(fft_bins[0], fft_bins[-1] + 1) if fft_bins.size else slice(0, 0)
        columns = slice(mel_bins[0], mel_bins[-1] + 1)
        pieces.append((rows, columns, np.ascontiguousarray(mel_banks[rows, columns])))
    return pieces


def _device_type(device: str | torch.device) -> str:
    return str(device).split(":", 1)[0]


class FeatureExtractor(ABC):
    """Waveforms in [-1, 1] -> SenseVoice encoder inputs in float32, computed on ``device``.

    ``FeatureExtractor.for_device(config, shift, scale, device)`` builds the implementation for the device:
    NumPy on the CPU (``__call__`` returns NumPy arrays), torch elsewhere (torch tensors on the device). Build
    ``TorchFeatureExtractor`` (``features_torch``) directly to run torch on a CPU.

    Audio shorter than one analysis window (400 samples at 16 kHz) has no frames at all: its features are
    empty and its length 0, and the caller decides whether to skip it or pad the audio. funasr instead shrinks
    the window to the clip, a frame that kaldi-style snip-edges framing never produces.
    """

    def __init__(
        self,
        config: FrontendConfig,
        cmvn_shift: np.ndarray | torch.Tensor,
        cmvn_scale: np.ndarray | torch.Tensor,
        device: str | torch.device = "cpu",
    ):
        shift = np.asarray(cmvn_shift, dtype=np.float32).reshape(-1)
        scale = np.asarray(cmvn_scale, dtype=np.float32).reshape(-1)
        if shift.size != config.feature_dim or scale.size != config.feature_dim:
            raise ModelLoadError(
                f"CMVN statistics have {shift.size} values but features have {config.feature_dim}"
            )
        self.config = config
        self.device = str(device)
        self.cmvn_shift, self.cmvn_scale = shift, scale
        self._prepare()

    @staticmethod
    def for_device(
        config: FrontendConfig,
        cmvn_shift: np.ndarray | torch.Tensor,
        cmvn_scale: np.ndarray | torch.Tensor,
        device: str | torch.device = "cpu",
    ) -> FeatureExtractor:
        """NumPy on the CPU, torch on an accelerator (torch is imported only then)."""
        if _device_type(device) == "cpu":
            return NumpyFeatureExtractor(config, cmvn_shift, cmvn_scale, device)
        from .features_torch import TorchFeatureExtractor

        return TorchFeatureExtractor(config, cmvn_shift, cmvn_scale, device)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, device: str | torch.device = "cpu") -> FeatureExtractor:
        """From a model directory's config.yaml (``frontend_conf``) and am.mvn."""
        directory = Path(model_dir)
        try:
            model_config = yaml.safe_load((directory / "config.yaml").read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ModelLoadError(f"cannot read {directory / 'config.yaml'}: {error}") from error
        frontend = FrontendConfig.from_model_config(model_config.get("frontend_conf") or {})
        build = cls.for_device if cls is FeatureExtractor else cls  # a subclass asked for itself
        return build(frontend, *load_cmvn(directory / "am.mvn"), device=device)

    def __call__(self, waveforms: Sequence[np.ndarray | torch.Tensor]) -> tuple[Array, Array]:
        """1-D waveforms in [-1, 1] -> features (B, T_max, feature_dim) float32 zero-padded on the device,
        and lengths (B,) int64 on the CPU: each item's own feature frames, as ``num_lfr_frames`` predicts."""
        if len(waveforms) == 0:
            raise ValueError("no waveforms to extract features from")
        return self._extract(waveforms)

    @abstractmethod
    def _prepare(self) -> None:
        """The implementation's constants for ``self.config`` on ``self.device``."""

    @abstractmethod
    def _extract(self, waveforms: Sequence[np.ndarray | torch.Tensor]) -> tuple[Array, Array]: ...

    @abstractmethod
    def fbank(self, waveform: np.ndarray | torch.Tensor) -> Array:
        """1-D waveform in [-1, 1] -> (T, n_mels) log-mel energies; T = 0 for under one window of audio."""

    @abstractmethod
    def lfr(self, fbank: Array) -> Array:
        """(T, n_mels) -> (ceil(T / lfr_n), feature_dim) stacked frames (see ``lfr_gather_index``)."""


class NumpyFeatureExtractor(FeatureExtractor):
    """The frontend in NumPy on the CPU, item by item and ``CPU_CHUNK_FRAMES`` frames at a time."""

    def _prepare(self) -> None:
        if _device_type(self.device) != "cpu":
            raise ValueError(f"NumPy features run on the CPU, not on {self.device}")
        # Scaling by a power of two is exact, so the window takes kaldi's int16 scale for free.
        self._window = analysis_window(self.config) * np.float32(INT16_SCALE)
        self._mel_bands = _mel_bands(kaldi_mel_banks(self.config), min(CPU_MEL_BANDS, self.config.n_mels))

    def fbank(self, waveform: np.ndarray | torch.Tensor) -> np.ndarray:
        frames = self._frames(_as_waveform(waveform))
        log_mel = np.empty((frames.shape[0], self.config.n_mels), dtype=np.float32)
        # The FFT's input, zero past the window once and for all: rfft pads a copy of every row otherwise.
        padded = np.zeros((min(frames.shape[0], CPU_CHUNK_FRAMES), self.config.fft_size), dtype=np.float32)
        for start in range(0, frames.shape[0], CPU_CHUNK_FRAMES):
            chunk = frames[start : start + CPU_CHUNK_FRAMES]
            self._mel_energies(chunk, padded[: chunk.shape[0]], out=log_mel[start : start + chunk.shape[0]])
        return np.log(np.maximum(log_mel, LOG_FLOOR, out=log_mel), out=log_mel)

    def lfr(self, fbank: np.ndarray) -> np.ndarray:
        index = lfr_gather_index([fbank.shape[0]], self.config)[0]
        return fbank[index].reshape(index.shape[0], self.config.feature_dim)

    def _extract(self, waveforms: Sequence[np.ndarray | torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        items = [_as_waveform(waveform) for waveform in waveforms]
        lengths = np.array([num_lfr_frames(item.size, self.config) for item in items], dtype=np.int64)
        features = np.zeros((len(items), int(lengths.max()), self.config.feature_dim), dtype=np.float32)
        for item, row, length in zip(items, features, lengths, strict=True):
            np.add(self.lfr(self.fbank(item)), self.cmvn_shift, out=row[:length])
            row[:length] *= self.cmvn_scale
        return features, lengths

    def _frames(self, waveform: np.ndarray) -> np.ndarray:
        """(T, window_samples) views of the waveform, snip-edges style (no frame reaches past the end)."""
        if num_fbank_frames(waveform.size, self.config) == 0:
            return np.zeros((0, self.config.window_samples), dtype=np.float32)
        windows = np.lib.stride_tricks.sliding_window_view(waveform, self.config.window_samples)
        return windows[:: self.config.shift_samples]

    def _mel_energies(self, frames: np.ndarray, padded: np.ndarray, out: np.ndarray) -> None:
        """(T, window_samples) frames -> (T, n_mels) kaldi mel energies (dither 0) in ``out``, through
        ``padded``: (T, fft_size), zero past the window."""
        centred = frames - frames.mean(axis=1, keepdims=True)
        windowed = padded[:, : self.config.window_samples]
        # Kaldi's pre-emphasis treats the sample before the first as the first itself.
        np.multiply(centred[:, :-1], -PREEMPHASIS, out=windowed[:, 1:])
        np.multiply(centred[:, :1], -PREEMPHASIS, out=windowed[:, :1])
        windowed += centred
        windowed *= self._window
        spectrum = np.fft.rfft(padded)
        power = np.square(spectrum.real)
        power += np.square(spectrum.imag)
        for fft_bins, mel_bins, weights in self._mel_bands:
            np.matmul(power[:, fft_bins], weights, out=out[:, mel_bins])


def _as_waveform(waveform: np.ndarray | torch.Tensor) -> np.ndarray:
    """A float32 NumPy view (or copy) of a 1-D waveform; CPU torch tensors convert without importing torch."""
    samples = np.asarray(waveform, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {samples.shape}")
    return samples
