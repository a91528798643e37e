"""Live servers on loopback (random tiny checkpoint), driven the way clients drive them."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from sensevoice_serve.audio import decode_audio
from sensevoice_serve.pipeline import SenseVoice

from ..audio_fixtures import encode, tone, write_video_only
from ..conftest import shared_audio


class LiveServer:
    def __init__(self, process: subprocess.Popen, port: int):
        self.process = process
        self.url = f"http://127.0.0.1:{port}"

    def post(self, path: str, **kwargs) -> httpx.Response:
        return httpx.post(self.url + path, timeout=120, **kwargs)

    def transcribe(self, data: bytes, name: str = "clip.wav", **fields) -> httpx.Response:
        return self.post("/v1/audio/transcriptions", files={"file": (name, data)}, data=fields)

    def decode_worker_pids(self) -> list[int]:
        children = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    cmdline = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if int(stat[1]) == self.process.pid and b"spawn_main" in cmdline:
                    children.append(int(entry.name))
        return children


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def start_server(tiny_model_dir: Path) -> Iterator:
    started: list[LiveServer] = []

    def start(**settings: str) -> LiveServer:
        port = _free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "SENSEVOICE_MODEL": str(tiny_model_dir)}
        env.update({f"SENSEVOICE_{key.upper()}": str(value) for key, value in settings.items()})
        process = subprocess.Popen(
            [sys.executable, "-m", "sensevoice_serve.cli", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        server = LiveServer(process, port)
        started.append(server)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(server.url + "/ready", timeout=1).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            if process.poll() is not None:
                raise RuntimeError(process.stderr.read().decode())
            time.sleep(0.2)
        raise TimeoutError("server did not become ready")

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
        server.process.wait()


@pytest.fixture(scope="module")
def server(start_server) -> LiveServer:
    return start_server()


def _wav(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return np.concatenate([decode_audio(shared_audio(n)).samples for n in ("jfk.flac", "zh_sample.wav")])


@pytest.mark.parametrize("response_format", ["json", "text", "srt", "vtt", "verbose_json"])
def test_openai_client_round_trip(server: LiveServer, response_format: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with shared_audio("jfk.flac").open("rb") as audio:
        extra = {"timestamp_granularities": ["word", "segment"]} if response_format == "verbose_json" else {}
        result = client.audio.transcriptions.create(
            model="whisper-1", file=audio, response_format=response_format, **extra
        )
    if response_format == "json":
        assert result.text
    elif response_format == "verbose_json":
        assert result.duration == pytest.approx(11.0, abs=0.1)
        assert result.segments[0].end == pytest.approx(11.0, abs=0.1)
        assert result.words and result.words[0].start >= 0
    elif response_format == "text":
        assert isinstance(result, str) and result.strip()
    else:
        assert "-->" in result


def test_openai_client_sees_errors(server: LiveServer) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="not a recognised audio"):
        client.audio.transcriptions.create(model="whisper-1", file=("x.mp3", b"garbage" * 100))
    assert [m.id for m in client.models.list()] == ["sensevoice-small"]


def test_concurrent_requests_are_batched_without_cross_talk(
    server: LiveServer, speech: np.ndarray, tiny_model_dir: Path
) -> None:
    rng = np.random.default_rng(3)
    clips = [_wav(speech[: int(16000 * seconds)]) for seconds in rng.uniform(1.0, 16.0, size=32)]
    engine = SenseVoice.from_pretrained(tiny_model_dir, device="cpu", dtype="fp32")
    expected = [[t.id for t in result.tokens] for result in engine.transcribe(clips)]

    def request(data: bytes) -> list[int]:
        response = server.post("/v1/transcribe", files={"files": ("clip.wav", data)})
        assert response.status_code == 200, response.text
        return [
            token["id"]
            for segment in response.json()["results"][0]["segments"]
            for token in segment["tokens"]
        ]

    with ThreadPoolExecutor(32) as pool:
        received = list(pool.map(request, clips))
    assert received == expected
    metrics = httpx.get(server.url + "/metrics").text
    single = float(
        next(line.split()[-1] for line in metrics.splitlines() if 'batch_size_bucket{le="1.0"}' in line)
    )
    total = float(
        next(
            line.split()[-1]
            for line in metrics.splitlines()
            if line.startswith("sensevoice_batch_size_count")
        )
    )
    assert total > single, "no forward ran more than one utterance"


def test_bad_files_get_4xx_and_the_server_keeps_serving(
    server: LiveServer, tmp_path: Path, speech: np.ndarray
) -> None:
    mp3 = shared_audio("hotwords.mp3").read_bytes()
    video = encode(tmp_path / "with_audio.mp4", tone(440, 1, 16000), 16000, codec="aac", with_video=True)
    video_only = write_video_only(tmp_path / "video.mp4").read_bytes()
    bad = {
        "empty.wav": b"",
        "truncated.mp3": mp3[:200],
        "random.mp3": np.random.default_rng(0).bytes(5000),
        "notes.txt": b"just some text, not audio at all\n" * 20,
        "video.mp4": video_only,
    }
    for name, data in bad.items():
        response = server.transcribe(data, name)
        assert 400 <= response.status_code < 500, (name, response.text)
        assert response.json()["error"]["message"], name
    assert server.transcribe(video.read_bytes(), "with_audio.mp4").status_code == 200
    assert server.transcribe(_wav(speech[:16000])).status_code == 200


def test_upload_and_duration_limits(start_server, speech: np.ndarray) -> None:
    server = start_server(max_upload_mb=0.2, max_duration_seconds=5)
    too_big = server.transcribe(_wav(np.zeros(16000 * 8, dtype=np.float32)))
    assert too_big.status_code == 413 and "0.2 MB" in too_big.json()["error"]["message"]
    too_long = server.transcribe(_wav(speech[: 16000 * 6]))
    assert too_long.status_code == 413 and "5 s limit" in too_long.json()["error"]["message"]


def test_saturated_queue_answers_503_with_retry_after(start_server, speech: np.ndarray) -> None:
    server = start_server(max_queue=2)
    clip = _wav(speech[: 16000 * 15])
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: server.transcribe(clip), range(16)))
    statuses = [r.status_code for r in responses]
    assert 503 in statuses and 200 in statuses, statuses
    assert set(statuses) <= {200, 503}
    rejected = next(r for r in responses if r.status_code == 503)
    assert rejected.headers["retry-after"] == "1"
    assert "busy" in rejected.json()["error"]["message"]


def test_request_timeout(start_server, speech: np.ndarray) -> None:
    server = start_server(request_timeout_seconds=0.01)
    response = server.transcribe(_wav(speech[: 16000 * 15]))
    assert response.status_code == 504
    assert "timeout" in response.json()["error"]["message"]
    assert httpx.get(server.url + "/health").status_code == 200


def test_api_key(start_server, speech: np.ndarray) -> None:
    server = start_server(api_key="s3cret")
    clip = _wav(speech[:16000])
    assert server.transcribe(clip).status_code == 401
    wrong = server.post(
        "/v1/audio/transcriptions", files={"file": ("a.wav", clip)}, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401 and "API key" in wrong.json()["error"]["message"]
    right = server.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", clip)},
        headers={"Authorization": "Bearer s3cret"},
    )
    assert right.status_code == 200


def test_killed_decode_worker_is_replaced(start_server, speech: np.ndarray) -> None:
    server = start_server()
    clip = _wav(speech[:16000])
    workers = server.decode_worker_pids()
    assert workers
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    statuses = [server.transcribe(clip).status_code for _ in range(3)]
    assert statuses[-1] == 200, statuses
    assert set(statuses) <= {200, 503}
    assert server.decode_worker_pids() and set(server.decode_worker_pids()).isdisjoint(workers)


def test_sigterm_drains_in_flight_requests(start_server, speech: np.ndarray) -> None:
    server = start_server()
    clip = _wav(speech[: 16000 * 15])
    outcome: dict = {}

    def long_request() -> None:
        outcome["response"] = server.transcribe(clip)

    thread = threading.Thread(target=long_request)
    thread.start()
    time.sleep(0.3)
    server.process.send_signal(signal.SIGTERM)
    thread.join(timeout=60)
    assert outcome["response"].status_code == 200
    # uvicorn re-raises the signal once drained, so the exit is "terminated by SIGTERM", promptly.
    assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)


def test_web_page_works_offline(server: LiveServer) -> None:
    page = httpx.get(server.url + "/").text
    assert "<form" in page and "/v1/transcribe" in page
    assert "http://" not in page and "https://" not in page  # no CDN: it must work with no internet
