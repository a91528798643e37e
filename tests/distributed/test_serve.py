"""``sensevoice serve --ray``: the server as a Ray Serve app on a local cluster (2 CPU replicas, tiny
checkpoint) answers as the plain server does, survives a replica's death, listens on loopback only and
leaves nothing behind after SIGTERM."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from ..conftest import shared_audio
from ..server.conftest import LiveServer, free_port, launch, wait_ready, wait_until
from .conftest import RAY_MISSING, RayRun

pytestmark = pytest.mark.slow
pytest.importorskip("ray", reason=RAY_MISSING)

SHORT_RECORDINGS = ("jfk.flac", "zh_sample.wav", "hotwords.mp3", "stereo_diarization.wav")
RECORDINGS = (*SHORT_RECORDINGS, "multilingual.mp3")
STARTUP_SECONDS = 180
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


@dataclass
class RayServer:
    process: subprocess.Popen
    url: str
    log: Path

    def replicas(self, run: RayRun) -> list[int]:
        return [pid for pid, command in run.processes().items() if command.startswith(b"ray::ServeReplica")]

    def ready_lines(self) -> list[str]:
        """The replicas' "ready" log lines (Ray passes them on with the replica's pid)."""
        return [line for line in self.log.read_text(errors="replace").splitlines() if " INFO ready: " in line]


@pytest.fixture(scope="module")
def plain_server(tiny_model_dir: Path) -> Iterator[LiveServer]:
    server = launch(tiny_model_dir)
    yield wait_ready(server)
    server.stop()


@pytest.fixture(scope="module")
def ray_server(ray_run: RayRun, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    port = free_port()
    log = tmp_path_factory.mktemp("ray-serve") / "serve.log"
    args = ("serve", "--ray", "--replicas", "2", "--model", str(tiny_model_dir), "--port", str(port))
    server = RayServer(ray_run.start(*args, log=log), f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + STARTUP_SECONDS
    while not _answers_ready(server):
        assert server.process.poll() is None, f"serve --ray exited:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"serve --ray was not ready:\n{log.read_text()[-3000:]}"
    yield server
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=60)


def _answers_ready(server: RayServer) -> bool:
    try:  # until a replica is warm, Ray's proxy holds the request: the timeout ends the wait
        return httpx.get(server.url + "/ready", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _native(url: str, path: Path) -> dict:
    files = {"files": (path.name, path.read_bytes())}
    response = httpx.post(f"{url}/v1/transcribe", files=files, timeout=120)
    assert response.status_code == 200, response.text
    (entry,) = response.json()["results"]
    entry.pop("timings")
    return entry


def test_answers_equal_the_plain_servers(ray_server: RayServer, plain_server: LiveServer) -> None:
    recordings = [shared_audio(name) for name in RECORDINGS]
    for recording in recordings:
        texts = [
            OpenAI(base_url=f"{url}/v1", api_key="any").audio.transcriptions.create(
                model="whisper-1", file=(recording.name, recording.read_bytes())
            )
            for url in (ray_server.url, plain_server.url)
        ]
        assert texts[0].text == texts[1].text, recording.name
    short = [shared_audio(name) for name in SHORT_RECORDINGS]
    expected = {recording: _native(plain_server.url, recording) for recording in short}
    requests = [short[i % len(short)] for i in range(24)]
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda recording: _native(ray_server.url, recording), requests))
    assert answers == [expected[recording] for recording in requests]


def test_a_killed_replica_is_replaced_and_requests_succeed(ray_server: RayServer, ray_run: RayRun) -> None:
    before = ray_server.replicas(ray_run)
    assert len(before) == 2
    os.kill(before[0], signal.SIGKILL)
    clip = shared_audio("jfk.flac").read_bytes()
    with ThreadPoolExecutor(8) as pool:
        statuses = list(
            pool.map(
                lambda _: (
                    httpx.post(
                        f"{ray_server.url}/v1/audio/transcriptions",
                        files={"file": ("a.flac", clip)},
                        timeout=120,
                    ).status_code
                ),
                range(16),
            )
        )
    assert statuses == [200] * 16

    def replaced_and_warm() -> bool:
        new = [pid for pid in ray_server.replicas(ray_run) if pid not in before]
        return len(new) == 1 and any(f"pid={new[0]})" in line for line in ray_server.ready_lines())

    wait_until(replaced_and_warm, "a new replica is warm", timeout=120)
    assert len(ray_server.replicas(ray_run)) == 2


def test_ray_listens_on_loopback_only_without_usage_stats(ray_server: RayServer, ray_run: RayRun) -> None:
    processes = ray_run.processes()
    assert any(command.startswith(b"ray::ServeReplica") for command in processes.values())
    listening = _listening_addresses(set(processes))
    assert listening, "no listening socket found"
    assert {address for address, _ in listening} <= LOOPBACK, listening
    # Set by the command before it starts Ray (its own /proc environ is what it was started with).
    for pid in set(processes) - {ray_server.process.pid}:
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"RAY_USAGE_STATS_ENABLED=0" in environment, processes[pid]


def test_sigterm_stops_every_process_it_started(ray_server: RayServer, ray_run: RayRun) -> None:
    assert ray_run.processes()
    ray_server.process.send_signal(signal.SIGTERM)
    assert ray_server.process.wait(timeout=60) == 0
    wait_until(lambda: not ray_run.processes(), "every process of the run has exited", timeout=30)


def _listening_addresses(pids: set[int]) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets these processes listen on."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                found.add(_address(local))
    return found


def _address(hex_address: str) -> tuple[str, int]:
    """``/proc/net/tcp``'s "0100007F:1F90" as ("127.0.0.1", 8080); IPv6 as Linux writes it."""
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    # The kernel prints each 32-bit word in host (little-endian) order.
    ordered = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(ordered)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return f"::ffff:{address.ipv4_mapped}", int(port, 16)
    return str(address), int(port, 16)
