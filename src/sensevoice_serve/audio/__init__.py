"""Any common audio or video input -> 16 kHz mono float32 samples for the model.

FFmpeg (through PyAV's bundled build) decodes everything; plain WAV goes to libsndfile (soundfile) instead,
which reads it several times faster. Both resample with FFmpeg's swresample (windowed sinc), so a file gives
the same samples either way. Decoding streams: ``AudioStream`` hands out fixed windows of a long file, and
``decode_audio`` joins the same pieces once.

Modules: ``types`` (inputs, ``Audio``), ``decode`` (entry points, choosing a decoder), ``libsndfile`` and
``ffmpeg`` (the two decoders), ``resample`` (to 16 kHz, mono by mean), ``checks`` (what both must pass).
"""

from .checks import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from .decode import AudioStream, decode_audio, decode_audio_channels
from .types import SAMPLE_RATE, Audio, AudioInput, input_label

__all__ = [
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "SAMPLE_RATE",
    "Audio",
    "AudioInput",
    "AudioStream",
    "decode_audio",
    "decode_audio_channels",
    "input_label",
]
