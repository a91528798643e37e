"""Every default lives here; SENSEVOICE_<NAME> environment variables override them, CLI flags both."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import InvalidOption
from .hotwords import DEFAULT_HOTWORD_SCORE, hotword_lines, split_hotwords

OutputFormat = Literal["json", "txt", "srt", "vtt", "tsv"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SENSEVOICE_", protected_namespaces=())

    # Engine
    model: str = Field("iic/SenseVoiceSmall", description="model directory or hub id")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    devices: str | None = Field(
        None,
        description="serve: one engine and scheduler on each of these (cuda:0,cuda:1), requests to the least "
        "loaded (default: every usable GPU when device is auto, else the one device)",
    )
    dtype: str = Field("auto", description="auto, fp32, fp16, bf16, int8 (CPU only)")
    # Read where the int8 runtime builds its model (runtimes/int8_cache.py), the Python API included.
    cache_dir: str | None = Field(
        None,
        description="where the int8 model built from model.pt is kept (default: ~/.cache/sensevoice-serve)",
    )
    language: str = Field("auto", description="auto, zh, en, yue, ja, ko, nospeech")
    use_itn: bool = Field(True, description="inverse text normalisation (punctuation, numbers)")
    ban_emo_unk: bool = Field(False, description="never answer EMO_UNKNOWN")
    beam_size: int | None = Field(
        None, description="1: greedy; 2-16: beam search (default: 1, or 4 when there are hotwords)"
    )
    hotwords: str | None = Field(
        None, description="phrases to boost, comma-separated, each optionally phrase:boost ('ComfyUI:3,张三')"
    )
    hotwords_file: str | None = Field(
        None, description="more hotwords, one per line (phrase or phrase:boost; # comments)"
    )
    hotword_score: float = Field(DEFAULT_HOTWORD_SCORE, description="boost of a hotword given without one")
    max_batch_frames: int | None = Field(
        None, ge=1, description="padded 60 ms frames per forward (default: tuned)"
    )
    batch_size: int | None = Field(None, ge=1, description="at most this many utterances per forward")

    # Long audio
    vad: Literal["auto", "on", "off"] = Field("auto", description="segment audio longer than the cap")
    max_segment_seconds: float = Field(30.0, ge=1, le=600, description="longest segment the model sees")
    split_channels: bool = Field(False, description="transcribe each channel on its own (stereo calls)")

    # Server
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = Field(None, description="require 'Authorization: Bearer <key>' when set")
    max_queue: int = Field(
        64, ge=1, description="requests decoding or in inference at once; more get 503 + Retry-After"
    )
    supervise: bool = Field(True, description="serve from a child process, replaced at once if it dies")
    # A 2-hour 16 kHz mono 16-bit WAV (230 MB) fits the default max duration; compressed audio is smaller.
    max_upload_mb: float = Field(256.0, gt=0, description="largest upload accepted (413 above)")
    max_duration_seconds: float = Field(7200.0, gt=0, description="longest audio accepted (413 above)")
    request_timeout_seconds: float = Field(
        600.0, gt=0, description="a request still running this long after its upload gets 504"
    )
    max_files_per_request: int = Field(16, ge=1, description="files in one native request (400 above)")
    # Uploads are received apart from inference, streamed to files: many at once, each under its own bounds.
    max_uploads: int = Field(256, ge=1, description="uploads being received at once (503 above)")
    max_upload_temp_mb: float = Field(
        1024.0, gt=0, description="upload bytes in the temp directory at once, all requests (503 above)"
    )
    upload_idle_timeout_seconds: float = Field(
        30.0, gt=0, description="an upload that sends nothing for this long gets 408"
    )
    upload_min_rate_kb: float = Field(
        8.0, ge=0, description="KB/s an upload must average beyond one idle timeout's grace (408 below)"
    )
    header_timeout_seconds: float = Field(
        10.0, gt=0, description="a connection must send a request's headers within this (closed otherwise)"
    )
    decode_timeout_seconds: float = Field(
        300.0, gt=0, description="a decoder still on one upload after this is killed (422)"
    )
    public_metrics: bool = Field(
        False, description="serve /metrics and /openapi.json without the API key (which they need by default)"
    )
    decode_workers: int | None = Field(None, ge=1, description="decode processes (default: from the cores)")
    torch_threads: int | None = Field(None, ge=1, description="torch threads (default: from the cores)")
    max_wait_ms: float | None = Field(
        None, ge=0, description="a lone request's wait for batch company (default: tuned)"
    )

    # Realtime transcription (WebSocket, /v1/realtime)
    realtime_max_sessions: int = Field(100, ge=1, description="realtime sessions open at once (more refused)")
    realtime_partial_interval_ms: float = Field(
        300.0, ge=50, description="re-decode an open utterance for a partial result every this much audio"
    )
    realtime_max_utterance_seconds: float = Field(
        15.0, ge=2, le=30, description="longest utterance partials re-decode (longer speech: cut at a pause)"
    )
    realtime_max_buffer_seconds: float = Field(
        120.0, gt=0, description="uncommitted audio a session holds without server VAD (more refused)"
    )
    realtime_idle_timeout_seconds: float = Field(
        60.0, gt=0, description="a realtime session that sends nothing for this long is closed"
    )

    # Ray (the `ray` extra): serve --ray runs a Ray Serve app, transcribe --ray a Ray Data pipeline
    ray: bool = Field(False, description="run on Ray (Serve for serve, Data for transcribe)")
    ray_address: str | None = Field(
        None, description="a running Ray cluster to join (default: start a local one, on loopback only)"
    )
    replicas: int | None = Field(
        None, ge=1, description="engine copies on Ray: Serve replicas, Data actors (default: GPUs or 1)"
    )
    ray_cpus_per_replica: float | None = Field(
        None, gt=0, description="cores each engine copy reserves on Ray (default: from the cluster's cores)"
    )
    ray_object_store_mb: int = Field(500, ge=100, description="object store of a local Ray cluster")
    ray_dashboard: bool = Field(False, description="start Ray's dashboard (loopback) with a local cluster")

    # CLI output
    output_format: OutputFormat = "txt"
    output_dir: str | None = None
    output: str | None = Field(None, description="bulk mode: the JSONL results file to append to")
    retry_failed: bool = False

    def hotword_specs(self) -> list[str]:
        """``hotwords``, then the lines of ``hotwords_file``; unchecked (``decode_options`` checks them)."""
        specs = split_hotwords(self.hotwords or "")
        if self.hotwords_file:
            specs += _hotwords_file_lines(self.hotwords_file)
        return specs

    def decode_options(
        self,
        language: str | None = None,
        use_itn: bool | None = None,
        ban_emo_unk: bool | None = None,
        beam_size: int | None = None,
        hotwords: Sequence[str] | None = None,
        hotword_score: float | None = None,
    ):
        """The DecodeOptions every entry point uses: these settings, with a request's values (not None) on
        top. A request's hotwords replace the configured ones."""
        return decode_options(
            language or self.language,
            self.use_itn if use_itn is None else use_itn,
            self.ban_emo_unk if ban_emo_unk is None else ban_emo_unk,
            self.beam_size if beam_size is None else beam_size,
            self.hotword_specs() if hotwords is None else hotwords,
            self.hotword_score if hotword_score is None else hotword_score,
        )

    def tuned(self):
        """Device, dtype, threads and batching: explicit values, else this machine's profile, else rules."""
        from .tuning import resolve_tuned_settings

        return resolve_tuned_settings(self._tuning_values())

    def tuned_devices(self):
        """``tuned()`` for each device the server runs an engine on (``devices``, or every usable GPU)."""
        from .tuning import resolve_device_settings

        return resolve_device_settings(self._tuning_values(), self.devices)

    def _tuning_values(self) -> dict:
        names = ("device", "dtype", "torch_threads", "decode_workers", "max_batch_frames", "max_wait_ms")
        return {name: getattr(self, name) for name in names}


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with the given (non-None) values on top."""
    return Settings(**{key: value for key, value in overrides.items() if value is not None})


HOTWORD_BEAM_SIZE = 4  # beam width when hotwords come without one: enough for boosted phrases to survive


def decode_options(
    language: str = "auto",
    use_itn: bool = True,
    ban_emo_unk: bool = False,
    beam_size: int | None = None,
    hotwords: Sequence[str] = (),
    hotword_score: float = DEFAULT_HOTWORD_SCORE,
):
    """Checked DecodeOptions (InvalidOption otherwise); ``beam_size`` None is greedy, or
    ``HOTWORD_BEAM_SIZE`` when there are hotwords (an explicit 1 with hotwords is refused)."""
    from .decoding import DecodeOptions

    if beam_size is None:
        beam_size = HOTWORD_BEAM_SIZE if hotwords else 1
    return DecodeOptions(language, use_itn, ban_emo_unk, beam_size, tuple(hotwords), hotword_score)


def _hotwords_file_lines(path: str) -> list[str]:
    try:
        stat = Path(path).stat()
    except OSError as error:
        raise InvalidOption(f"hotwords file {path}: {error.strerror or error}") from None
    # Servers build options per request: the file is read again only when it changes.
    return list(_read_hotwords_file(path, stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=8)
def _read_hotwords_file(path: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    try:
        return tuple(hotword_lines(Path(path).read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidOption(f"hotwords file {path}: {error}") from None
