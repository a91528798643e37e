"""The clips bench sends and the RANDOM-weight checkpoint it generates."""

from __future__ import annotations

from pathlib import Path

import pytest

from sensevoice_serve.audio import SAMPLE_RATE, decode_audio
from sensevoice_serve.bench import material

from ..conftest import SHARED_AUDIO


def test_clips_are_mp3_of_real_speech_at_the_requested_lengths() -> None:
    if not SHARED_AUDIO.is_dir():
        pytest.skip(f"{SHARED_AUDIO} is missing")
    speech = material.speech_material(SHARED_AUDIO, seconds_needed=3)
    clips = material.speech_clips([1.5, 3, 2 * len(speech) / SAMPLE_RATE], speech)
    for clip in clips:
        assert clip.suffix == ".mp3"
        decoded = decode_audio(clip.encoded)
        assert abs(decoded.duration - clip.seconds) < 0.1, clip.label
        assert decoded.samples.std() > 0.01  # speech, not silence


def test_shared_recordings_are_found_beside_the_checkout() -> None:
    if not SHARED_AUDIO.is_dir():
        pytest.skip(f"{SHARED_AUDIO} is missing")
    assert material.shared_speech_dir() == SHARED_AUDIO


def test_random_checkpoint_is_generated_once_and_never_left_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sensevoice_serve import random_checkpoint

    written = []
    real_writer = random_checkpoint.write_random_checkpoint

    def tiny_writer(directory, size="tiny", seed=0):
        written.append(size)
        return real_writer(directory, "tiny", seed)  # the full size would take ~1 GB here

    monkeypatch.setattr(random_checkpoint, "write_random_checkpoint", tiny_writer)
    stale = tmp_path / "random-full"
    stale.mkdir()
    (stale / "model.pt").write_bytes(b"cut off")  # an earlier run killed mid-write: no marker
    first = material.random_full_checkpoint(tmp_path)
    second = material.random_full_checkpoint(tmp_path)
    assert first == second == stale
    assert written == ["full"]
    assert (first / "RANDOM_WEIGHTS.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["random-full"]
