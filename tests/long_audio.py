"""Long recordings for tests: the real speech in ../shared/audio between pauses, written a clip at a time.

A file is written as it is built, so even a 2-hour recording never sits in the test's own memory, and the
writer returns where each clip's speech really is: the truth segment edges are checked against.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from sensevoice_serve.audio import SAMPLE_RATE, decode_audio_channels

from .conftest import shared_audio
from .test_vad import SPEECH_IN_RECORDINGS, quiet_noise


@dataclass(frozen=True)
class Turn:
    """One clip in a written file: the channel it is on and where its speech starts and ends (seconds)."""

    channel: int
    start: float
    end: float


def speech_clips() -> list[np.ndarray]:
    """Each recording's channel decoded to 16 kHz and cut to its speech, so its edges are speech edges.

    The edges come from test_vad's table, read off the recordings' energy envelopes: a clip's leading and
    trailing near-silence (or crowd noise) would otherwise move the truth away from what a VAD can find.
    """
    clips = []
    for (name, channel), (start, end) in SPEECH_IN_RECORDINGS.items():
        samples = decode_audio_channels(shared_audio(name))[channel].samples
        clips.append(samples[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)])
    return clips


def write_turns(
    path: Path,
    turns: Iterable[tuple[np.ndarray, int]],
    *,
    channels: int = 1,
    pause_seconds: tuple[float, float] = (1.0, 3.0),
    total_seconds: float | None = None,
    seed: int = 0,
) -> list[Turn]:
    """Write ``(clip, channel)`` turns with pauses of quiet noise between them, at 16 kHz, 16-bit.

    A turn's clip plays on its channel while the other channels carry quiet noise. The file ends after a
    last pause, or at ``total_seconds`` (cutting the clip under way). The format follows the suffix.
    """
    rng = np.random.default_rng(seed)
    limit = None if total_seconds is None else round(total_seconds * SAMPLE_RATE)
    written: list[Turn] = []
    position = 0
    with sf.SoundFile(path, "w", SAMPLE_RATE, channels, subtype="PCM_16") as output:

        def write(block: np.ndarray) -> None:
            nonlocal position
            output.write(block)
            position += len(block)

        for clip, channel in turns:
            pause, speech = quiet_noise(rng.uniform(*pause_seconds), rng), clip
            if limit is not None:
                room = limit - position
                pause, speech = pause[:room], speech[: max(room - len(pause), 0)]
            write(_on_every_channel(pause, channels))
            if len(speech):
                block = np.stack([quiet_noise(len(speech) / SAMPLE_RATE, rng) for _ in range(channels)], 1)
                block[:, channel] = speech
                written.append(Turn(channel, position / SAMPLE_RATE, (position + len(speech)) / SAMPLE_RATE))
                write(block)
            if limit is not None and position >= limit:
                return written
        write(_on_every_channel(quiet_noise(pause_seconds[0], rng), channels))
    return written


def _on_every_channel(samples: np.ndarray, channels: int) -> np.ndarray:
    return np.repeat(samples[:, None], channels, axis=1)


def endless_mono_turns(clips: list[np.ndarray]) -> Iterator[tuple[np.ndarray, int]]:
    """The clips over and over, on channel 0: as much real speech as a file of any length needs."""
    return ((clip, 0) for clip in itertools.cycle(clips))
