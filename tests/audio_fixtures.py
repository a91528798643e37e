"""Audio test material made on the spot: tones, and files in the formats users send, written with PyAV.

Generated rather than checked in, so every codec and container can be covered without binary fixtures.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

SHARED_AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"
# FFmpeg layout names for the channel counts the tests write.
LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}


def tone(
    frequency: float, seconds: float, rate: int, channels: int = 1, amplitude: float = 0.5
) -> np.ndarray:
    """A sine as a (samples, channels) float32 array, the same in every channel."""
    times = np.arange(round(seconds * rate)) / rate
    wave = (amplitude * np.sin(2 * np.pi * frequency * times)).astype(np.float32)
    return np.repeat(wave[:, None], channels, axis=1)


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    """Frequency of the strongest FFT bin (Hann window, so a tone's leakage does not move the peak)."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def encode(
    path: Path,
    samples: np.ndarray,
    rate: int,
    *,
    codec: str,
    container_format: str | None = None,
    with_video: bool = False,
) -> Path:
    """Write (samples, channels) float32 audio with PyAV's bundled encoders, optionally with a video track."""
    channel_count = samples.shape[1]
    with av.open(str(path), "w", format=container_format) as container:
        # The native Vorbis encoder is the only one in PyAV's wheels and FFmpeg marks it experimental.
        audio_stream = container.add_stream(codec, rate=rate, options={"strict": "experimental"})
        audio_stream.layout = LAYOUTS[channel_count]
        if with_video:
            _add_video(container, seconds=len(samples) / rate)
        chunk = 1024
        for start in range(0, len(samples), chunk):
            # Planar frames take one row per channel; PyAV converts to the encoder's format and frame size.
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(samples[start : start + chunk].T),
                format="fltp",
                layout=audio_stream.layout,
            )
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            container.mux(audio_stream.encode(frame))
        container.mux(audio_stream.encode(None))
    return path


def _add_video(container: av.container.OutputContainer, seconds: float) -> None:
    """A few tiny grey frames covering ``seconds``: enough for a demuxer to see a real video track."""
    video_stream = container.add_stream("mpeg4", rate=5)
    video_stream.width, video_stream.height, video_stream.pix_fmt = 64, 48, "yuv420p"
    grey = np.full((48, 64, 3), 128, dtype=np.uint8)
    for index in range(max(1, round(seconds * 5))):
        frame = av.VideoFrame.from_ndarray(grey, format="rgb24")
        frame.pts = index
        container.mux(video_stream.encode(frame))
    container.mux(video_stream.encode(None))


def write_video_only(path: Path, frame_count: int = 5) -> Path:
    """An MP4 with an MPEG-4 video track and no audio at all."""
    with av.open(str(path), "w", format="mp4") as container:
        _add_video(container, seconds=frame_count / 5)
    return path


def write_gsm_wav(path: Path, seconds: float) -> Path:
    """A WAV of GSM 6.10 at 8 kHz, as phone systems record; libsndfile can write it but not seek in it."""
    import soundfile

    soundfile.write(path, tone(440.0, seconds, 8000), 8000, format="WAV", subtype="GSM610")
    return path
