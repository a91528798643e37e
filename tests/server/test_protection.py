"""What keeps the server up: bad input, limits, overload, timeouts, keys, crashed decoders, shutdown."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from ..audio_fixtures import write_video_only
from ..conftest import shared_audio
from .conftest import LiveServer, RawUpload, launch, stopped, trickle, wait_ready, wait_until, wav

openai = pytest.importorskip("openai")

STRICT = {
    "api_key": "s3cret",
    "max_queue": 2,
    "max_upload_mb": 0.5,
    "max_duration_seconds": 5,
    "max_files_per_request": 2,
    "request_timeout_seconds": 4,
    "decode_workers": 1,
}


@pytest.fixture(scope="module")
def strict(start_server) -> LiveServer:
    return start_server(**STRICT)


def test_bad_files_get_4xx_and_never_disturb_others(
    server: LiveServer, speech: np.ndarray, tmp_path: Path, tiny_engine
) -> None:
    bad = {
        "empty.wav": b"",
        "truncated.mp3": shared_audio("hotwords.mp3").read_bytes()[:200],
        "random.mp3": np.random.default_rng(0).bytes(5000),
        "notes.txt": b"just some text, not audio at all\n" * 20,
        "video.mp4": write_video_only(tmp_path / "video.mp4").read_bytes(),
    }
    good = wav(speech[: 16000 * 3])
    [expected] = tiny_engine.transcribe(good)
    uploads = [*bad.items(), *(("good.wav", good),) * len(bad)]
    with ThreadPoolExecutor(len(uploads)) as pool:
        responses = list(pool.map(lambda upload: server.transcribe(upload[1], upload[0]), uploads))
    for (name, _), response in zip(uploads, responses, strict=True):
        if name == "good.wav":
            assert response.status_code == 200 and response.json()["text"] == expected.text
        else:
            assert response.status_code == 400, (name, response.text)
            assert response.json()["error"]["message"], name
    assert server.transcribe(good).status_code == 200


def test_api_key(strict: LiveServer) -> None:
    clip = wav(np.zeros(8000, dtype=np.float32))
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic s3cret"}):
        response = httpx.post(
            strict.url + "/v1/audio/transcriptions", files={"file": ("a.wav", clip)}, headers=headers
        )
        assert response.status_code == 401
        assert "API key" in response.json()["error"]["message"]
    assert httpx.get(strict.url + "/v1/models").status_code == 401
    assert strict.transcribe(clip).status_code == 200  # with the key
    for open_path in ("/health", "/ready", "/"):  # probes and the page (which asks for the key)
        assert httpx.get(strict.url + open_path).status_code == 200, open_path
    for private_path in (
        "/metrics",
        "/openapi.json",
    ):  # what runs here, and how, is the key holders' business
        assert httpx.get(strict.url + private_path).status_code == 401, private_path
        assert strict.get(private_path).status_code == 200, private_path
    client = openai.OpenAI(base_url=strict.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_metrics_and_api_description_can_be_opened_to_all(start_server) -> None:
    server = start_server(api_key="s3cret", public_metrics=True)
    for public_path in ("/metrics", "/openapi.json"):
        assert httpx.get(server.url + public_path).status_code == 200, public_path
    assert httpx.get(server.url + "/v1/models").status_code == 401


def test_upload_size_limit(strict: LiveServer) -> None:
    too_big = wav(np.zeros(16000 * 20, dtype=np.float32))  # 0.64 MB
    declared = strict.transcribe(too_big)  # Content-Length says so: refused before the body is read
    assert declared.status_code == 413 and "0.5 MB limit" in declared.json()["error"]["message"]
    undeclared = trickle(strict, too_big, seconds=0.2)  # chunked: counted while it streams in
    assert undeclared.status_code == 413 and "0.5 MB limit" in undeclared.json()["error"]["message"]
    assert undeclared.headers["Connection"] == "close"  # answered mid-upload: the rest is not awaited
    assert strict.metric("sensevoice_requests_in_progress") == 0


def test_duration_and_file_count_limits(strict: LiveServer, speech: np.ndarray) -> None:
    too_long = strict.transcribe(wav(speech[: 16000 * 6]))
    assert too_long.status_code == 413 and "5 s limit" in too_long.json()["error"]["message"]
    clip = ("a.wav", wav(speech[:16000]))
    too_many = strict.transcribe_native(clip, clip, clip)
    assert too_many.status_code == 400 and "limit is 2" in too_many.json()["error"]["message"]


def test_request_timeout_counts_from_the_end_of_the_upload(strict: LiveServer, speech: np.ndarray) -> None:
    clip = wav(speech[:16000])
    # Uploads have bounds of their own: one that takes longer than the 4 s request timeout is still served.
    assert trickle(strict, clip, seconds=5).status_code == 200
    with stopped(strict.decode_worker_pids()):  # the decoder never answers, so the request surely times out
        response = strict.transcribe(clip)
    assert response.status_code == 504
    assert "4 s timeout" in response.json()["error"]["message"]
    assert strict.transcribe(clip).status_code == 200
    assert strict.metric("sensevoice_requests_in_progress") == 0


@pytest.fixture(scope="module")
def single_decoder(start_server) -> LiveServer:
    return start_server(decode_workers=1, max_queue=2)


def test_saturated_queue_answers_503_with_retry_after(single_decoder: LiveServer, speech: np.ndarray) -> None:
    server, clip = single_decoder, wav(speech[: 16000 * 4])
    late = RawUpload(server, clip)  # uploading while places are free: uploads hold none
    late.send(300)
    with ThreadPoolExecutor(2) as clients, stopped(server.decode_worker_pids()):
        # Two requests wait for the frozen decoder, holding both places.
        held = [clients.submit(server.transcribe, clip) for _ in range(2)]
        wait_until(lambda: server.metric("sensevoice_requests_in_progress") == 2, "both places are taken")
        ready = httpx.get(server.url + "/ready")
        refused = server.transcribe(clip)  # refused before its upload is read
        late.send()  # an upload that completes while every place is taken
        late_status, late_body = late.response()
    late.close()
    assert all(future.result().status_code == 200 for future in held)
    assert ready.status_code == 503 and "busy" in ready.json()["reason"]
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert refused.headers["Connection"] == "close"
    assert "busy" in refused.json()["error"]["message"]
    assert late_status == 503 and late_body["error"]["code"] == "overloaded"
    assert httpx.get(server.url + "/ready").status_code == 200

    # A burst: some refused at once, every admitted one answered.
    with ThreadPoolExecutor(12) as burst:
        statuses = [r.status_code for r in burst.map(lambda _: server.transcribe(clip), range(12))]
    assert set(statuses) <= {200, 503} and 200 in statuses, statuses


def test_a_client_that_leaves_cancels_its_work(single_decoder: LiveServer, speech: np.ndarray) -> None:
    server, clip = single_decoder, wav(speech[:16000])
    with stopped(server.decode_worker_pids()):  # the upload waits in the decode pool until the client leaves
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/audio/transcriptions", files={"file": ("a.wav", clip)}, timeout=1)
        # Released while the decoder is still stuck.
        wait_until(lambda: server.metric("sensevoice_requests_in_progress") == 0, "the request is released")
        assert server.metric(
            "sensevoice_http_requests_total", endpoint="/v1/audio/transcriptions", status="499"
        )
    assert server.transcribe(clip).status_code == 200


def test_port_answers_at_once_then_sigterm_drains_in_flight_requests(
    tiny_model_dir: Path, speech: np.ndarray
) -> None:
    server = launch(tiny_model_dir)
    try:
        # The service is ready only once its decode workers have started (seconds: torch, the VAD): one
        # frozen the moment it appears keeps the server loading for as long as the test needs.
        wait_until(server.decode_worker_pids, "a decode worker is spawned")
        with stopped(server.decode_worker_pids()):
            wait_until(lambda: accepts_connections(server), "the port answers")
            health, ready = httpx.get(server.url + "/health"), httpx.get(server.url + "/ready")
            early = server.transcribe(wav(speech[:16000]))
        assert health.json() == {"status": "ok", "warm": False}
        assert ready.status_code == 503 and "loading" in ready.json()["reason"]
        assert early.status_code == 503 and early.headers["Retry-After"] == "1"
        assert early.json()["error"]["code"] == "model_loading"

        wait_ready(server)
        clip = wav(speech)
        with ThreadPoolExecutor(1) as client, stopped(server.decode_worker_pids()):
            decoding = client.submit(server.transcribe, clip)  # held in the frozen decoder
            uploading = RawUpload(server, clip)
            uploading.send(300)  # and one still uploading when the signal comes
            wait_until(lambda: server.metric("sensevoice_requests_in_progress") == 1, "one is decoding")
            wait_until(lambda: server.metric("sensevoice_uploads_in_progress") == 1, "one is uploading")
            server.process.send_signal(signal.SIGTERM)
            wait_until(lambda: not accepts_connections(server), "the server stops accepting connections")
            uploading.send()
        status, body = uploading.response()
        uploading.close()
        # Both were in flight before the signal: both are finished, not refused.
        assert decoding.result().status_code == 200 and decoding.result().json()["text"]
        assert status == 200 and body["text"]
        # uvicorn re-raises the signal once drained, so the exit is "terminated by SIGTERM", promptly.
        assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        server.stop()


def accepts_connections(server: LiveServer) -> bool:
    try:
        httpx.get(server.url + "/health")
    except httpx.TransportError:
        return False
    return True


def test_a_model_that_cannot_load_stops_the_server(tmp_path: Path) -> None:
    server = launch(tmp_path / "no-such-model")
    try:
        assert server.process.wait(timeout=60) == 1
    finally:
        server.stop()
    assert "no-such-model" in server.process.stderr.read().decode()
