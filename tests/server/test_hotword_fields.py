"""Hotwords and beam size over HTTP: native form fields, OpenAI's ``extra_body``, server-wide defaults."""

from __future__ import annotations

import pytest

from sensevoice_serve.cli import main

from ..conftest import shared_audio
from .conftest import LiveServer

openai = pytest.importorskip("openai")

AUDIO = shared_audio("zh_sample.wav").read_bytes()


def _native(server: LiveServer, fields: dict) -> tuple[int, dict]:
    response = server.post("/v1/transcribe", files=[("files", ("zh.wav", AUDIO))], data=fields)
    return response.status_code, response.json()


def test_native_takes_beam_and_hotwords(server: LiveServer) -> None:
    status, body = _native(server, {"beam_size": "1"})
    assert status == 200, body
    greedy = body["results"][0]
    for fields in (
        {"beam_size": "4", "hotwords": "x,ab:2.5"},
        {"hotwords": ["x", "ab:2.5"], "hotword_score": "2"},  # repeated; beam 4 by default
    ):
        status, body = _native(server, fields)
        assert status == 200, body
        assert body["results"][0]["duration"] == greedy["duration"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"beam_size": "1", "hotwords": "x"}, "beam"),
        ({"hotwords": "x:loud"}, "boost"),
        ({"beam_size": "99"}, "beam_size"),
        ({"hotwords": "x", "hotword_score": "-1"}, "boost"),
    ],
)
def test_native_refuses_bad_options(server: LiveServer, fields: dict, message: str) -> None:
    status, body = _native(server, fields)
    assert status == 400
    assert message in body["error"]["message"]


@pytest.fixture(scope="module")
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="any", max_retries=0)


def _openai(client: openai.OpenAI, hotwords: object) -> str:
    with shared_audio("zh_sample.wav").open("rb") as audio:
        return client.audio.transcriptions.create(
            model="whisper-1", file=audio, response_format="text", extra_body={"hotwords": hotwords}
        )


@pytest.mark.parametrize("hotwords", [["ComfyUI:3", "张三"], "ComfyUI:3,张三"])
def test_openai_takes_hotwords_in_extra_body(client: openai.OpenAI, hotwords: object) -> None:
    assert isinstance(_openai(client, hotwords), str)


def test_openai_refuses_bad_hotwords(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="boost"):
        _openai(client, ["x:loud"])


def test_server_hotwords_apply_to_every_request(start_server) -> None:
    server = start_server(hotwords="ComfyUI:3,张三")
    assert _native(server, {})[0] == 200
    # The server's hotwords are in force: greedy decoding cannot take them.
    status, body = _native(server, {"beam_size": "1"})
    assert status == 400 and "beam" in body["error"]["message"]
    assert _native(server, {"beam_size": "2", "hotwords": "x"})[0] == 200  # a request's replace them


def test_serve_refuses_bad_hotwords_at_startup(capsys: pytest.CaptureFixture) -> None:
    assert main(["serve", "--hotwords", "x:loud", "--no-supervise"]) == 2
    assert "boost" in capsys.readouterr().err
