"""Server VAD turns from per-window speech probabilities (OpenAI's server_vad settings)."""

from __future__ import annotations

import numpy as np

from sensevoice_serve.audio import decode_audio
from sensevoice_serve.realtime.protocol import ServerVad
from sensevoice_serve.realtime.turns import SpeechStarted, SpeechStopped, TurnDetector, WindowProbabilities
from sensevoice_serve.silero import WINDOW_SAMPLES, load_model

from .conftest import shared_audio

VAD = ServerVad(threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500)
PREFIX = 4800  # samples
SILENCE_WINDOWS = 16  # 500 ms in 32 ms windows, rounded up
MIN_SPEECH_WINDOWS = 8  # 250 ms


def probabilities(*runs: tuple[int, float]) -> np.ndarray:
    return np.concatenate([np.full(count, value) for count, value in runs])


def run(detector: TurnDetector, values: np.ndarray, chunk: int = 3) -> list:
    return [
        event
        for start in range(0, len(values), chunk)
        for event in detector.push(values[start : start + chunk])
    ]


def test_a_turn_starts_with_its_prefix_padding_and_ends_after_the_silence() -> None:
    values = probabilities((20, 0.0), (30, 0.9), (20, 0.0))
    assert run(TurnDetector(VAD, 16000 * 15), values) == [
        SpeechStarted(20 * WINDOW_SAMPLES - PREFIX),
        SpeechStopped((50 + SILENCE_WINDOWS) * WINDOW_SAMPLES),
    ]
    # The same in any chunking.
    assert run(TurnDetector(VAD, 16000 * 15), values, chunk=1) == run(
        TurnDetector(VAD, 16000 * 15), values, 17
    )


def test_short_blips_and_short_pauses_do_not_make_turns() -> None:
    blip = probabilities((10, 0.0), (MIN_SPEECH_WINDOWS - 1, 0.9), (10, 0.0))
    assert run(TurnDetector(VAD, 16000 * 15), blip) == []
    # A pause shorter than the silence duration stays inside the turn; hovering between threshold - 0.15
    # and the threshold is not silence.
    values = probabilities((10, 0.9), (SILENCE_WINDOWS - 1, 0.1), (10, 0.9), (40, 0.4), (10, 0.9))
    events = run(TurnDetector(VAD, 16000 * 15), values)
    assert events == [SpeechStarted(0)]


def test_turns_never_overlap_and_windows_count_from_the_origin() -> None:
    origin = 100_000
    values = probabilities((30, 0.9), (SILENCE_WINDOWS, 0.0), (2, 0.0), (30, 0.9))
    detector = TurnDetector(VAD, 16000 * 15, origin=origin)
    first_end = origin + (30 + SILENCE_WINDOWS) * WINDOW_SAMPLES
    assert run(detector, values) == [
        SpeechStarted(origin),
        SpeechStopped(first_end),
        SpeechStarted(first_end),
    ]


def test_a_turn_at_the_maximum_length_is_cut_at_its_quietest_point_and_goes_on() -> None:
    max_samples = 64 * WINDOW_SAMPLES
    values = np.full(100, 0.9)
    values[40] = 0.4  # the quietest window in the turn's second half
    values[10] = 0.3  # quieter, but in the first half
    events = run(TurnDetector(VAD, max_samples), values)
    cut = 40 * WINDOW_SAMPLES + WINDOW_SAMPLES // 2
    assert events == [SpeechStarted(0), SpeechStopped(cut), SpeechStarted(cut)]


def test_keep_from_says_which_audio_a_later_event_may_still_need() -> None:
    detector = TurnDetector(VAD, 16000 * 15)
    detector.push(np.zeros(50))
    assert detector.keep_from == 50 * WINDOW_SAMPLES - PREFIX
    detector.push(np.full(3, 0.9))  # a speech run not yet long enough: its prefix is kept
    assert detector.keep_from == 50 * WINDOW_SAMPLES - PREFIX
    detector.push(np.full(10, 0.9))
    assert detector.in_turn and detector.keep_from == 50 * WINDOW_SAMPLES - PREFIX
    detector.end_turn(70 * WINDOW_SAMPLES)  # a commit: idle from there, and no turn starts before it
    assert not detector.in_turn and detector.keep_from == 70 * WINDOW_SAMPLES


def test_window_probabilities_follow_the_audio_in_any_chunking() -> None:
    samples = decode_audio(shared_audio("jfk.flac")).samples[: 16000 * 4]
    model = load_model()
    whole = WindowProbabilities(model).push(samples)
    stream = WindowProbabilities(model)
    chunked = np.concatenate([stream.push(samples[i : i + 1600]) for i in range(0, len(samples), 1600)])
    assert len(whole) == len(chunked) == len(samples) // WINDOW_SAMPLES
    np.testing.assert_allclose(chunked, whole, atol=1e-5)
    assert whole.max() > 0.5 > whole.min()  # speech and pauses
