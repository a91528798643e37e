"""The torch-tensor path a GPU engine runs (torch features through the pinned-buffer staging, the torch model,
``TorchScorer``, ``CTCDecoder.finish``), run here on the CPU so that CI covers it without a GPU: its results
against the NumPy-feature path the CPU engine runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sensevoice_serve.audio import decode_audio
from sensevoice_serve.batching import Utterance
from sensevoice_serve.decoding import DecodeOptions
from sensevoice_serve.features_torch import HostStaging, TorchFeatureExtractor
from sensevoice_serve.pipeline import SenseVoice
from sensevoice_serve.scheduler import Scheduler

from .conftest import shared_audio

SAMPLE_RATE = 16000
# Raised on two emotions' CTC biases, so that utterances emit an emotion and its probability is computed.
EMOTION_BIAS = 30.0


def gpu_like(model_dir: Path) -> SenseVoice:
    """A CPU engine whose features are torch tensors staged through a host buffer, as on a GPU."""
    engine = SenseVoice.from_pretrained(model_dir, device="cpu", dtype="fp32")
    numpy_features = engine.features
    engine.features = TorchFeatureExtractor(
        numpy_features.config, numpy_features.cmvn_shift, numpy_features.cmvn_scale, "cpu"
    )
    engine.features._staging = HostStaging(torch.device("cpu"))
    return engine


def emitting_emotions(engine: SenseVoice) -> SenseVoice:
    emotions = list(engine.tokenizer.emotions.values())
    with torch.no_grad():
        engine.model.ctc.ctc_lo.bias[emotions[1]] += EMOTION_BIAS
        engine.model.ctc.ctc_lo.bias[emotions[3]] += EMOTION_BIAS - 0.5
    return engine


@pytest.fixture(scope="module")
def utterances() -> list[Utterance]:
    samples = decode_audio(shared_audio("jfk.flac")).samples
    second = SAMPLE_RATE
    clips = [samples[: 5 * second], samples[second : 3 * second], samples[:200], samples[5000:]]
    options = [
        DecodeOptions(),
        DecodeOptions(beam_size=4),
        DecodeOptions(ban_emo_unk=True),
        DecodeOptions(beam_size=3, hotwords=("hello",)),
    ]
    return [Utterance(clip, option) for clip, option in zip(clips, options, strict=True)]


def test_torch_features_through_run_batch_match_the_numpy_path(
    tiny_model_dir: Path, utterances: list[Utterance]
) -> None:
    numpy_engine = emitting_emotions(SenseVoice.from_pretrained(tiny_model_dir, device="cpu", dtype="fp32"))
    torch_engine = emitting_emotions(gpu_like(tiny_model_dir))
    expected, found = numpy_engine.run_batch(utterances), torch_engine.run_batch(utterances)
    assert [s.emotion for s in found] == [s.emotion for s in expected]
    assert all(s.emotion_prob is not None for s in found[:2])
    for ours, theirs in zip(found, expected, strict=True):
        assert [t.id for t in ours.tokens] == [t.id for t in theirs.tokens]
        assert (ours.language, ours.event, ours.itn) == (theirs.language, theirs.event, theirs.itn)
        assert ours.emotion_prob == pytest.approx(theirs.emotion_prob, abs=1e-3)


def test_a_batch_in_inference_mode_does_not_break_the_next_ones(
    tiny_model_dir: Path, utterances: list[Utterance]
) -> None:
    """The staging buffer outlives a batch: made in the caller's inference mode (the benchmarks, the GPU
    tests), it could not be written again by the scheduler's batches, which run outside it."""
    engine = gpu_like(tiny_model_dir)
    with torch.inference_mode():
        inside = engine.run_batch(utterances)
    outside = engine.run_batch(utterances[1:])
    assert [[t.id for t in s.tokens] for s in outside] == [[t.id for t in s.tokens] for s in inside[1:]]
    scheduler = Scheduler(engine, max_batch_frames=20_000, overlap=True)
    scheduler.start()
    try:
        result = scheduler.submit([utterances[0]]).result(timeout=60)
    finally:
        scheduler.stop()
    assert [t.id for t in result.segments[0].tokens] == [t.id for t in inside[0].tokens]


def test_host_staging_made_in_inference_mode_is_written_outside_it() -> None:
    staging = HostStaging(torch.device("cpu"))
    with torch.inference_mode():
        staging.upload([np.ones(100, np.float32)])
    (uploaded,) = staging.upload([np.arange(50, dtype=np.float32)])
    assert torch.equal(uploaded, torch.arange(50, dtype=torch.float32))
