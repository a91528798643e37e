"""Damaged files of every kind the decoders meet: each fails alone, as its own AudioDecodeError.

Real files are mutated at random (fixed seed): header bytes and fields overwritten, body bytes flipped, cut
short. Whatever comes out, decoding either returns model-ready audio or raises the input's own error: no
other exception may escape, because it would take down the batch, bulk run or request the file is in.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from sensevoice_serve.audio import AudioStream, decode_audio
from sensevoice_serve.errors import AudioDecodeError, AudioTooLongError

from .audio_fixtures import encode, tone

CASES_PER_SEED_FILE = 40
# Keeps a header that claims a rate of 1 Hz from decoding into hours of samples.
LIMIT_SECONDS = 30.0


def _wav(samples: np.ndarray, rate: int, subtype: str, container_format: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=container_format, subtype=subtype)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def seed_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("fuzz-seeds")
    seeds = {
        "pcm16": _wav(tone(440, 0.5, 16000), 16000, "PCM_16"),
        "stereo pcm24": _wav(tone(440, 0.5, 44100, channels=2), 44100, "PCM_24"),
        "float": _wav(tone(440, 0.5, 22050), 22050, "FLOAT"),
        "gsm610": _wav(tone(440, 0.5, 8000), 8000, "GSM610"),
        "ima adpcm": _wav(tone(440, 0.5, 8000), 8000, "IMA_ADPCM"),
        "flac": _wav(tone(440, 0.5, 16000), 16000, "PCM_16", "FLAC"),
    }
    for codec, suffix, rate in (
        ("libmp3lame", "mp3", 16000),
        ("libopus", "ogg", 48000),
        ("aac", "m4a", 16000),
    ):
        seeds[suffix] = encode(
            folder / f"seed.{suffix}", tone(440, 0.5, rate), rate, codec=codec
        ).read_bytes()
    return seeds


def _mutated(data: bytes, rng: np.random.Generator) -> bytes:
    damaged = bytearray(data)
    how = rng.integers(4)
    if how == 0:  # the header: format tags, channel counts, rates, chunk sizes
        for _ in range(rng.integers(1, 4)):
            damaged[rng.integers(0, min(80, len(damaged)))] = rng.integers(256)
    elif how == 1:  # a 16-bit field of a WAV header set to anything
        start = int(rng.integers(12, 44))
        damaged[start : start + 2] = int(rng.integers(65536)).to_bytes(2, "little")
    elif how == 2:  # the body
        for _ in range(rng.integers(1, 20)):
            damaged[rng.integers(len(damaged))] = rng.integers(256)
    else:  # cut short anywhere
        damaged = damaged[: rng.integers(1, len(damaged))]
    return bytes(damaged)


def _decodes_or_fails_alone(data: bytes) -> bool:
    """Whether it decoded (to model-ready audio); False for the input's own error; anything else escapes."""
    try:
        audio = decode_audio(data, max_duration=LIMIT_SECONDS)
    except (AudioDecodeError, AudioTooLongError):
        return False
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert np.isfinite(audio.samples).all()
    return True


def _streams_or_fails_alone(data: bytes) -> None:
    try:
        for channels in AudioStream(data, max_duration=LIMIT_SECONDS, keep_channels=True):
            assert all(np.isfinite(channel).all() for channel in channels)
    except (AudioDecodeError, AudioTooLongError):
        pass


SEEDS = ["pcm16", "stereo pcm24", "float", "gsm610", "ima adpcm", "flac", "mp3", "ogg", "m4a"]


@pytest.mark.parametrize("seed", SEEDS)
def test_damaged_files_fail_alone(seed: str, seed_files: dict[str, bytes]) -> None:
    rng = np.random.default_rng(SEEDS.index(seed))
    assert _decodes_or_fails_alone(seed_files[seed])
    for _ in range(CASES_PER_SEED_FILE):
        data = _mutated(seed_files[seed], rng)
        _decodes_or_fails_alone(data)
        _streams_or_fails_alone(data)
