"""Realtime input audio: what a session decodes equals what libsndfile and swresample make of a WAV file."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import soundfile as sf

from sensevoice_serve.audio import decode_audio
from sensevoice_serve.realtime.codecs import AudioDecoder
from sensevoice_serve.realtime.protocol import AudioFormat, RealtimeError


def pcm16(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    samples = np.random.default_rng(seed).normal(0, 4000, int(seconds * rate))
    return samples.clip(-32768, 32767).astype(np.int16)


def wav_data_chunk(data: bytes) -> bytes:
    """The sample bytes of a WAV file (its ``data`` chunk)."""
    start = data.index(b"data") + 8
    return data[start : start + int.from_bytes(data[start - 4 : start], "little")]


def stream(decoder: AudioDecoder, payload: bytes, chunk: int) -> np.ndarray:
    pieces = [
        decoder.decode(base64.b64encode(payload[i : i + chunk]).decode())
        for i in range(0, len(payload), chunk)
    ]
    return np.concatenate([*pieces, decoder.flush()])


@pytest.mark.parametrize(
    ("format_type", "rate", "subtype", "chunk_bytes"),
    [
        ("audio/pcm", 16000, "PCM_16", 3200),
        ("audio/pcm", 24000, "PCM_16", 4800),
        ("audio/pcm", 24000, "PCM_16", 1002),  # chunks that split nothing evenly
        ("audio/pcmu", 8000, "ULAW", 800),
        ("audio/pcma", 8000, "ALAW", 800),
    ],
)
def test_streamed_audio_decodes_as_the_same_audio_in_a_wav_file(
    format_type: str, rate: int, subtype: str, chunk_bytes: int
) -> None:
    buffer = io.BytesIO()
    sf.write(buffer, pcm16(3, rate), rate, format="WAV", subtype=subtype)
    wav_file = buffer.getvalue()
    decoder = AudioDecoder(AudioFormat(format_type, rate))
    streamed = stream(decoder, wav_data_chunk(wav_file), chunk_bytes)
    assert np.array_equal(streamed, decode_audio(wav_file).samples)


def test_a_flush_ends_a_stretch_and_the_next_starts_afresh() -> None:
    payload = pcm16(1, 24000).tobytes()
    decoder = AudioDecoder(AudioFormat("audio/pcm", 24000))
    first, second = stream(decoder, payload, 4800), stream(decoder, payload, 4800)
    assert np.array_equal(first, second) and len(first) == 16000


def test_the_size_of_a_payload_is_known_before_decoding() -> None:
    decoder = AudioDecoder(AudioFormat("audio/pcm", 24000))
    assert decoder.samples_in(base64.b64encode(pcm16(0.5, 24000).tobytes()).decode()) == 8000
    assert (
        AudioDecoder(AudioFormat("audio/pcmu", 8000)).samples_in(base64.b64encode(bytes(800)).decode())
        == 1600
    )


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("not base64!", "not valid base64"),
        (base64.b64encode(b"\x00\x01\x02").decode(), "even number of bytes"),
    ],
)
def test_bad_audio_is_a_realtime_error(payload: str, message: str) -> None:
    with pytest.raises(RealtimeError, match=message) as raised:
        AudioDecoder(AudioFormat("audio/pcm", 16000)).decode(payload)
    assert raised.value.code == "invalid_audio" and raised.value.param == "audio"
