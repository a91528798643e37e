"""What the reliability runs send: the shared recordings, short containers of every kind made from their
speech with PyAV, and clean clips of mixed lengths for the load runs."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tests.audio_fixtures import SHARED_AUDIO, encode
from tests.test_audio_fuzz import _wav

from sensevoice_serve.audio import SAMPLE_RATE, decode_audio
from sensevoice_serve.bench.material import encode_mp3, speech_material
from sensevoice_serve.errors import AudioDecodeError

# (name, seconds, rate, channels, how): every container and codec users send, 1-3 s each so that a decode
# is quick and a fuzz run covers many inputs. Speech relabelled at another rate is still a valid file of
# that rate; what it sounds like does not matter to a decoder.
GENERATED = (
    ("pcm16.wav", 2.0, 16000, 1, ("wav", "PCM_16", "WAV")),
    ("pcm24-stereo.wav", 1.5, 44100, 2, ("wav", "PCM_24", "WAV")),
    ("float.wav", 1.0, 22050, 1, ("wav", "FLOAT", "WAV")),
    ("ulaw.wav", 2.0, 8000, 1, ("wav", "ULAW", "WAV")),
    ("gsm610.wav", 3.0, 8000, 1, ("wav", "GSM610", "WAV")),
    ("ima-adpcm.wav", 2.0, 8000, 1, ("wav", "IMA_ADPCM", "WAV")),
    ("flac16.flac", 2.0, 16000, 1, ("wav", "PCM_16", "FLAC")),
    ("stereo.mp3", 2.0, 44100, 2, ("av", "libmp3lame", None)),
    ("aac.m4a", 2.0, 16000, 1, ("av", "aac", None)),
    ("opus.ogg", 1.5, 48000, 1, ("av", "libopus", None)),
    ("vorbis.ogg", 2.0, 22050, 2, ("av", "vorbis", None)),
    ("opus.webm", 2.0, 48000, 2, ("av", "libopus", None)),
    ("aac-video.mp4", 3.0, 16000, 1, ("video", "aac", None)),
)


@dataclass(frozen=True)
class Clip:
    """A clean file for the load runs."""

    name: str
    seconds: float
    data: bytes


def shared_recordings(directory: Path = SHARED_AUDIO) -> dict[str, bytes]:
    """Every decodable recording in ``directory``, by file name."""
    found = {}
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        try:
            decode_audio(path, max_duration=600)
        except AudioDecodeError:
            continue  # the README
        found[path.name] = path.read_bytes()
    if not found:
        raise SystemExit(f"no decodable recordings in {directory}")
    return found


def _frames(speech: np.ndarray, offset: float, seconds: float, rate: int, channels: int) -> np.ndarray:
    """(samples, channels) float32 cut from ``speech``; a second channel is the same speech a little later."""
    count = round(seconds * rate)
    start = round(offset * SAMPLE_RATE) % max(1, len(speech) - count - 4000)
    columns = [speech[start + 1000 * index : start + 1000 * index + count] for index in range(channels)]
    return np.ascontiguousarray(np.stack(columns, axis=1) * 0.9, dtype=np.float32)


def generated_containers(speech: np.ndarray) -> dict[str, bytes]:
    """One short file per entry of ``GENERATED``."""
    made = {}
    with tempfile.TemporaryDirectory(prefix="reliability-seeds-") as folder:
        for index, (name, seconds, rate, channels, (how, codec, container)) in enumerate(GENERATED):
            frames = _frames(speech, 3.0 * index, seconds, rate, channels)
            if how == "wav":
                made[name] = _wav(frames, rate, codec, container)
            else:
                path = Path(folder) / name
                made[name] = encode(path, frames, rate, codec=codec, with_video=how == "video").read_bytes()
    return made


def seed_corpus(directory: Path = SHARED_AUDIO) -> dict[str, bytes]:
    """The fuzzers' starting points: the shared recordings and the generated containers."""
    recordings = shared_recordings(directory)
    speech = speech_material(directory, 60)
    return {**recordings, **generated_containers(speech)}


def load_clips(directory: Path = SHARED_AUDIO, lengths: tuple[float, ...] = (0.5, 1, 2, 3, 5)) -> list[Clip]:
    """Speech clips of mixed lengths, each as a 16-bit WAV and as an MP3."""
    speech = speech_material(directory, 60)
    clips = []
    for index, seconds in enumerate(lengths):
        samples = _frames(speech, 7.0 * index, seconds, SAMPLE_RATE, 1)
        clips.append(Clip(f"{seconds:g}s.wav", seconds, _wav(samples, SAMPLE_RATE, "PCM_16")))
        clips.append(Clip(f"{seconds:g}s.mp3", seconds, encode_mp3(samples[:, 0])))
    return clips
