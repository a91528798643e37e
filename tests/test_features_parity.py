"""Final 560-d features against funasr's own WavFrontend, fed exactly as SenseVoiceSmall's inference feeds it.

funasr computes its fbank with torchaudio where installed and kaldi-native-fbank otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sensevoice_serve.features import FeatureExtractor

from .test_features import ASSETS, IMPLEMENTATIONS, audible_bins, build, mono_recording

pytestmark = [pytest.mark.parity]
pytest.importorskip("funasr", exc_type=ImportError)  # also skips when conftest blocks funasr

from funasr.frontends.wav_frontend import WavFrontend  # noqa: E402  (only once funasr is known to exist)


@pytest.fixture(scope="module")
def funasr_frontend() -> WavFrontend:
    return WavFrontend(
        cmvn_file=str(ASSETS / "am.mvn"),
        fs=16000,
        window="hamming",
        n_mels=80,
        frame_length=25,
        frame_shift=10,
        lfr_m=7,
        lfr_n=6,
        dither=0.0,
    )


@pytest.fixture(scope="module", params=list(IMPLEMENTATIONS))
def extractor(request: pytest.FixtureRequest) -> FeatureExtractor:
    return build(request.param)


def audible_features(extractor: FeatureExtractor, samples: np.ndarray) -> np.ndarray:
    """True for feature elements stacked from an fbank bin that ``audible_bins`` keeps.

    LFR only copies fbank bins and CMVN is elementwise, so each feature element inherits the precision of
    exactly one fbank bin; stacking the fbank's audible mask the same way marks the comparable elements.
    """
    return build("numpy").lfr(audible_bins(np.asarray(extractor.fbank(samples))))


def funasr_features(frontend: WavFrontend, clips: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """funasr's forward takes a zero-padded (B, N) batch of [-1, 1] samples and each item's sample count."""
    padded = torch.zeros(len(clips), max(len(clip) for clip in clips))
    for row, clip in enumerate(clips):
        padded[row, : len(clip)] = torch.from_numpy(clip)
    features, lengths = frontend(padded, torch.tensor([len(clip) for clip in clips]))
    return features.numpy(), lengths.tolist()


@pytest.mark.parametrize("name", ["zh_sample.wav", "stereo_diarization.wav"])
def test_features_match_funasr_frontend(
    funasr_frontend: WavFrontend, extractor: FeatureExtractor, name: str
) -> None:
    samples = mono_recording(name)
    theirs, their_lengths = funasr_features(funasr_frontend, [samples])
    ours, our_lengths = extractor([samples])
    assert our_lengths.tolist() == their_lengths
    delta = np.abs(np.asarray(ours[0]) - theirs[0])
    audible = audible_features(extractor, samples)
    print(
        f"{name}: features vs funasr max |Δ| {delta[audible].max():.2e}, "
        f"mean |Δ| {delta[audible].mean():.2e} on {audible.mean():.1%} of elements; "
        f"over all elements max {delta.max():.2e}"
    )
    assert delta[audible].mean() <= 1e-5
    assert delta[audible].max() <= 1e-4


def test_padded_batch_matches_funasr_frontend(
    funasr_frontend: WavFrontend, extractor: FeatureExtractor
) -> None:
    # Each clip holds a whole window: below that funasr shrinks the window to the clip, we make no frame.
    speech = mono_recording("zh_sample.wav")
    clips = [speech, speech[:16000], speech[:400], speech[8000 : 8000 + 6 * 160 * 6 + 400]]
    theirs, their_lengths = funasr_features(funasr_frontend, clips)
    ours, our_lengths = extractor(clips)
    assert our_lengths.tolist() == their_lengths
    assert ours.shape == theirs.shape
    for row, clip in enumerate(clips):
        delta = np.abs(np.asarray(ours[row, : our_lengths[row]]) - theirs[row, : their_lengths[row]])
        assert delta[audible_features(extractor, clip)].max() <= 1e-4
        assert not ours[row, our_lengths[row] :].any()
        assert not theirs[row, their_lengths[row] :].any()
