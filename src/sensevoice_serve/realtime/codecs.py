"""A session's input audio: base64 PCM16 (any rate), G.711 mu-law or A-law -> 16 kHz float32 samples.

Samples are scaled as libsndfile reads the same encodings from a WAV file (``int16 / 32768``, and the G.711
tables below match its decoder bit for bit), and resampled by the files' own ``audio.resample.MonoResampler``
(FFmpeg's swresample), whose output does not depend on how the input is chunked. So audio streamed here and
the same audio uploaded as a WAV file give the model identical samples.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

from ..audio import SAMPLE_RATE
from ..audio.resample import MonoResampler
from .protocol import AudioFormat, RealtimeError

G711_RATE = 8000


def _mu_law_table() -> np.ndarray:
    """The 256 mu-law codes as 16-bit samples (ITU-T G.711: bits inverted, bias 0x84)."""
    code = ~np.arange(256, dtype=np.uint8)
    exponent = (code >> 4) & 0x07
    magnitude = (((code & 0x0F).astype(np.int32) << 3) + 0x84) << exponent
    return np.where(code & 0x80, 0x84 - magnitude, magnitude - 0x84).astype(np.int16)


def _a_law_table() -> np.ndarray:
    """The 256 A-law codes as 16-bit samples (ITU-T G.711: even bits inverted)."""
    code = np.arange(256, dtype=np.uint8) ^ 0x55
    exponent = ((code >> 4) & 0x07).astype(np.int32)
    mantissa = (code & 0x0F).astype(np.int32)
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


G711_TABLES = {"audio/pcmu": _mu_law_table(), "audio/pcma": _a_law_table()}


class AudioDecoder:
    """One session's input stream in ``audio_format``; ``flush`` ends a stretch (a manual commit), so what
    follows is resampled as a new file would be."""

    def __init__(self, audio_format: AudioFormat) -> None:
        self.format = audio_format
        self._resampler = MonoResampler(audio_format.rate)

    def samples_in(self, payload: str) -> int:
        """How many 16 kHz samples ``payload`` will give, known before it is decoded (to refuse it)."""
        encoded = len(payload.rstrip("=")) * 3 // 4 // self.format.bytes_per_sample
        return encoded * SAMPLE_RATE // self.format.rate

    def decode(self, payload: str) -> np.ndarray:
        """Base64 audio -> 16 kHz float32 samples (a few may be held back by the resampler's filter)."""
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as error:
            raise RealtimeError(
                "invalid_audio", f"audio is not valid base64: {error}", param="audio"
            ) from error
        if len(data) % self.format.bytes_per_sample:
            raise RealtimeError(
                "invalid_audio", "audio/pcm must be whole 16-bit samples (an even number of bytes)", "audio"
            )
        table = G711_TABLES.get(self.format.type)
        pcm = np.frombuffer(data, dtype="<i2") if table is None else table[np.frombuffer(data, np.uint8)]
        return self._resampler.push(pcm.astype(np.float32) / 32768)

    def flush(self) -> np.ndarray:
        """The samples the resampler held back; the next audio starts a fresh stretch."""
        held = self._resampler.finish()
        self._resampler = MonoResampler(self.format.rate)
        return held
