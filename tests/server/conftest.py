"""Live servers on loopback (random tiny checkpoint), started as users start them: ``sensevoice serve``."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
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
        """The server's decode processes: spawned descendants (its children, or a supervised server's)."""
        children: dict[int, list[tuple[int, bytes]]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                command = (entry / "cmdline").read_bytes()
            except (OSError, IndexError):
                continue
            children.setdefault(parent, []).append((int(entry.name), command))
        pids, parents = [], [self.process.pid]
        while parents:
            for pid, command in children.get(parents.pop(), []):
                parents.append(pid)
                if b"spawn_main" in command:
                    pids.append(pid)
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
    # No tuning profile from the machine running the tests: the rules, plus what a test sets. fp32 unless a
    # test asks otherwise: exact, so answers compare with the tiny fp32 engine's whatever the CPU (auto picks
    # int8 on a VNNI CPU, whose batches share an activation scale; test_int8_server.py serves int8).
    env["SENSEVOICE_PROFILE"] = os.devnull
    env["SENSEVOICE_DTYPE"] = "fp32"
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


@contextlib.contextmanager
def stopped(pids: list[int]) -> Iterator[None]:
    """The processes frozen (SIGSTOP) while the block runs: work sent to them waits, deterministically."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # killed meanwhile (the test's point, sometimes)
                os.kill(pid, signal.SIGCONT)


def wait_until(condition: Callable[[], object], what: str, timeout: float = 60) -> None:
    """Poll until ``condition()`` holds: tests wait for the state they need, never for a fixed time."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting until {what}")
        time.sleep(0.02)


class RawUpload:
    """A multipart upload over a plain socket, sent as far as the test says: a client in mid-upload."""

    def __init__(self, server: LiveServer, data: bytes, path: str = "/v1/audio/transcriptions") -> None:
        field = "file" if path == "/v1/audio/transcriptions" else "files"
        encoded = httpx.Request("POST", server.url + path, files={field: ("clip.wav", data)})
        self.body = encoded.read()
        self.sent = 0
        self.response_headers: dict[str, str] = {}
        head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(self.body)}"]
        self.content_type = encoded.headers["Content-Type"]
        head += [f"Content-Type: {self.content_type}"]
        head += [f"{name}: {value}" for name, value in server.headers.items()]
        port = int(server.url.rsplit(":", 1)[1])
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.socket.sendall(("\r\n".join(head) + "\r\n\r\n").encode())

    def send(self, count: int | None = None) -> None:
        """The next ``count`` bytes of the body (all that is left by default)."""
        end = len(self.body) if count is None else self.sent + count
        self.socket.sendall(self.body[self.sent : end])
        self.sent = min(end, len(self.body))

    def response(self) -> tuple[int, dict]:
        """The status and JSON body the server answers (it may answer before the body is complete)."""
        received = b""
        while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < self._length(received):
            chunk = self.socket.recv(65536)
            if not chunk:
                break
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode().split("\r\n")
        self.response_headers = {
            name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in header_lines)
        }
        return int(status_line.split()[1]), json.loads(body) if body else {}

    @staticmethod
    def _length(received: bytes) -> int:
        for line in received.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                return int(value)
        return 0

    def wait_closed(self) -> None:
        """Return once the server has closed the connection (the socket times out if it never does)."""
        with contextlib.suppress(ConnectionResetError):
            while self.socket.recv(65536):
                pass

    def close(self) -> None:
        self.socket.close()


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
