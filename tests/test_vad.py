"""Speech segmentation: real recordings joined into long files, and the segment rules on exact inputs."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sensevoice_serve.errors import InvalidOption
from sensevoice_serve.silero import shipped_model_path
from sensevoice_serve.vad import (
    SAMPLE_RATE,
    WINDOW_SAMPLES,
    SegmentBuilder,
    SpeechSpan,
    VadOptions,
    VoiceActivityDetector,
)

SHARED_AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"
EDGE_TOLERANCE = round(0.3 * SAMPLE_RATE)
# Where each recording's speech starts and ends (seconds), read off its 32 ms energy envelope; jfk's tail
# is crowd noise and zh_sample opens with a click 30 dB below the voice, so neither counts as speech.
SPEECH_IN_RECORDINGS = {
    ("jfk.flac", 0): (0.32, 10.6),
    ("zh_sample.wav", 0): (1.06, 5.86),
    ("stereo_diarization.wav", 0): (0.29, 4.66),
    ("stereo_diarization.wav", 1): (0.34, 2.78),
    ("multilingual.mp3", 0): (0.1, 59.72),
}
SHORT_CLIPS = [
    ("jfk.flac", 0),
    ("zh_sample.wav", 0),
    ("stereo_diarization.wav", 0),
    ("stereo_diarization.wav", 1),
]
LONG_CLIP = ("multilingual.mp3", 0)


def resample_to_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """Band-limited resampling by cutting the spectrum at the new Nyquist frequency."""
    if rate == SAMPLE_RATE:
        return samples
    length = round(len(samples) * SAMPLE_RATE / rate)
    spectrum = np.fft.rfft(samples)
    return (np.fft.irfft(spectrum[: length // 2 + 1], length) * length / len(samples)).astype(np.float32)


def quiet_noise(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """White noise at -60 dBFS: what a 'silent' stretch of a real recording sounds like."""
    return rng.normal(scale=10 ** (-60 / 20), size=round(seconds * SAMPLE_RATE)).astype(np.float32)


@pytest.fixture(scope="module")
def speech_clips() -> dict[tuple[str, int], np.ndarray]:
    """Each recording's channel at 16 kHz, cut to where its speech starts and ends."""
    if not SHARED_AUDIO.is_dir():
        pytest.skip(f"{SHARED_AUDIO} is missing (the shared recordings live beside the checkout)")
    clips = {}
    for (name, channel), (start, end) in SPEECH_IN_RECORDINGS.items():
        samples, rate = sf.read(SHARED_AUDIO / name, dtype="float32", always_2d=True)
        mono = resample_to_16k(samples[:, channel], rate)
        clips[name, channel] = mono[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)]
    return clips


@pytest.fixture(scope="module")
def detector() -> VoiceActivityDetector:
    return VoiceActivityDetector()


@pytest.fixture(scope="module")
def long_file(speech_clips) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """About two minutes: every clip twice (the long one once), between 1-3 s pauses of quiet noise."""
    rng = np.random.default_rng(7)
    order = [*SHORT_CLIPS, LONG_CLIP, *SHORT_CLIPS]
    pieces, clip_edges, position = [], [], 0
    for key in order:
        pause = quiet_noise(rng.uniform(1.0, 3.0), rng)
        pieces += [pause, speech_clips[key]]
        position += len(pause)
        clip_edges.append((position, position + len(speech_clips[key])))
        position += len(speech_clips[key])
    pieces.append(quiet_noise(1.5, rng))
    return np.concatenate(pieces), clip_edges


def continuous_speech(speech_clips) -> np.ndarray:
    """About 81 s of speech with only 50 ms breaks between recordings: too long for any one segment."""
    rng = np.random.default_rng(3)
    keys = [*SHORT_CLIPS, LONG_CLIP]
    return np.concatenate([piece for key in keys for piece in (speech_clips[key], quiet_noise(0.05, rng))])


def assert_well_formed(spans: list[SpeechSpan], total_samples: int, cap_seconds: float) -> None:
    for span in spans:
        assert 0 <= span.start < span.end <= total_samples
        assert span.end - span.start <= round(cap_seconds * SAMPLE_RATE)
    for earlier, later in pairwise(spans):
        assert earlier.end <= later.start


def test_every_recording_starts_and_ends_at_a_segment_edge(detector, long_file):
    samples, clip_edges = long_file
    spans = detector.segments(samples)

    starts = np.array([span.start for span in spans])
    ends = np.array([span.end for span in spans])
    for clip_start, clip_end in clip_edges:
        assert np.abs(starts - clip_start).min() <= EDGE_TOLERANCE, (clip_start / SAMPLE_RATE, spans)
        assert np.abs(ends - clip_end).min() <= EDGE_TOLERANCE, (clip_end / SAMPLE_RATE, spans)
    # Nothing is found in the pauses: every segment overlaps a recording.
    for span in spans:
        assert any(span.start < clip_end and clip_start < span.end for clip_start, clip_end in clip_edges)


def test_segments_are_sorted_disjoint_capped_and_inside_the_file(detector, long_file):
    samples, _ = long_file
    spans = detector.segments(samples)
    assert len(spans) > len(SHORT_CLIPS)
    assert_well_formed(spans, len(samples), detector.options.max_segment_seconds)


def test_streaming_in_7_second_chunks_matches_the_whole_file(detector, long_file):
    samples, _ = long_file
    chunk = 7 * SAMPLE_RATE
    segmenter = detector.stream()
    streamed, final_during_feed = [], 0
    for offset in range(0, len(samples), chunk):
        earliest = segmenter.earliest_pending_sample
        spans = segmenter.feed(samples[offset : offset + chunk])
        assert all(span.start >= earliest for span in spans)
        streamed += spans
        final_during_feed += len(spans)
    streamed += segmenter.flush()

    assert streamed == detector.segments(samples)
    assert final_during_feed > 0  # segments come out while the file is still being fed


def test_one_detector_serves_several_threads(detector, long_file):
    samples, _ = long_file
    expected = detector.segments(samples)
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda _: detector.segments(samples), range(3)))
    assert results == [expected] * 3


def test_batched_probabilities_match_the_shipped_model_stepwise(detector, speech_clips):
    """Our batched evaluation reproduces silero's own TorchScript model, window by window."""
    speech = speech_clips["zh_sample.wav", 0]
    speech = speech[: len(speech) // WINDOW_SAMPLES * WINDOW_SAMPLES]
    scripted = torch.jit.load(str(shipped_model_path()), map_location="cpu").eval()
    with torch.inference_mode():
        expected = [
            scripted(window.unsqueeze(0), SAMPLE_RATE).item()
            for window in torch.from_numpy(speech).split(WINDOW_SAMPLES)
        ]

    probabilities = detector.speech_probabilities(speech)

    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    assert probabilities.max() > 0.9 and probabilities.min() < 0.1  # really speech and really pauses


@pytest.mark.parametrize("cap_seconds", [30.0, 10.0])
def test_continuous_speech_is_cut_below_the_cap_at_quiet_points(detector, speech_clips, cap_seconds):
    samples = continuous_speech(speech_clips)
    # A speaker who never pauses long enough to end a segment: only the cap can split this.
    options = VadOptions(min_silence_seconds=3.0, max_segment_seconds=cap_seconds)
    spans = VoiceActivityDetector(options).segments(samples)

    assert_well_formed(spans, len(samples), cap_seconds)
    assert len(spans) >= math.ceil(len(samples) / (cap_seconds * SAMPLE_RATE))
    assert spans[0].start <= EDGE_TOLERANCE and spans[-1].end >= len(samples) - EDGE_TOLERANCE
    probabilities = detector.speech_probabilities(samples)
    for piece, following in pairwise(spans):
        assert piece.end == following.start  # cut pieces abut: no audio is lost at a cut
        assert piece.end - piece.start >= cap_seconds * SAMPLE_RATE / 2 - WINDOW_SAMPLES  # no tiny pieces
        cut_window = piece.end // WINDOW_SAMPLES
        assert probabilities[cut_window] < np.median(probabilities)  # cut in a pause, not mid-word


def test_continuous_speech_with_default_pauses_stays_below_a_short_cap(speech_clips):
    samples = continuous_speech(speech_clips)
    spans = VoiceActivityDetector(VadOptions(max_segment_seconds=10.0)).segments(samples)
    assert_well_formed(spans, len(samples), 10.0)


@pytest.mark.parametrize(
    "make_silence",
    [np.zeros, lambda size: quiet_noise(size / SAMPLE_RATE, np.random.default_rng(1))],
    ids=["digital-silence", "quiet-noise"],
)
def test_silence_gives_no_segments(detector, make_silence):
    silence = np.asarray(make_silence(20 * SAMPLE_RATE), dtype=np.float32)
    assert detector.segments(silence) == []
    segmenter = detector.stream()
    assert segmenter.feed(silence[: 5 * SAMPLE_RATE]) + segmenter.feed(silence[5 * SAMPLE_RATE :]) == []
    assert segmenter.flush() == []


@pytest.mark.parametrize("length", [0, 1, 100, WINDOW_SAMPLES - 1, WINDOW_SAMPLES, WINDOW_SAMPLES + 1])
def test_very_short_audio(detector, length):
    samples = np.random.default_rng(length).normal(scale=0.3, size=length).astype(np.float32)
    assert len(detector.speech_probabilities(samples)) == math.ceil(length / WINDOW_SAMPLES)
    assert_well_formed(detector.segments(samples), length, detector.options.max_segment_seconds)


def test_torch_thread_count_is_left_alone(detector):
    """silero_vad's own import sets torch's process-wide thread count to 1; loading the model must not."""
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        import torch
        torch.set_num_threads(3)
        from sensevoice_serve.vad import VoiceActivityDetector
        VoiceActivityDetector().segments(np.random.default_rng(0).normal(size=48000).astype(np.float32))
        assert torch.get_num_threads() == 3, torch.get_num_threads()
        assert "silero_vad" not in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True)

    threads = torch.get_num_threads()
    detector.segments(np.zeros(SAMPLE_RATE, dtype=np.float32))
    assert torch.get_num_threads() == threads


def test_a_flushed_stream_takes_no_more_audio(detector):
    segmenter = detector.stream()
    segmenter.feed(np.zeros(1000, dtype=np.float32))
    assert segmenter.flush() == []
    assert segmenter.flush() == []
    with pytest.raises(RuntimeError):
        segmenter.feed(np.zeros(1000, dtype=np.float32))


def test_multichannel_input_is_refused(detector):
    with pytest.raises(ValueError):
        detector.segments(np.zeros((2, 1000), dtype=np.float32))


@pytest.mark.parametrize(
    "options",
    [
        {"threshold": 1.5},
        {"threshold": 0.0},
        {"speech_pad_seconds": -0.1},
        {"max_segment_seconds": 0.5},
        {"min_silence_seconds": 2.0, "max_segment_seconds": 2.0},
    ],
)
def test_invalid_options_are_refused(options):
    with pytest.raises(InvalidOption):
        VadOptions(**options)


# The segment rules, on exact per-window probabilities (one window = 512 samples = 32 ms).
SPEECH, SILENCE = 0.95, 0.02
PAD = round(0.1 * SAMPLE_RATE)


def probabilities_of(*runs: tuple[float, int]) -> np.ndarray:
    return np.concatenate([np.full(count, value) for value, count in runs])


def build(probabilities: np.ndarray, options: VadOptions | None = None) -> list[SpeechSpan]:
    builder = SegmentBuilder(options or VadOptions())
    return builder.push(probabilities) + builder.finish(len(probabilities) * WINDOW_SAMPLES)


def test_speech_is_padded_on_both_sides():
    spans = build(probabilities_of((SILENCE, 20), (SPEECH, 30), (SILENCE, 40)))
    assert spans == [SpeechSpan(20 * WINDOW_SAMPLES - PAD, 50 * WINDOW_SAMPLES + PAD)]


def test_padding_stops_at_the_file_edges():
    spans = build(probabilities_of((SPEECH, 30)))
    assert spans == [SpeechSpan(0, 30 * WINDOW_SAMPLES)]


def test_gaps_shorter_than_min_silence_are_merged():
    # min_silence 0.3 s is 9.4 windows: a 9-window gap is merged, a 10-window gap separates.
    merged = build(probabilities_of((SILENCE, 20), (SPEECH, 30), (SILENCE, 9), (SPEECH, 30), (SILENCE, 40)))
    assert merged == [SpeechSpan(20 * WINDOW_SAMPLES - PAD, 89 * WINDOW_SAMPLES + PAD)]
    separate = build(
        probabilities_of((SILENCE, 20), (SPEECH, 30), (SILENCE, 10), (SPEECH, 30), (SILENCE, 40))
    )
    assert len(separate) == 2


def test_pads_never_overlap_the_neighbouring_segment():
    options = VadOptions(speech_pad_seconds=0.5)  # wider than half of the 12-window gap below
    first, second = build(
        probabilities_of((SILENCE, 40), (SPEECH, 30), (SILENCE, 12), (SPEECH, 30), (SILENCE, 40)), options
    )
    gap_middle = 70 * WINDOW_SAMPLES + 12 * WINDOW_SAMPLES // 2
    assert first.end == second.start == gap_middle
    assert first.start == 40 * WINDOW_SAMPLES - round(0.5 * SAMPLE_RATE)


def test_blips_shorter_than_min_speech_are_dropped():
    assert build(probabilities_of((SILENCE, 20), (SPEECH, 5), (SILENCE, 40))) == []


def test_hesitation_between_the_thresholds_does_not_end_speech():
    # 0.4 is below the 0.5 start threshold but above the 0.35 release threshold.
    spans = build(probabilities_of((SPEECH, 30), (0.4, 40), (SPEECH, 30), (SILENCE, 40)))
    assert len(spans) == 1


def test_over_long_speech_is_cut_at_its_quietest_point():
    options = VadOptions(max_segment_seconds=30.0)
    # 70 s of speech with a slight dip at 12 s and a deeper one at 20 s: 20 s is the quietest allowed cut.
    window = SAMPLE_RATE / WINDOW_SAMPLES
    probabilities = np.full(round(70 * window), SPEECH)
    probabilities[round(12 * window) : round(12 * window) + 6] = 0.6
    probabilities[round(20 * window) : round(20 * window) + 6] = 0.4
    spans = build(probabilities, options)

    assert_well_formed(spans, len(probabilities) * WINDOW_SAMPLES, 30.0)
    assert abs(spans[0].end / SAMPLE_RATE - 20.1) < 0.1
    assert [span.start for span in spans[1:]] == [span.end for span in spans[:-1]]


def test_the_builder_is_independent_of_how_probabilities_are_chunked():
    rng = np.random.default_rng(5)
    # A slowly wandering probability: speech and pauses of many lengths, some longer than the cap.
    probabilities = np.cumsum(rng.normal(scale=0.08, size=20000)) % 2.0
    probabilities = np.where(probabilities > 1, 2 - probabilities, probabilities)
    options = VadOptions(max_segment_seconds=5.0)
    whole = build(probabilities, options)

    builder = SegmentBuilder(options)
    chunked, offset = [], 0
    while offset < len(probabilities):
        size = int(rng.integers(1, 700))
        chunked += builder.push(probabilities[offset : offset + size])
        offset += size
    chunked += builder.finish(len(probabilities) * WINDOW_SAMPLES)

    assert chunked == whole
    assert len(whole) > 20
    assert_well_formed(whole, len(probabilities) * WINDOW_SAMPLES, 5.0)
