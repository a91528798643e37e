from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sensevoice_serve.errors import ModelLoadError
from sensevoice_serve.features import FeatureExtractor, FrontendConfig, load_cmvn, num_lfr_frames

from .conftest import shared_audio

ASSETS = Path(__file__).resolve().parents[1] / "src" / "sensevoice_serve" / "assets"
QUIET_BIN_LOG_RANGE = 14.0  # bins over e^14 (~61 dB) below the frame's loudest bin count as near-silent


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return FeatureExtractor(FrontendConfig(), *load_cmvn(ASSETS / "am.mvn"))


def _mono(name: str) -> np.ndarray:
    samples, rate = sf.read(shared_audio(name), dtype="float32", always_2d=True)
    assert rate == 16000
    return samples[:, 0]


def _audible(reference: np.ndarray) -> np.ndarray:
    """Log amplifies float rounding where a bin's energy is tiny next to the frame's: compare the rest."""
    return reference > reference.max(axis=1, keepdims=True) - QUIET_BIN_LOG_RANGE


@pytest.mark.parametrize("name", ["zh_sample.wav", "stereo_diarization.wav"])
def test_fbank_matches_kaldi_native_fbank(extractor: FeatureExtractor, name: str) -> None:
    knf = pytest.importorskip("kaldi_native_fbank")
    samples = _mono(name)
    options = knf.FbankOptions()
    options.frame_opts.dither = 0
    options.frame_opts.window_type = "hamming"
    options.frame_opts.samp_freq = 16000
    options.frame_opts.snip_edges = True
    options.mel_opts.num_bins = 80
    options.energy_floor = 0
    computer = knf.OnlineFbank(options)
    computer.accept_waveform(16000, (samples * 32768).tolist())
    computer.input_finished()
    reference = np.stack([computer.get_frame(i) for i in range(computer.num_frames_ready)])
    ours = extractor.fbank(torch.from_numpy(samples)).numpy()
    assert ours.shape == reference.shape
    delta = np.abs(ours - reference)[_audible(reference)]
    print(f"{name}: fbank vs kaldi-native-fbank max {delta.max():.2e} mean {delta.mean():.2e}")
    assert delta.mean() <= 1e-5
    assert delta.max() <= 1e-4


def _reference_lfr(fbank: np.ndarray, m: int = 7, n: int = 6) -> np.ndarray:
    frames = fbank.shape[0]
    padded = np.concatenate([np.repeat(fbank[:1], (m - 1) // 2, axis=0), fbank])
    rows = []
    for i in range(math.ceil(frames / n)):
        window = padded[i * n : i * n + m]
        if len(window) < m:
            window = np.concatenate([window, np.repeat(padded[-1:], m - len(window), axis=0)])
        rows.append(window.reshape(-1))
    return np.stack(rows) if rows else np.zeros((0, m * fbank.shape[1]), dtype=fbank.dtype)


@pytest.mark.parametrize("frames", [0, 1, 5, 6, 7, 12, 13, 100])
def test_lfr_matches_the_reference_loop(extractor: FeatureExtractor, frames: int) -> None:
    fbank = torch.randn(frames, 80)
    np.testing.assert_array_equal(extractor.lfr(fbank).numpy(), _reference_lfr(fbank.numpy()))


def test_cmvn_reads_shift_and_scale_not_the_splice_block() -> None:
    shift, scale = load_cmvn(ASSETS / "am.mvn")
    assert shift.shape == scale.shape == (560,)
    assert shift[0] == pytest.approx(-8.311879)
    assert (scale > 0).all()


def test_malformed_cmvn_is_a_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "am.mvn"
    bogus.write_text("<Nnet>\n<Splice> 560 560\n[ 0 ]\n</Nnet>\n")
    with pytest.raises(ModelLoadError, match="no <AddShift> vector"):
        load_cmvn(bogus)


def test_batch_equals_items_and_lengths_are_right(extractor: FeatureExtractor) -> None:
    speech = _mono("zh_sample.wav")
    clips = [speech[:16000], speech, speech[:399], speech[:5000]]
    batch, lengths = extractor(clips)
    assert lengths.tolist() == [num_lfr_frames(len(c)) for c in clips]
    for index, clip in enumerate(clips):
        alone, _ = extractor([clip])
        n = lengths[index]
        torch.testing.assert_close(batch[index, :n], alone[0, :n])
        assert not batch[index, n:].any()


@pytest.mark.parametrize("samples", [0, 399, 400, 401, 559, 560, 1360, 16000, 16001, 96000])
def test_frame_count_arithmetic(extractor: FeatureExtractor, samples: int) -> None:
    _, lengths = extractor([np.zeros(samples, dtype=np.float32)])
    assert lengths.tolist() == [num_lfr_frames(samples)]


def test_from_model_dir(tiny_model_dir: Path) -> None:
    extractor = FeatureExtractor.from_model_dir(tiny_model_dir)
    assert extractor.config.feature_dim == 560
