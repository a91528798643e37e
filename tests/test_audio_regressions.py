"""Inputs the reliability fuzzer (``benchmarks/reliability.py fuzz-decoder``) found to hurt the decoder.

A WAV whose sample-rate field was damaged (the fuzzer flipped bits of byte 27, giving 452,992,832 Hz) took
4-6 s of CPU and 1-1.4 GB of memory in swresample for 16 KB of input, and a rate of a few Hz turned each
block of frames into hours of samples at once: a small upload could take a decode worker's memory.
"""

from __future__ import annotations

import io

import pytest
import soundfile

from sensevoice_serve.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, AudioStream, decode_audio
from sensevoice_serve.errors import AudioDecodeError

from .audio_fixtures import tone

# Whole GSM 6.10 blocks (320 samples each), so that the file holds exactly this many frames.
FRAMES = 3200
RATE_FIELD = slice(24, 28)


def wav_claiming(rate: int, subtype: str) -> bytes:
    """A WAV of ``subtype`` whose header's sample-rate field says ``rate``."""
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(440, FRAMES / 8000, 8000), 8000, format="WAV", subtype=subtype)
    data = bytearray(buffer.getvalue())
    data[RATE_FIELD] = rate.to_bytes(4, "little")
    return bytes(data)


def _decode(data: bytes) -> None:
    decode_audio(data, max_duration=7200)


def _stream(data: bytes) -> None:
    for _ in AudioStream(data, max_duration=7200, keep_channels=True):
        pass


# ULAW is read by libsndfile, GSM 6.10 by FFmpeg: both decoders' paths.
@pytest.mark.parametrize("subtype", ["ULAW", "GSM610"])
@pytest.mark.parametrize("rate", [452_992_832, 162_501_734, MAX_SAMPLE_RATE + 1, MIN_SAMPLE_RATE - 1, 10])
@pytest.mark.parametrize("decode", [_decode, _stream], ids=["decode_audio", "AudioStream"])
def test_a_header_claiming_an_absurd_sample_rate_is_refused_before_resampling(
    subtype: str, rate: int, decode
) -> None:
    with pytest.raises(AudioDecodeError, match=f"unsupported sample rate {rate} Hz"):
        decode(wav_claiming(rate, subtype))


@pytest.mark.parametrize("subtype", ["ULAW", "GSM610"])
@pytest.mark.parametrize("rate", [MIN_SAMPLE_RATE, 8000, MAX_SAMPLE_RATE])
def test_rates_real_recordings_use_still_decode(subtype: str, rate: int) -> None:
    audio = decode_audio(wav_claiming(rate, subtype))
    assert audio.duration == pytest.approx(FRAMES / rate, abs=0.02)
