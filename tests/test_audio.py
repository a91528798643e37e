"""Decoding every common input to 16 kHz mono float32: formats, input kinds, damage, limits, channels."""

from __future__ import annotations

import io
import struct
import time
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile

from sensevoice_serve.audio import (
    SAMPLE_RATE,
    Audio,
    AudioStream,
    decode_audio,
    decode_audio_channels,
    ffmpeg,
    libsndfile,
)
from sensevoice_serve.errors import AudioDecodeError, AudioTooLongError

from .audio_fixtures import SHARED_AUDIO, dominant_frequency, encode, tone, write_gsm_wav, write_video_only

DURATION_TOLERANCE_S = 0.05  # MP3 and AAC pad their first and last frames
TONE_HZ = 1000.0
SHARED_NAMES = ["hotwords.mp3", "jfk.flac", "multilingual.mp3", "stereo_diarization.wav", "zh_sample.wav"]


def shared(name: str) -> Path:
    path = SHARED_AUDIO / name
    if not path.is_file():
        pytest.skip(f"{path} is missing (the shared recordings live in ../shared/audio beside the checkout)")
    return path


def shared_names() -> list[str]:
    # Whatever the folder holds; the documented names when it is absent, so each reports its skip.
    if SHARED_AUDIO.is_dir():
        return sorted(path.name for path in SHARED_AUDIO.iterdir() if path.suffix.lower() != ".md")
    return SHARED_NAMES


def declared_seconds(path: Path) -> float:
    """The reference duration: libsndfile's frame count where it reads the file, else the container's."""
    try:
        return soundfile.info(str(path)).duration
    except soundfile.SoundFileError:
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            return float(stream.duration * stream.time_base)


def wav_bytes(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def assert_model_ready(audio: Audio) -> None:
    assert audio.samples.dtype == np.float32
    assert audio.samples.ndim == 1
    assert np.isfinite(audio.samples).all()


@pytest.fixture(scope="module")
def tone_mp3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s of a 1 kHz tone as 44.1 kHz stereo MP3: resampling, downmixing and FFmpeg all take part."""
    path = tmp_path_factory.mktemp("mp3") / "tone.mp3"
    return encode(path, tone(TONE_HZ, 2.0, 44100, channels=2), 44100, codec="libmp3lame")


# --- real recordings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", shared_names())
def test_shared_recordings_decode_to_16k_mono_with_their_duration(name: str) -> None:
    path = shared(name)
    audio = decode_audio(path)
    assert_model_ready(audio)
    assert audio.source == str(path)
    assert audio.warnings == []
    assert audio.duration == pytest.approx(declared_seconds(path), abs=DURATION_TOLERANCE_S)


def test_stereo_call_splits_into_two_different_channels() -> None:
    path = shared("stereo_diarization.wav")
    left, right = decode_audio_channels(path)
    assert (left.channel, right.channel) == (0, 1)
    assert left.duration == right.duration == pytest.approx(declared_seconds(path), abs=0.001)
    assert_model_ready(left)
    assert_model_ready(right)
    # Different speakers: the channels are far from equal, and the mono mix is their mean.
    assert np.abs(left.samples - right.samples).mean() > 0.01
    mixed = decode_audio(path).samples
    np.testing.assert_allclose(mixed, (left.samples + right.samples) / 2, atol=1e-6)


# --- every format, generated --------------------------------------------------------------------------


def _pcm(subtype: str, rate: int = 44100, channels: int = 2):
    """A writer through libsndfile, which takes the container from the file name."""

    def write(path: Path, seconds: float) -> Path:
        soundfile.write(path, tone(TONE_HZ, seconds, rate, channels), rate, subtype=subtype)
        return path

    return write


def _encoded(codec: str, rate: int, channels: int, container_format: str | None = None, video: bool = False):
    """A writer through PyAV's encoders."""

    def write(path: Path, seconds: float) -> Path:
        samples = tone(TONE_HZ, seconds, rate, channels)
        return encode(path, samples, rate, codec=codec, container_format=container_format, with_video=video)

    return write


GENERATED = {
    "s16.wav": _pcm("PCM_16"),
    "s24.wav": _pcm("PCM_24"),
    "f32.wav": _pcm("FLOAT"),
    "telephone-8k-s16.wav": _pcm("PCM_16", rate=8000, channels=1),
    "telephone-8k-ulaw.wav": _pcm("ULAW", rate=8000, channels=1),
    "surround-5.1.wav": _pcm("PCM_16", rate=48000, channels=6),
    "s24.flac": _pcm("PCM_24", rate=48000),
    "tone.mp3": _encoded("libmp3lame", 44100, 2),
    "aac.m4a": _encoded("aac", 44100, 2, "mp4"),
    "opus.ogg": _encoded("libopus", 48000, 2, "ogg"),
    "vorbis.ogg": _encoded("vorbis", 44100, 2, "ogg"),
    "opus.webm": _encoded("libopus", 48000, 1, "webm"),
    "video-with-audio.mp4": _encoded("aac", 48000, 2, "mp4", video=True),
    "surround-5.1.m4a": _encoded("aac", 48000, 6, "mp4"),
    "s16-22k.aiff": _pcm("PCM_16", rate=22050, channels=1),
}


@pytest.mark.parametrize("file_name", sorted(GENERATED))
def test_generated_format_keeps_duration_and_pitch(file_name: str, tmp_path: Path) -> None:
    path = GENERATED[file_name](tmp_path / file_name, 2.0)
    audio = decode_audio(path)
    assert_model_ready(audio)
    assert audio.warnings == []
    assert audio.duration == pytest.approx(2.0, abs=DURATION_TOLERANCE_S)
    assert dominant_frequency(audio.samples, SAMPLE_RATE) == pytest.approx(TONE_HZ, abs=3)


def test_resampled_tone_stays_clean() -> None:
    samples = tone(TONE_HZ, 2.0, 44100)
    audio = decode_audio(wav_bytes(samples, 44100, "FLOAT"))
    assert len(audio.samples) == 2 * SAMPLE_RATE
    middle = audio.samples[SAMPLE_RATE // 2 : -SAMPLE_RATE // 2]
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle)))) ** 2
    frequencies = np.fft.rfftfreq(len(middle), 1 / SAMPLE_RATE)
    near_tone = np.abs(frequencies - TONE_HZ) < 20
    assert 10 * np.log10(spectrum[near_tone].sum() / spectrum[~near_tone].sum()) > 80
    assert np.abs(middle).max() == pytest.approx(0.5, abs=0.01)


def test_fast_path_and_ffmpeg_give_the_same_samples(tmp_path: Path) -> None:
    # The same PCM as WAV (libsndfile) and as AIFF (FFmpeg): both resample through swresample.
    samples = tone(TONE_HZ, 1.0, 44100, channels=2) * np.array([1.0, 0.25], dtype=np.float32)
    soundfile.write(tmp_path / "same.wav", samples, 44100, subtype="PCM_16")
    soundfile.write(tmp_path / "same.aiff", samples, 44100, subtype="PCM_16")
    via_soundfile = decode_audio(tmp_path / "same.wav").samples
    via_ffmpeg = decode_audio(tmp_path / "same.aiff").samples
    np.testing.assert_allclose(via_soundfile, via_ffmpeg, atol=1e-6)


@pytest.mark.parametrize("container", ["WAV", "AIFF"])
def test_multichannel_mono_is_the_plain_mean(container: str, tmp_path: Path) -> None:
    # At 16 kHz nothing is resampled, so the mix can be checked sample by sample.
    rng = np.random.default_rng(0)
    surround = (rng.uniform(-1, 1, size=(SAMPLE_RATE, 6)) * 0.9).astype(np.float32)
    path = tmp_path / f"surround.{container.lower()}"
    soundfile.write(path, surround, SAMPLE_RATE, format=container, subtype="FLOAT")
    mono = decode_audio(path).samples
    np.testing.assert_allclose(mono, surround.mean(axis=1), atol=1e-6)
    assert np.abs(mono).max() <= 0.9
    channels = decode_audio_channels(path)
    assert [audio.channel for audio in channels] == list(range(6))
    np.testing.assert_allclose(np.stack([audio.samples for audio in channels], axis=1), surround, atol=1e-6)


@pytest.mark.parametrize("channel_count", [8, 10])
def test_eight_or_more_channels_through_ffmpeg(channel_count: int, tmp_path: Path) -> None:
    # PyAV crashes reading planar frames of 8+ channels (it walks their plane list past its end).
    levels = np.linspace(0.1, 0.5, channel_count, dtype=np.float32)
    samples = tone(TONE_HZ, 1.0, 44100, channels=channel_count) * levels
    soundfile.write(tmp_path / "many.aiff", samples, 44100, subtype="PCM_24")
    channels = decode_audio_channels(tmp_path / "many.aiff")
    assert len(channels) == channel_count
    peaks = [np.abs(audio.samples[1000:-1000]).max() for audio in channels]
    np.testing.assert_allclose(peaks, 0.5 * levels, rtol=0.02)


def test_split_channels_keep_their_order_through_ffmpeg(tmp_path: Path) -> None:
    left_and_right = np.concatenate([tone(440, 2.0, 44100), tone(1500, 2.0, 44100)], axis=1)
    path = encode(tmp_path / "call.mp3", left_and_right, 44100, codec="libmp3lame")
    left, right = decode_audio_channels(path)
    assert dominant_frequency(left.samples, SAMPLE_RATE) == pytest.approx(440, abs=3)
    assert dominant_frequency(right.samples, SAMPLE_RATE) == pytest.approx(1500, abs=3)
    assert left.source == right.source == str(path)


def test_sample_rate_change_mid_stream(tmp_path: Path) -> None:
    # Two MP3s glued together: FFmpeg skips the second one's tag and switches from 44.1 to 22.05 kHz.
    first = encode(tmp_path / "a.mp3", tone(TONE_HZ, 1.0, 44100), 44100, codec="libmp3lame").read_bytes()
    second = encode(tmp_path / "b.mp3", tone(TONE_HZ, 1.0, 22050), 22050, codec="libmp3lame").read_bytes()
    audio = decode_audio(first + second)
    assert audio.duration == pytest.approx(2.0, abs=0.15)
    second_half = audio.samples[SAMPLE_RATE + 2000 :]
    assert dominant_frequency(second_half, SAMPLE_RATE) == pytest.approx(TONE_HZ, abs=3)
    assert any("skipped 1 undecodable packet" in warning for warning in audio.warnings)


# --- input kinds --------------------------------------------------------------------------------------


class _OneWayStream(io.RawIOBase):
    """A pipe-like stream that cannot seek."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


@pytest.mark.parametrize("kind", ["mp3", "wav"])
def test_every_input_kind_gives_the_same_samples(kind: str, tone_mp3: Path, tmp_path: Path) -> None:
    if kind == "wav":
        path = tmp_path / "tone.wav"
        path.write_bytes(wav_bytes(tone(TONE_HZ, 1.0, 44100, channels=2), 44100))
    else:
        path = tone_mp3
    data = path.read_bytes()
    reference = decode_audio(str(path))
    with open(path, "rb") as file:
        from_file = decode_audio(file)
        assert not file.closed
    shifted = io.BytesIO(b"junk" + data)
    shifted.read(4)  # a caller that has already consumed a prefix
    inputs = {
        "Path": decode_audio(path),
        "bytes": decode_audio(data),
        "bytearray": decode_audio(bytearray(data)),
        "file": from_file,
        "BytesIO": decode_audio(io.BytesIO(data)),
        "one-way stream": decode_audio(io.BufferedReader(_OneWayStream(data))),
        "partly read BytesIO": decode_audio(shifted),
    }
    for kind_name, audio in inputs.items():
        np.testing.assert_array_equal(audio.samples, reference.samples, err_msg=kind_name)
    assert reference.source == str(path)
    assert inputs["bytes"].source == "<bytes>"
    assert inputs["file"].source == str(path)
    assert decode_audio(data, name="upload.mp3").source == "upload.mp3"


def test_arrays_and_audio_pass_through() -> None:
    samples = np.linspace(-0.5, 0.5, SAMPLE_RATE, dtype=np.float64)
    audio = decode_audio(samples)
    assert audio.samples.dtype == np.float32
    np.testing.assert_allclose(audio.samples, samples, atol=1e-7)
    assert audio.duration == 1.0
    assert decode_audio(audio) is audio
    assert decode_audio(audio, name="renamed").source == "renamed"
    (only,) = decode_audio_channels(samples)
    assert only.channel == 0


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 100), dtype=np.float32), "1-D"),
        (np.zeros(100, dtype=np.int16), "float samples"),
        (np.zeros(0, dtype=np.float32), "no audio samples"),
        (np.array([0.0, np.nan, 0.1], dtype=np.float32), "non-finite"),
    ],
)
def test_bad_arrays_are_rejected(array: np.ndarray, message: str) -> None:
    with pytest.raises(AudioDecodeError, match=message):
        decode_audio(array)


# --- bad input ----------------------------------------------------------------------------------------


def _unknown_codec_wav() -> bytes:
    header = bytearray(wav_bytes(tone(TONE_HZ, 0.5, 16000), 16000))
    header[20:22] = struct.pack("<H", 0x1234)  # a WAVE format tag nobody has a decoder for
    return bytes(header)


def _bad_input(case: str, tmp_path: Path) -> bytes | Path:
    if case == "empty bytes":
        return b""
    if case == "empty file":
        (tmp_path / "empty.wav").write_bytes(b"")
        return tmp_path / "empty.wav"
    if case == "random bytes":
        return np.random.default_rng(0).bytes(20000)
    if case == "text file":
        (tmp_path / "notes.txt").write_text("Meeting notes.\nThis is not audio at all.\n" * 50)
        return tmp_path / "notes.txt"
    if case == "video without audio":
        return write_video_only(tmp_path / "silent-film.mp4")
    if case == "nonexistent path":
        return tmp_path / "missing.wav"
    if case == "directory":
        return tmp_path
    if case == "zero-sample wav":
        return wav_bytes(np.zeros((0, 1), dtype=np.float32), 16000)
    if case == "wav without a data chunk":
        return wav_bytes(np.zeros((0, 1), dtype=np.float32), 16000)[:36]  # RIFF, WAVE and fmt only
    if case == "unknown codec":
        return _unknown_codec_wav()
    if case == "NaN samples":
        samples = tone(TONE_HZ, 0.5, 16000)
        samples[100] = np.nan
        return wav_bytes(samples, 16000, "FLOAT")
    raise AssertionError(case)


BAD_INPUTS = {  # case -> regular expression the message must match
    "empty bytes": r"empty input \(0 bytes\)",
    "empty file": r"empty input \(0 bytes\)",
    "random bytes": "not a recognised audio or video format",
    "text file": "not a recognised audio or video format",
    "video without audio": r"no audio stream \(it has only video\)",
    "nonexistent path": "file not found: .*missing.wav",
    "directory": "cannot open .*: Is a directory",
    "zero-sample wav": "is empty: it contains no audio samples",
    "wav without a data chunk": "WAV file is empty: it has no data chunk",
    "unknown codec": "unsupported audio codec",
    "NaN samples": "non-finite samples",
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_one_error_type_with_a_helpful_message(case: str, tmp_path: Path) -> None:
    with pytest.raises(AudioDecodeError, match=BAD_INPUTS[case]):
        decode_audio(_bad_input(case, tmp_path))


def test_gsm_in_wav_decodes_through_ffmpeg(tmp_path: Path) -> None:
    """libsndfile opens GSM 6.10 but cannot read it in blocks (it cannot seek in it): FFmpeg decodes it."""
    path = write_gsm_wav(tmp_path / "call.wav", 3.0)
    for audio in (decode_audio(path), *decode_audio_channels(path)):
        assert audio.duration == pytest.approx(3.0, abs=DURATION_TOLERANCE_S)
        assert_model_ready(audio)
        assert dominant_frequency(audio.samples, SAMPLE_RATE) == pytest.approx(440.0, abs=5.0)
    assert sum(len(window[0]) for window in AudioStream(path, window_seconds=1.0)) == 3 * SAMPLE_RATE


def test_a_decoder_surprise_is_that_input_s_decode_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(interleaved: np.ndarray) -> np.ndarray:
        raise IndexError("a decoder bug")

    monkeypatch.setattr(libsndfile, "downmix", broken)
    with pytest.raises(AudioDecodeError, match=r"IndexError: a decoder bug") as caught:
        decode_audio(wav_bytes(tone(TONE_HZ, 0.5, 16000), 16000))
    assert isinstance(caught.value.__cause__, IndexError)
    with pytest.raises(AudioDecodeError, match="TypeError"):
        decode_audio(12345)  # type: ignore[arg-type]


def test_an_uploaded_playlist_cannot_read_local_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "secret.wav").write_bytes(wav_bytes(tone(TONE_HZ, 1.0, 16000), 16000))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AudioDecodeError):
        decode_audio(b"ffconcat version 1.0\nfile secret.wav\n")


# --- damaged input ------------------------------------------------------------------------------------


def test_truncated_mp3_keeps_what_decoded_and_warns(tmp_path: Path) -> None:
    path = encode(tmp_path / "long.mp3", tone(TONE_HZ, 10.0, 44100, channels=2), 44100, codec="libmp3lame")
    data = path.read_bytes()
    audio = decode_audio(data[: len(data) * 4 // 10])
    assert 3.0 < audio.duration < 5.0
    assert_model_ready(audio)
    assert len(audio.warnings) == 1
    assert audio.warnings[0].startswith("input truncated: decoded 4.")
    assert "10.0 s" in audio.warnings[0]


def test_truncated_flac_and_wav_warn(tmp_path: Path) -> None:
    samples = tone(TONE_HZ, 4.0, 44100, channels=2)
    for suffix in ("flac", "wav"):
        path = tmp_path / f"cut.{suffix}"
        soundfile.write(path, samples, 44100)
        data = path.read_bytes()
        audio = decode_audio(data[: len(data) // 2])
        assert 1.0 < audio.duration < 2.5, suffix
        assert len(audio.warnings) == 1, suffix
        assert audio.warnings[0].startswith("input truncated"), suffix


def test_split_channels_share_the_warnings(tmp_path: Path) -> None:
    path = encode(tmp_path / "call.mp3", tone(TONE_HZ, 6.0, 44100, channels=2), 44100, codec="libmp3lame")
    data = path.read_bytes()
    left, right = decode_audio_channels(data[: len(data) // 2])
    assert left.warnings == right.warnings != []
    assert left.warnings is not right.warnings


# --- duration limit -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def thirty_seconds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("long")
    samples = tone(440, 30.0, 16000)
    soundfile.write(folder / "long.wav", samples, 16000)
    return {
        "wav": folder / "long.wav",
        "mp3": encode(folder / "long.mp3", samples, 16000, codec="libmp3lame"),
        "opus": encode(folder / "long.ogg", samples, 16000, codec="libopus", container_format="ogg"),
    }


@pytest.mark.parametrize("kind", ["wav", "mp3", "opus"])
def test_over_the_limit_raises_before_decoding(kind: str, thirty_seconds: dict[str, Path]) -> None:
    started = time.perf_counter()
    with pytest.raises(AudioTooLongError, match=r"longer than the 5 s limit \(it (is|declares) 30.0 s\)"):
        decode_audio(thirty_seconds[kind], max_duration=5)
    assert time.perf_counter() - started < 0.5


def test_limit_counts_samples_when_the_header_lies(tone_mp3: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 200 s of MP3 whose container claims 2 s: decoding must notice, and stop reading soon after 5 s.
    monkeypatch.setattr(ffmpeg, "_declared_duration", lambda container, stream: 2.0)

    class CountingReader(io.BytesIO):
        bytes_read = 0

        def read(self, size: int | None = -1) -> bytes:
            chunk = super().read(size)
            self.bytes_read += len(chunk)
            return chunk

    data = tone_mp3.read_bytes() * 100
    reader = CountingReader(data)
    with pytest.raises(AudioTooLongError, match=r"longer than the 5 s limit \(stopped decoding at 5.\d s\)"):
        decode_audio(reader, max_duration=5)
    assert reader.bytes_read < len(data) / 10


def test_limit_is_inclusive_and_counts_decoded_audio(tmp_path: Path) -> None:
    samples = tone(TONE_HZ, 5.5, 44100)
    path = encode(tmp_path / "five-and-a-half.mp3", samples, 44100, codec="libmp3lame")
    # Declared 5.5 s is within the slack for estimates, so decoding itself finds the excess.
    with pytest.raises(AudioTooLongError, match="stopped decoding at 5.0 s"):
        decode_audio(path, max_duration=5)
    assert decode_audio(path, max_duration=5.5).duration == pytest.approx(5.5, abs=DURATION_TOLERANCE_S)
    exact = wav_bytes(tone(TONE_HZ, 5.0, 16000), 16000)
    assert decode_audio(exact, max_duration=5).duration == 5.0
    with pytest.raises(AudioTooLongError, match="4.9 s limit"):
        decode_audio(exact, max_duration=4.9)
    with pytest.raises(AudioTooLongError, match="4.9 s limit"):
        decode_audio(np.zeros(5 * SAMPLE_RATE, dtype=np.float32), max_duration=4.9)


# --- streaming ---------------------------------------------------------------------------------------


def _tone_file(kind: str, folder: Path, seconds: float) -> Path:
    """A stereo tone, louder on the left, as WAV (libsndfile) or MP3 (FFmpeg)."""
    samples = tone(TONE_HZ, seconds, 44100, channels=2) * np.array([1.0, 0.5], dtype=np.float32)
    if kind == "wav":
        soundfile.write(folder / "tone.wav", samples, 44100)
        return folder / "tone.wav"
    return encode(folder / "tone.mp3", samples, 44100, codec="libmp3lame")


@pytest.mark.parametrize("kind", ["wav", "mp3"])
def test_stream_windows_join_up_to_the_whole_decode(kind: str, tmp_path: Path) -> None:
    path = _tone_file(kind, tmp_path, 6.5)
    stream = AudioStream(path, window_seconds=2.0)
    assert stream.source == str(path)
    windows = list(stream)
    assert all(len(window) == 1 for window in windows)
    lengths = [len(window[0]) for window in windows]
    assert lengths[:3] == [2 * SAMPLE_RATE] * 3
    assert 0 < lengths[3] <= 2 * SAMPLE_RATE and len(lengths) == 4
    whole = decode_audio(path)
    np.testing.assert_array_equal(np.concatenate([window[0] for window in windows]), whole.samples)
    assert stream.duration == whole.duration
    assert stream.warnings == []

    split = list(AudioStream(path, keep_channels=True, window_seconds=2.0))
    for index, channel in enumerate(decode_audio_channels(path)):
        np.testing.assert_array_equal(np.concatenate([window[index] for window in split]), channel.samples)


def test_stream_of_samples_and_its_single_use() -> None:
    stream = AudioStream(np.zeros(SAMPLE_RATE * 3, dtype=np.float32), window_seconds=1.0, name="mic")
    assert stream.source == "mic"
    assert [len(window[0]) for window in stream] == [SAMPLE_RATE] * 3
    with pytest.raises(RuntimeError, match="only once"):
        iter(stream)


def test_stream_warnings_and_errors_arrive_while_iterating(tmp_path: Path) -> None:
    data = _tone_file("mp3", tmp_path, 6.0).read_bytes()
    stream = AudioStream(data[: len(data) // 2], window_seconds=1.0)
    assert stream.warnings == []
    windows = list(stream)
    assert stream.warnings and stream.warnings[0].startswith("input truncated")
    assert stream.duration == pytest.approx(sum(len(window[0]) for window in windows) / SAMPLE_RATE)
    with pytest.raises(AudioDecodeError, match="empty input"):
        list(AudioStream(b""))


def test_stream_hands_out_windows_until_the_limit(tone_mp3: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ffmpeg, "_declared_duration", lambda container, stream: None)
    windows = []
    with pytest.raises(AudioTooLongError, match="5 s limit"):
        for window in AudioStream(tone_mp3.read_bytes() * 10, max_duration=5, window_seconds=1.0):
            windows.append(window)
    # Four whole windows came out; the piece that would complete the fifth already passes 5 s.
    assert len(windows) == 4


def _open_descriptors() -> int:
    folder = Path("/proc/self/fd")
    if not folder.is_dir():
        pytest.skip("no /proc/self/fd here")
    return len(list(folder.iterdir()))


def test_abandoned_or_failed_streams_close_their_files(tmp_path: Path) -> None:
    wav = _tone_file("wav", tmp_path, 3.0)
    mp3 = _tone_file("mp3", tmp_path, 3.0)
    before = _open_descriptors()
    for path in (wav, mp3):
        windows = iter(AudioStream(path, window_seconds=1.0))
        next(windows)
        windows.close()
        with pytest.raises(AudioTooLongError):
            list(AudioStream(path, max_duration=1.5, window_seconds=1.0))
    assert _open_descriptors() == before


# --- resources ----------------------------------------------------------------------------------------


def _resident_megabytes() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status here")


def test_decoding_the_same_mp3_200_times_does_not_leak(tone_mp3: Path) -> None:
    data = tone_mp3.read_bytes()
    for _ in range(20):  # let allocators and caches settle first
        decode_audio(data)
    before = _resident_megabytes()
    for _ in range(200):
        decode_audio(data)
    assert _resident_megabytes() - before < 30
