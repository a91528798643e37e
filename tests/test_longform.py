"""Long audio end to end: real recordings joined with pauses, decoded in windows, segmented, transcribed.

Through ``SenseVoice.transcribe`` (which is ``longform.transcribe_sources``) and the ``sensevoice`` command,
with the tiny random checkpoint: its text means nothing, but its segment and token times are real.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from itertools import groupby, pairwise
from pathlib import Path

import pytest
import soundfile as sf

from sensevoice_serve.cli import main
from sensevoice_serve.decoding import DecodeOptions
from sensevoice_serve.longform import SegmentationOptions, transcribe_sources
from sensevoice_serve.pipeline import SenseVoice
from sensevoice_serve.results import Transcription

from .conftest import shared_audio
from .long_audio import Turn, endless_mono_turns, speech_clips, write_turns
from .test_vad import SPEECH_IN_RECORDINGS

EDGE_TOLERANCE_SECONDS = 0.3
ROUNDING = 1e-3  # times are rounded to milliseconds
DECODING_THREAD = "decode-and-segment"


@pytest.fixture(scope="module")
def clips():
    return speech_clips()


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory: pytest.TempPathFactory, clips) -> tuple[Path, list[Turn]]:
    """About two minutes of FLAC (FFmpeg decodes it in windows): every clip, then the short ones again."""
    path = tmp_path_factory.mktemp("long") / "meeting.flac"
    short_clips = [clip for clip in clips if len(clip) < 30 * 16000]
    return path, write_turns(path, [(clip, 0) for clip in [*clips, *short_clips]], seed=7)


@pytest.fixture(scope="module")
def long_result(tiny_engine: SenseVoice, long_recording) -> Transcription:
    path, _ = long_recording
    return tiny_engine.transcribe(path)[0]


def assert_timeline(result: Transcription, file_seconds: float, cap_seconds: float) -> None:
    """Segments and tokens in time order, inside the file, never overlapping within a channel; capped."""
    assert result.duration == pytest.approx(file_seconds, abs=ROUNDING)
    assert result.segments
    assert [s.start for s in result.segments] == sorted(s.start for s in result.segments)
    for segment in result.segments:
        assert 0 <= segment.start < segment.end <= result.duration
        assert segment.end - segment.start <= cap_seconds + ROUNDING
        for token in segment.tokens:
            assert segment.start <= token.start <= token.end <= segment.end
    by_channel = sorted(result.segments, key=lambda s: (s.channel or 0, s.start))
    for _, segments in groupby(by_channel, key=lambda s: s.channel):
        segments = list(segments)
        for earlier, later in pairwise(segments):
            assert earlier.end <= later.start
        tokens = [token for segment in segments for token in segment.tokens]
        for earlier, later in pairwise(tokens):
            assert earlier.end <= later.start


def nearest_gap(value: float, candidates: list[float]) -> float:
    return min(abs(value - candidate) for candidate in candidates)


def test_every_clip_starts_and_ends_at_a_segment_edge(long_recording, long_result: Transcription) -> None:
    _, turns = long_recording
    starts = [segment.start for segment in long_result.segments]
    ends = [segment.end for segment in long_result.segments]
    for turn in turns:
        assert nearest_gap(turn.start, starts) <= EDGE_TOLERANCE_SECONDS, (turn, starts)
        assert nearest_gap(turn.end, ends) <= EDGE_TOLERANCE_SECONDS, (turn, ends)
    # Nothing is found in the pauses: every segment overlaps a clip.
    for segment in long_result.segments:
        assert any(segment.start < turn.end and turn.start < segment.end for turn in turns), segment


def test_long_file_timeline_is_monotonic_capped_and_inside_the_file(
    long_recording, long_result: Transcription
) -> None:
    path, _ = long_recording
    assert long_result.duration > 60  # long enough that segmentation, not the one-utterance path, ran
    assert_timeline(long_result, sf.info(str(path)).duration, cap_seconds=30.0)
    assert sum(len(segment.tokens) for segment in long_result.segments) > len(long_result.segments)


@pytest.mark.parametrize(
    ("vad", "cap_seconds"), [("auto", 30.0), ("auto", 10.0), ("on", 10.0), ("off", 10.0)]
)
def test_continuous_speech_is_cut_below_the_cap(
    tiny_engine: SenseVoice, clips, tmp_path: Path, vad: str, cap_seconds: float
) -> None:
    """70 s of speech with only 50 ms breaks between recordings: only the cap can keep segments short."""
    path = tmp_path / "speech.wav"
    write_turns(path, [(clip, 0) for clip in clips], pause_seconds=(0.05, 0.05), total_seconds=70.0)
    result = tiny_engine.transcribe(path, vad=vad, max_segment_seconds=cap_seconds)[0]

    assert_timeline(result, 70.0, cap_seconds)
    assert len(result.segments) >= math.ceil(70.0 / cap_seconds)
    spoken = sum(segment.end - segment.start for segment in result.segments)
    assert spoken >= 0.9 * 70.0  # the cap splits speech; it does not drop it
    if vad == "off":
        expected = [(start, min(start + cap_seconds, 70.0)) for start in range(0, 70, round(cap_seconds))]
        assert [(s.start, s.end) for s in result.segments] == expected


def subtitle_cues(text: str, output_format: str) -> list[tuple[float, float, str]]:
    """(start, end, text) of each cue, read back by the real parser of the format."""
    if output_format == "srt":
        import srt

        return [(s.start.total_seconds(), s.end.total_seconds(), s.content) for s in srt.parse(text)]
    import webvtt

    return [(seconds(c.start), seconds(c.end), c.text) for c in webvtt.from_string(text)]


def seconds(timestamp: str) -> float:
    hours, minutes, rest = timestamp.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(rest)


@pytest.mark.parametrize("output_format", ["srt", "vtt"])
def test_cli_subtitles_parse_and_follow_the_segments(
    tiny_model_dir: Path, long_recording, long_result: Transcription, tmp_path: Path, output_format: str
) -> None:
    path, _ = long_recording
    flags = ["--dtype", "fp32", "--format", output_format, "--output-dir", str(tmp_path)]  # as long_result
    assert main(["transcribe", "--model", str(tiny_model_dir), *flags, str(path)]) == 0
    cues = subtitle_cues((tmp_path / f"meeting.{output_format}").read_text(encoding="utf-8"), output_format)

    spoken = [segment for segment in long_result.segments if segment.text]
    assert len(cues) >= len(spoken)
    for start, end, _ in cues:
        assert 0 <= start <= end <= long_result.duration
        assert any(s.start - ROUNDING <= start and end <= s.end + ROUNDING for s in spoken)
    for earlier, later in pairwise(cues):
        assert earlier[1] <= later[0]
    cue_starts = [start for start, _, _ in cues]
    assert all(nearest_gap(segment.start, cue_starts) <= ROUNDING for segment in spoken)
    # Long segments become several cues, split between tokens: no text is lost or added.
    assert "".join("".join(text.split()) for _, _, text in cues) == "".join(long_result.text.split())


def test_stereo_call_channels_are_segmented_apart(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    recording = shared_audio("stereo_diarization.wav")
    flags = ["--format", "json", "--split-channels", "--vad", "on"]
    assert main(["transcribe", "--model", str(tiny_model_dir), *flags, str(recording)]) == 0
    segments = json.loads(capsys.readouterr().out)["segments"]

    assert {segment["channel"] for segment in segments} == {0, 1}
    for channel in (0, 1):
        speech_start, speech_end = SPEECH_IN_RECORDINGS["stereo_diarization.wav", channel]
        own = [segment for segment in segments if segment["channel"] == channel]
        # The right speaker stops 1.9 s before the left one: a mixed-down segmentation could not tell.
        assert abs(own[0]["start"] - speech_start) <= EDGE_TOLERANCE_SECONDS
        assert abs(own[-1]["end"] - speech_end) <= EDGE_TOLERANCE_SECONDS


@pytest.fixture(scope="module")
def conversation(tmp_path_factory: pytest.TempPathFactory, clips) -> tuple[Path, list[Turn]]:
    """A 45 s two-channel call (longer than the cap, so the VAD runs): the speakers take turns."""
    jfk, zh, left, right, _ = clips
    turns = [(jfk, 0), (right, 1), (zh, 0), (left, 1), (jfk, 0), (zh, 1)]
    path = tmp_path_factory.mktemp("call") / "call.wav"
    return path, write_turns(path, turns, channels=2, seed=11)


def test_split_channels_interleave_the_speakers_by_time(tiny_engine: SenseVoice, conversation) -> None:
    path, turns = conversation
    result = tiny_engine.transcribe(path, split_channels=True)[0]

    assert_timeline(result, sf.info(str(path)).duration, cap_seconds=30.0)
    for turn in turns:
        own = [segment for segment in result.segments if segment.channel == turn.channel]
        assert nearest_gap(turn.start, [s.start for s in own]) <= EDGE_TOLERANCE_SECONDS, turn
        assert nearest_gap(turn.end, [s.end for s in own]) <= EDGE_TOLERANCE_SECONDS, turn
    speakers_in_order = [channel for channel, _ in groupby(s.channel for s in result.segments)]
    assert speakers_in_order == [turn.channel for turn in turns]


def test_cli_subtitles_label_each_speaker(tiny_model_dir: Path, conversation, tmp_path: Path) -> None:
    path, turns = conversation
    flags = ["--format", "srt", "--split-channels", "--output-dir", str(tmp_path)]
    assert main(["transcribe", "--model", str(tiny_model_dir), *flags, str(path)]) == 0
    cues = subtitle_cues((tmp_path / "call.srt").read_text(encoding="utf-8"), "srt")

    labels = [text.split("]")[0] + "]" for _, _, text in cues]
    assert set(labels) == {"[channel 0]", "[channel 1]"}
    assert [label for label, _ in groupby(labels)] == [f"[channel {turn.channel}]" for turn in turns]
    assert [start for start, _, _ in cues] == sorted(start for start, _, _ in cues)


def test_stopping_early_stops_the_decoding_thread(tiny_engine: SenseVoice, long_recording) -> None:
    path, _ = long_recording
    # Four long files queue far more segments than the hand-over holds: the decoder is mid-way when we stop.
    outcomes = transcribe_sources(
        tiny_engine,
        enumerate([path] * 4),
        DecodeOptions(),
        SegmentationOptions(),
        max_batch_frames=3000,
    )
    assert next(outcomes).result is not None
    outcomes.close()
    assert not [thread for thread in threading.enumerate() if thread.name == DECODING_THREAD]


# Memory: a 2-hour file must not need much more than a 10-minute one.

MEMORY_GROWTH_LIMIT_MB = 100


def peak_rss_mb_of_cli(arguments: list[str]) -> float:
    """Peak resident memory of one ``sensevoice`` process, read from its own resource usage at exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sensevoice_serve.cli", *arguments],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0, stderr.decode()
    return usage.ru_maxrss / 1024 if sys.platform != "darwin" else usage.ru_maxrss / 2**20


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_file(tiny_model_dir: Path, clips, tmp_path: Path) -> None:
    peaks = {}
    for label, seconds in (("10 min", 600.0), ("2 h", 7200.0)):
        recording = tmp_path / f"{seconds:.0f}.flac"
        write_turns(recording, endless_mono_turns(clips), total_seconds=seconds, seed=1)
        results = tmp_path / f"{seconds:.0f}.jsonl"
        peaks[label] = peak_rss_mb_of_cli(
            ["transcribe", "--model", str(tiny_model_dir), "--output", str(results), str(recording)]
        )
        (record,) = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines()]
        assert record["duration"] == pytest.approx(seconds, abs=ROUNDING)
        assert len(record["segments"]) > seconds / 30
        recording.unlink()
    assert peaks["2 h"] - peaks["10 min"] < MEMORY_GROWTH_LIMIT_MB, peaks


def test_progress_moves_within_a_long_file(tiny_engine: SenseVoice, long_recording) -> None:
    path, _ = long_recording
    reached: list[float] = []
    outcomes = transcribe_sources(
        tiny_engine,
        [("meeting", path)],
        DecodeOptions(),
        SegmentationOptions(),
        max_batch_frames=1000,  # several batches for one file
        on_progress=lambda key, seconds: reached.append(seconds),
    )
    (outcome,) = outcomes
    assert len(reached) == len(outcome.result.segments)
    assert max(reached) == outcome.result.segments[-1].end
