"""The frontend against kaldi-native-fbank (fbank), a reference loop (LFR) and the official am.mvn (CMVN).

Both implementations, NumPy (the CPU's) and torch (an accelerator's, run here on the CPU), face the same
references, and each other.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from sensevoice_serve.errors import ModelLoadError
from sensevoice_serve.features import (
    FeatureExtractor,
    FrontendConfig,
    NumpyFeatureExtractor,
    load_cmvn,
    num_fbank_frames,
    num_lfr_frames,
)
from sensevoice_serve.features_torch import HostStaging, TorchFeatureExtractor

from .conftest import shared_audio

# The official SenseVoiceSmall config.yaml and am.mvn, shipped with the package (identical to
# ../shared/model-assets), so these tests never skip for want of them.
ASSETS = Path(__file__).resolve().parents[1] / "src" / "sensevoice_serve" / "assets"
# Float32 rounding in the FFT is relative to the whole frame's energy, and log turns it into an error of
# (rounding / bin energy): a bin far below its frame's energy carries little precision in either
# implementation (up to 1e-3 at 20+ nats below). An absolute floor cannot tell these apart: a loud frame's
# quiet bin can still sit at e^5. So the log-domain comparison keeps bins within this many nats of their
# frame's total energy (about 98% of speech bins); the linear-domain check covers every bin.
NEAR_SILENT_NATS = 14.0


IMPLEMENTATIONS = {"numpy": NumpyFeatureExtractor, "torch": TorchFeatureExtractor}


def build(implementation: str, config: FrontendConfig | None = None) -> FeatureExtractor:
    return IMPLEMENTATIONS[implementation](config or FrontendConfig(), *load_cmvn(ASSETS / "am.mvn"))


@pytest.fixture(scope="module", params=list(IMPLEMENTATIONS))
def extractor(request: pytest.FixtureRequest) -> FeatureExtractor:
    return build(request.param)


def native(extractor: FeatureExtractor, array: np.ndarray) -> np.ndarray | torch.Tensor:
    """``array`` as the implementation's own array type."""
    return torch.from_numpy(array) if isinstance(extractor, TorchFeatureExtractor) else array


def mono_recording(name: str) -> np.ndarray:
    samples, rate = sf.read(shared_audio(name), dtype="float32", always_2d=True)
    assert rate == 16000
    return np.ascontiguousarray(samples[:, 0])


def audible_bins(log_mel: np.ndarray) -> np.ndarray:
    """True where a (T, n_mels) log-mel bin lies within NEAR_SILENT_NATS of its frame's total energy."""
    frame_energy = np.logaddexp.reduce(log_mel.astype(np.float64), axis=1, keepdims=True)
    return log_mel > frame_energy - NEAR_SILENT_NATS


def kaldi_native_fbank(samples: np.ndarray, window: str = "hamming") -> np.ndarray:
    knf = pytest.importorskip("kaldi_native_fbank")
    options = knf.FbankOptions()
    options.frame_opts.dither = 0
    options.frame_opts.window_type = window
    options.frame_opts.samp_freq = 16000
    options.frame_opts.snip_edges = True
    options.mel_opts.num_bins = 80
    options.energy_floor = 0
    computer = knf.OnlineFbank(options)
    computer.accept_waveform(16000, (samples * 32768).tolist())
    computer.input_finished()
    frames = [computer.get_frame(i) for i in range(computer.num_frames_ready)]
    return np.array(frames, dtype=np.float32).reshape(-1, 80)


def assert_same_log_mel(ours: np.ndarray, reference: np.ndarray, label: str) -> None:
    """Equal to float32 precision: see NEAR_SILENT_NATS for why the log domain looks at audible bins only."""
    assert ours.shape == reference.shape
    if reference.size == 0:
        return
    delta = np.abs(ours - reference)[audible_bins(reference)]
    # Every bin, near-silent ones included, in the linear domain relative to its frame's energy.
    energy, reference_energy = np.exp(ours.astype(np.float64)), np.exp(reference.astype(np.float64))
    relative = np.abs(energy - reference_energy) / reference_energy.sum(axis=1, keepdims=True)
    print(
        f"{label}: log-mel vs reference max |Δ| {delta.max():.2e}, mean |Δ| {delta.mean():.2e} "
        f"on {delta.size / reference.size:.1%} of bins; max energy error / frame energy {relative.max():.1e}"
    )
    assert delta.mean() <= 1e-5
    assert delta.max() <= 1e-4
    assert relative.max() <= 1e-5


@pytest.mark.parametrize("name", ["zh_sample.wav", "stereo_diarization.wav"])
def test_fbank_matches_kaldi_native_fbank(extractor: FeatureExtractor, name: str) -> None:
    samples = mono_recording(name)
    ours = np.asarray(extractor.fbank(samples))
    assert_same_log_mel(ours, kaldi_native_fbank(samples), name)


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("window", ["hanning", "povey"])
def test_other_kaldi_windows_match_kaldi_native_fbank(implementation: str, window: str) -> None:
    samples = mono_recording("zh_sample.wav")[: 3 * 16000]
    ours = np.asarray(build(implementation, FrontendConfig(window=window)).fbank(samples))
    assert_same_log_mel(ours, kaldi_native_fbank(samples, window), f"zh_sample.wav, {window} window")


@pytest.mark.parametrize("num_samples", [0, 1, 399, 400, 401, 559, 560, 561, 1360, 16000, 16001, 96000])
def test_frame_counts_agree_with_kaldi_and_the_arithmetic(
    extractor: FeatureExtractor, num_samples: int
) -> None:
    samples = np.random.default_rng(num_samples).uniform(-0.5, 0.5, num_samples).astype(np.float32)
    fbank = extractor.fbank(samples)
    assert fbank.shape == (num_fbank_frames(num_samples), 80)
    assert fbank.shape[0] == kaldi_native_fbank(samples).shape[0]
    assert extractor.lfr(fbank).shape == (num_lfr_frames(num_samples), 560)
    features, lengths = extractor([samples])
    assert lengths.tolist() == [num_lfr_frames(num_samples)]
    assert features.shape == (1, num_lfr_frames(num_samples), 560)
    assert features.dtype in (np.float32, torch.float32) and lengths.dtype in (np.int64, torch.int64)


def reference_lfr(fbank: np.ndarray, m: int = 7, n: int = 6) -> np.ndarray:
    """funasr's apply_lfr written out as a loop over output frames."""
    padded = np.concatenate([np.repeat(fbank[:1], (m - 1) // 2, axis=0), fbank])
    rows = []
    for i in range(math.ceil(len(fbank) / n)):
        window = padded[i * n : i * n + m]
        if len(window) < m:
            window = np.concatenate([window, np.repeat(padded[-1:], m - len(window), axis=0)])
        rows.append(window.reshape(-1))
    return np.array(rows, dtype=fbank.dtype).reshape(-1, m * fbank.shape[1])


@pytest.mark.parametrize("frames", [0, 1, 2, 5, 6, 7, 12, 13, 18, 100])
def test_lfr_matches_the_reference_loop(extractor: FeatureExtractor, frames: int) -> None:
    fbank = np.random.default_rng(frames).standard_normal((frames, 80)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(extractor.lfr(native(extractor, fbank))), reference_lfr(fbank))


def test_cmvn_reads_shift_and_scale_not_the_splice_block() -> None:
    shift, scale = load_cmvn(ASSETS / "am.mvn")
    assert isinstance(shift, np.ndarray) and isinstance(scale, np.ndarray)
    assert shift.dtype == scale.dtype == np.float32
    assert shift.shape == scale.shape == (560,)
    # First and last values of the <AddShift> and <Rescale> vectors as written in the file.
    assert shift[[0, -1]].tolist() == pytest.approx([-8.311879, -11.71208])
    assert scale[[0, -1]].tolist() == pytest.approx([0.155775, 0.1509654])
    assert (shift < 0).all() and (scale > 0).all()


VALID_VECTOR = "<LearnRateCoef> 0 [ 1 2 ]"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<Nnet>\n<Splice> 2 2\n[ 0 ]\n</Nnet>\n", "no <AddShift> component"),
        (f"<AddShift> 2 2\n{VALID_VECTOR}\n</Nnet>\n", "no <Rescale> component"),
        (f"<AddShift> 2 2\n<LearnRateCoef> 0 [ 1 2\n<Rescale> 2 2\n{VALID_VECTOR}\n", "should read"),
        (f"<AddShift> 2 2\n\n<Rescale> 2 2\n{VALID_VECTOR}\n", "should read"),
        (f"<AddShift> 2 2\n<LearnRateCoef> 0 [ 1 x ]\n<Rescale> 2 2\n{VALID_VECTOR}\n", "non-numeric"),
        (f"<AddShift> 3 3\n{VALID_VECTOR}\n<Rescale> 2 2\n{VALID_VECTOR}\n", "declares 3 values but holds 2"),
        (f"<AddShift> 2 2\n<LearnRateCoef> 0 [ 1 nan ]\n<Rescale> 2 2\n{VALID_VECTOR}\n", "finite"),
        (
            f"<AddShift> 2 2\n{VALID_VECTOR}\n<Rescale> 1 1\n<LearnRateCoef> 0 [ 1 ]\n",
            "2 values but <Rescale> 1",
        ),
        (f"<AddShift> 2 2\n{VALID_VECTOR}\n<Rescale> 2 2", "should read"),
    ],
)
def test_malformed_cmvn_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "am.mvn"
    path.write_text(text)
    with pytest.raises(ModelLoadError, match=message):
        load_cmvn(path)


def test_missing_cmvn_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot read CMVN statistics"):
        load_cmvn(tmp_path / "am.mvn")


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
def test_cmvn_must_fit_the_feature_size(implementation: str) -> None:
    with pytest.raises(ModelLoadError, match="80 values but features have 560"):
        IMPLEMENTATIONS[implementation](FrontendConfig(), np.zeros(80), np.ones(80))


def test_features_are_normalised_lfr_of_fbank(extractor: FeatureExtractor) -> None:
    samples = mono_recording("zh_sample.wav")
    features, _ = extractor([samples])
    lfr = np.asarray(extractor.lfr(extractor.fbank(samples)))
    shift, scale = load_cmvn(ASSETS / "am.mvn")
    np.testing.assert_array_equal(np.asarray(features[0]), (lfr + shift) * scale)


@pytest.mark.parametrize("strategy", ["numpy", "torch", "torch staged"])
def test_batch_equals_items_and_lengths_are_right(strategy: str) -> None:
    extractor = build(strategy.split()[0])
    if strategy == "torch staged":  # what an accelerator does: the batch's audio through one host buffer
        extractor._staging = HostStaging(extractor.torch_device)
    speech = mono_recording("zh_sample.wav")
    clips = [
        speech[:16000],
        speech,
        speech[:399],
        speech[:5000],
        torch.from_numpy(speech[1000:1400]).double(),
    ]
    features, lengths = extractor(clips)
    assert lengths.dtype in (np.int64, torch.int64)
    assert lengths.tolist() == [num_lfr_frames(len(clip)) for clip in clips] == [17, 100, 0, 5, 1]
    assert features.shape == (5, 100, 560) and features.dtype in (np.float32, torch.float32)
    for row, clip in enumerate(clips):
        alone = np.asarray(extractor.lfr(extractor.fbank(clip)))
        expected = (alone + extractor.cmvn_shift) * extractor.cmvn_scale
        np.testing.assert_allclose(np.asarray(features[row, : lengths[row]]), expected, rtol=1e-6, atol=1e-6)
        assert not features[row, lengths[row] :].any()


def test_host_staging_reuses_its_buffer_and_never_mixes_batches() -> None:
    staging = HostStaging(torch.device("cpu"))
    first = [np.arange(5, dtype=np.float32), torch.arange(3, dtype=torch.float64), np.zeros(0, np.float32)]
    uploaded = staging.upload(first)
    assert [u.tolist() for u in uploaded] == [[0, 1, 2, 3, 4], [0, 1, 2], []]
    assert all(u.dtype == torch.float32 for u in uploaded)
    capacity, address = staging.capacity, staging._host.data_ptr()
    assert capacity >= 8
    second = staging.upload([np.full(2, 7, np.float32)])
    assert [s.tolist() for s in second] == [[7, 7]]
    assert staging._host.data_ptr() == address  # a smaller batch reuses the buffer...
    assert uploaded[0].tolist() == [0, 1, 2, 3, 4]  # ...without touching what was handed out before it
    third = staging.upload([np.ones(capacity + 1, np.float32)])
    assert staging.capacity > capacity and third[0].sum() == capacity + 1
    with pytest.raises(ValueError, match="1-D waveforms"):
        staging.upload([np.zeros((2, 3), np.float32)])


def test_batch_of_clips_under_one_window_is_empty(extractor: FeatureExtractor) -> None:
    features, lengths = extractor([np.zeros(399, dtype=np.float32), np.zeros(0, dtype=np.float32)])
    assert features.shape == (2, 0, 560)
    assert lengths.tolist() == [0, 0]


def test_bad_inputs_are_rejected(extractor: FeatureExtractor) -> None:
    with pytest.raises(ValueError, match="no waveforms"):
        extractor([])
    with pytest.raises(ValueError, match="1-D waveform"):
        extractor([np.zeros((2, 16000), dtype=np.float32)])


def test_config_comes_from_the_official_frontend_conf() -> None:
    frontend_conf = yaml.safe_load((ASSETS / "config.yaml").read_text())["frontend_conf"]
    assert "cmvn_file" in frontend_conf  # ignored: the CMVN statistics come from am.mvn beside it
    config = FrontendConfig.from_model_config(frontend_conf)
    assert config == FrontendConfig()
    assert (config.window_samples, config.shift_samples, config.fft_size, config.feature_dim) == (
        400,
        160,
        512,
        560,
    )
    with pytest.raises(ModelLoadError, match="unsupported frontend window 'blackman'"):
        FrontendConfig.from_model_config({**frontend_conf, "window": "blackman"})


def test_from_model_dir(tiny_model_dir: Path, tmp_path: Path) -> None:
    extractor = FeatureExtractor.from_model_dir(tiny_model_dir)
    assert isinstance(extractor, NumpyFeatureExtractor)
    assert extractor.config.feature_dim == 560
    assert extractor.device == "cpu"
    torch_extractor = TorchFeatureExtractor.from_model_dir(tiny_model_dir)
    assert isinstance(torch_extractor, TorchFeatureExtractor) and torch_extractor.torch_device.type == "cpu"
    with pytest.raises(ModelLoadError, match="config.yaml"):
        FeatureExtractor.from_model_dir(tmp_path)


@pytest.mark.parametrize(
    ("device", "implementation"),
    [
        ("cpu", NumpyFeatureExtractor),
        (torch.device("cpu"), NumpyFeatureExtractor),
        ("meta", TorchFeatureExtractor),  # stands in for an accelerator: torch, not the CPU
        (torch.device("meta"), TorchFeatureExtractor),
    ],
)
def test_the_device_picks_the_implementation(device: str | torch.device, implementation: type) -> None:
    extractor = FeatureExtractor.for_device(FrontendConfig(), *load_cmvn(ASSETS / "am.mvn"), device=device)
    assert type(extractor) is implementation
    assert extractor.device == str(device)


def test_numpy_features_refuse_another_device() -> None:
    with pytest.raises(ValueError, match="NumPy features run on the CPU"):
        NumpyFeatureExtractor(FrontendConfig(), *load_cmvn(ASSETS / "am.mvn"), device="cuda:0")


def test_the_cpu_path_never_imports_torch(tiny_model_dir: Path) -> None:
    script = (
        "import sys, numpy as np\n"
        "from sensevoice_serve.features import FeatureExtractor\n"
        f"extractor = FeatureExtractor.from_model_dir({str(tiny_model_dir)!r}, 'cpu')\n"
        "features, lengths = extractor([np.zeros(16000, np.float32), np.zeros(300, np.float32)])\n"
        "assert features.shape == (2, 17, 560) and lengths.tolist() == [17, 0], (features.shape, lengths)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr


def test_numpy_and_torch_agree_on_a_ragged_batch() -> None:
    numpy_extractor, torch_extractor = build("numpy"), build("torch")
    speech = mono_recording("zh_sample.wav")
    # Under one window, exactly one, one and a sample, ends in mid LFR window, whole recordings.
    clips = [speech[:n] for n in (0, 399, 400, 401, 1360, 16000 + 123)]
    clips += [speech, mono_recording("stereo_diarization.wav")]
    ours, lengths = numpy_extractor(clips)
    theirs, their_lengths = torch_extractor(clips)
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float32
    assert isinstance(lengths, np.ndarray) and lengths.dtype == np.int64
    assert lengths.tolist() == their_lengths.tolist() == [num_lfr_frames(len(clip)) for clip in clips]
    assert ours.shape == tuple(theirs.shape)
    for row, (clip, length) in enumerate(zip(clips, lengths, strict=True)):
        reference = torch_extractor.fbank(clip).numpy()
        assert_same_log_mel(numpy_extractor.fbank(clip), reference, f"NumPy vs torch, {len(clip)} samples")
        # LFR copies fbank bins and CMVN is elementwise: a feature is as precise as the bin it comes from.
        audible = numpy_extractor.lfr(audible_bins(reference))
        delta = np.abs(ours[row, :length] - theirs[row, :length].numpy())[audible]
        assert delta.size == 0 or delta.max() <= 1e-4
        assert not ours[row, length:].any()


@pytest.mark.parametrize("n_mels", [23, 40, 128])
def test_numpy_and_torch_fbank_agree_for_other_mel_counts(n_mels: int) -> None:
    config = FrontendConfig(n_mels=n_mels)
    zeros = np.zeros(config.feature_dim)
    samples = mono_recording("zh_sample.wav")
    ours = NumpyFeatureExtractor(config, zeros, zeros).fbank(samples)
    reference = TorchFeatureExtractor(config, zeros, zeros).fbank(samples).numpy()
    assert_same_log_mel(ours, reference, f"NumPy vs torch, {n_mels} mel bins")
