"""Features against funasr's own frontend (which falls back to kaldi-native-fbank without torchaudio)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sensevoice_serve.features import FeatureExtractor, FrontendConfig, load_cmvn

from .conftest import shared_audio
from .test_features import ASSETS, QUIET_BIN_LOG_RANGE

pytestmark = pytest.mark.parity


@pytest.mark.parametrize("name", ["zh_sample.wav", "stereo_diarization.wav"])
def test_features_match_funasr_frontend(name: str) -> None:
    wav_frontend = pytest.importorskip("funasr.frontends.wav_frontend")
    cmvn = str(Path(ASSETS / "am.mvn"))
    frontend_conf = {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25, "frame_shift": 10}
    reference = wav_frontend.WavFrontend(cmvn_file=cmvn, lfr_m=7, lfr_n=6, dither=0.0, **frontend_conf)
    samples = sf.read(shared_audio(name), dtype="float32", always_2d=True)[0][:, 0]
    theirs, their_lengths = reference(torch.from_numpy(samples)[None], torch.tensor([len(samples)]))
    extractor = FeatureExtractor(FrontendConfig(), *load_cmvn(cmvn))
    ours, our_lengths = extractor([samples])
    assert our_lengths.tolist() == their_lengths.tolist()
    # Judge each feature by the fbank energy it came from: near-silent bins only amplify rounding.
    fbank = extractor.fbank(torch.from_numpy(samples)).numpy()
    audible_fbank = fbank > fbank.max(axis=1, keepdims=True) - QUIET_BIN_LOG_RANGE
    audible = extractor.lfr(torch.from_numpy(audible_fbank.astype(np.float32))).numpy() > 0.5
    delta = (ours[0] - theirs[0]).abs().numpy()
    print(f"{name}: features vs funasr max {delta[audible].max():.2e} mean {delta[audible].mean():.2e}")
    assert delta[audible].mean() <= 1e-5
    assert delta[audible].max() <= 1e-4
