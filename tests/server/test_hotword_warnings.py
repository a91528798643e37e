"""A request's hotwords are compiled before its audio reaches an inference worker, and phrases the model
cannot write come back as warnings: in the native result, in a realtime ``error`` event. In process (the
app under Starlette's test client) so the engines' decoders can be watched; two CPU engines stand for two
GPUs."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from sensevoice_serve.decoding import DecodeOptions
from sensevoice_serve.server.app import create_app
from sensevoice_serve.server.service import Service
from sensevoice_serve.settings import load_settings

from ..conftest import shared_audio
from .conftest import wait_until

UNWRITABLE = "Ωμέγα"  # not in the tiny checkpoint's tokenizer
SKIPPED = f"hotword {UNWRITABLE!r} skipped: the model cannot write {UNWRITABLE!r}"


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path) -> Iterator[TestClient]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SENSEVOICE_PROFILE", os.devnull)
        settings = load_settings(
            model=str(tiny_model_dir), devices="cpu,cpu", dtype="fp32", decode_workers=1, torch_threads=1
        )
    with TestClient(create_app(settings)) as client:
        wait_until(lambda: client.get("/ready").status_code == 200, "the app is ready")
        yield client


def test_native_results_warn_of_skipped_hotwords_compiled_before_scoring(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached_when_scored: list[bool] = []
    for engine in client.app.state.service.engines:
        decoder, score = engine.decoder, engine.decoder.score

        def spy(encoded, lengths, options: list[DecodeOptions], decoder=decoder, score=score):
            cached_when_scored.extend(o.hotwords in decoder._graphs for o in options)
            return score(encoded, lengths, options)

        monkeypatch.setattr(decoder, "score", spy)
    audio = shared_audio("zh_sample.wav").read_bytes()
    response = client.post(
        "/v1/transcribe",
        files=[("files", ("a.wav", audio)), ("files", ("b.wav", audio))],
        data={"hotwords": f"{UNWRITABLE},ab:2"},
    )
    assert response.status_code == 200, response.text
    assert cached_when_scored and all(cached_when_scored)
    assert [result["warnings"] for result in response.json()["results"]] == [[SKIPPED], [SKIPPED]]


def test_realtime_session_update_reports_skipped_hotwords(client: TestClient) -> None:
    with client.websocket_connect("/v1/realtime?intent=transcription") as session:
        assert session.receive_json()["type"] == "session.created"
        transcription = {"hotwords": [UNWRITABLE, "ab"]}
        update = {"type": "session.update", "event_id": "update-1"}
        session.send_json({**update, "session": {"audio": {"input": {"transcription": transcription}}}})
        assert session.receive_json()["type"] == "session.updated"
        error = session.receive_json()["error"]
        assert (error["code"], error["event_id"]) == ("hotwords_skipped", "update-1")
        assert error["message"] == SKIPPED
        transcription = {"hotwords": ["ab"]}  # all writable: no warning
        session.send_json({**update, "session": {"audio": {"input": {"transcription": transcription}}}})
        session.send_json({"type": "input_audio_buffer.clear"})
        assert [session.receive_json()["type"] for _ in range(2)] == [
            "session.updated",
            "input_audio_buffer.cleared",
        ]


def test_server_hotwords_are_compiled_and_checked_at_startup(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SENSEVOICE_PROFILE", os.devnull)
    settings = load_settings(
        model=str(tiny_model_dir), hotwords=f"{UNWRITABLE},ab", decode_workers=1, torch_threads=1
    )
    service = Service(settings)
    with caplog.at_level(logging.WARNING, logger="sensevoice_serve.server.service"):
        service.start()
    try:
        assert service.ready
        assert settings.decode_options().hotwords in service.engine.decoder._graphs
        assert f"server hotwords: {SKIPPED}" in caplog.messages
    finally:
        service.stop()
