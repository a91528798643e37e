"""What bench sends: mp3 clips cut from real speech (or the user's files), and the checkpoint it loads."""

from __future__ import annotations

import io
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..audio import SAMPLE_RATE, decode_audio
from ..errors import AudioDecodeError, InvalidOption

MP3_BIT_RATE = 64000


@dataclass(frozen=True)
class BenchClip:
    """What every request of one row sends: an encoded file, as users upload them."""

    label: str
    seconds: float
    encoded: bytes
    suffix: str


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sensevoice-serve"


def shared_speech_dir() -> Path | None:
    """``../shared/audio`` beside a source checkout (the project's real recordings), when it is there."""
    candidate = Path(__file__).resolve().parents[4] / "shared" / "audio"
    return candidate if candidate.is_dir() else None


def random_full_checkpoint(cache_dir: Path) -> Path:
    """The full-size RANDOM-weight checkpoint, generated once into the cache (about 0.9 GB)."""
    from .. import random_checkpoint
    from ..checkpoint import RANDOM_WEIGHTS_MARKER

    directory = cache_dir / "random-full"
    if (directory / RANDOM_WEIGHTS_MARKER).is_file():  # the marker is written last
        return directory
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Written beside it and renamed, so an interrupted run never leaves a half checkpoint that looks whole.
    staging = Path(tempfile.mkdtemp(prefix="random-full.partial.", dir=cache_dir))
    random_checkpoint.write_random_checkpoint(staging, "full", seed=0)
    if directory.exists():
        shutil.rmtree(directory)
    staging.rename(directory)
    return directory


def decodable_recordings(directory: Path) -> Iterator[np.ndarray]:
    """The 16 kHz samples of each decodable recording in ``directory``, by name."""
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        try:
            yield decode_audio(path).samples
        except AudioDecodeError:
            continue  # READMEs, transcripts and anything else that is not audio


def speech_material(directory: Path, seconds_needed: float) -> np.ndarray:
    """The decodable recordings in ``directory`` (by name) joined into one stretch of 16 kHz speech."""
    pieces: list[np.ndarray] = []
    total = 0
    for samples in decodable_recordings(directory):
        pieces.append(samples)
        total += len(samples)
        if total >= seconds_needed * SAMPLE_RATE:
            break
    if not pieces:
        raise InvalidOption(f"no decodable audio in {directory}")
    return np.concatenate(pieces)


def encode_mp3(samples: np.ndarray) -> bytes:
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=SAMPLE_RATE)
        stream.layout = "mono"
        stream.bit_rate = MP3_BIT_RATE
        frame = av.AudioFrame.from_ndarray(samples[None], format="flt", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = 0
        frame.time_base = Fraction(1, SAMPLE_RATE)
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def speech_clips(lengths: Sequence[float], material: np.ndarray) -> list[BenchClip]:
    """One mp3 per length, cut from the start of the material (repeated when the material is shorter)."""
    clips = []
    for seconds in lengths:
        count = round(seconds * SAMPLE_RATE)
        samples = np.tile(material, math.ceil(count / len(material)))[:count]
        clips.append(BenchClip(f"{seconds:g} s", count / SAMPLE_RATE, encode_mp3(samples), ".mp3"))
    return clips


def file_clips(paths: Sequence[str]) -> list[BenchClip]:
    clips = []
    for raw in paths:
        path = Path(raw)
        encoded = path.read_bytes()
        clips.append(BenchClip(path.name, decode_audio(encoded).duration, encoded, path.suffix))
    return clips
