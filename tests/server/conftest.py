"""Live servers on loopback (random tiny checkpoint), started as users start them: ``sensevoice serve``."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from sensevoice_serve.audio import decode_audio

from ..conftest import shared_audio

STARTUP_SECONDS = 90


class LiveServer:
    def __init__(self, process: subprocess.Popen, port: int, temp_dir: Path, api_key: str | None = None):
        self.process = process
        self.temp_dir = temp_dir  # its TMPDIR: uploads in flight; removed once it has stopped, however
        self.url = f"http://127.0.0.1:{port}"
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(self.url + path, headers=self.headers, timeout=60, **kwargs)

    def post(self, path: str, **kwargs) -> httpx.Response:
        kwargs.setdefault("headers", self.headers)
        return httpx.post(self.url + path, timeout=120, **kwargs)

    def transcribe(self, data: bytes, name: str = "clip.wav", **fields: str) -> httpx.Response:
        """The OpenAI endpoint, as a plain multipart client calls it."""
        return self.post("/v1/audio/transcriptions", files={"file": (name, data)}, data=fields)

    def transcribe_native(self, *files: tuple[str, bytes], **fields: str) -> httpx.Response:
        return self.post("/v1/transcribe", files=[("files", f) for f in files], data=fields)

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.get("/metrics").text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def decode_worker_pids(self) -> list[int]:
        """The server's decode processes: its spawned children other than the resource tracker."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                command = (entry / "cmdline").read_bytes()
            except (OSError, IndexError):
                continue
            if parent == self.process.pid and b"spawn_main" in command:
                pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(model_dir: Path, **settings: object) -> LiveServer:
    """``sensevoice serve`` in a subprocess; settings go in as SENSEVOICE_* variables, as in production."""
    port = free_port()
    temp_dir = Path(tempfile.mkdtemp(prefix="sensevoice-test-server-"))
    env = {
        **os.environ,
        "TMPDIR": str(temp_dir),
        "HF_HUB_OFFLINE": "1",
        "SENSEVOICE_MODEL": str(model_dir),
        "SENSEVOICE_PORT": str(port),
    }
    # No tuning profile from the machine running the tests: the rules, plus what a test sets.
    env["SENSEVOICE_PROFILE"] = os.devnull
    env.update({f"SENSEVOICE_{key.upper()}": str(value) for key, value in settings.items()})
    process = subprocess.Popen(
        [sys.executable, "-m", "sensevoice_serve.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return LiveServer(process, port, temp_dir, settings.get("api_key"))


def wait_ready(server: LiveServer) -> LiveServer:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        try:
            if httpx.get(server.url + "/ready", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited: {server.process.stderr.read().decode()}")
        time.sleep(0.1)
    raise TimeoutError("the server did not become ready")


@pytest.fixture(scope="session")
def start_server(tiny_model_dir: Path) -> Iterator:
    """Start a server with the given settings and wait until it is ready; all are stopped at the end."""
    started: list[LiveServer] = []

    def start(**settings: object) -> LiveServer:
        server = launch(tiny_model_dir, **settings)
        started.append(server)
        return wait_ready(server)

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server(start_server) -> LiveServer:
    """The server most tests share, with default settings."""
    return start_server()


def wav(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def speech() -> np.ndarray:
    """About 47 s of real speech (English, Mandarin, English then German) at 16 kHz."""
    names = ("jfk.flac", "zh_sample.wav", "multilingual.mp3")
    return np.concatenate([decode_audio(shared_audio(name)).samples for name in names])


def trickle(server: LiveServer, data: bytes, seconds: float, pieces: int = 20) -> httpx.Response:
    """Upload to the OpenAI endpoint slowly (chunked, no Content-Length): a request that stays in flight
    for ``seconds`` whatever the machine's speed."""
    encoded = httpx.Request("POST", server.url, files={"file": ("slow.wav", data)})
    body = encoded.read()
    step = -(-len(body) // pieces)

    def slowly() -> Iterator[bytes]:
        for start in range(0, len(body), step):
            time.sleep(seconds / pieces)
            yield body[start : start + step]

    headers = {"Content-Type": encoded.headers["Content-Type"], **server.headers}
    return httpx.post(server.url + "/v1/audio/transcriptions", content=slowly(), headers=headers, timeout=60)
