"""A server started with ``SENSEVOICE_DTYPE=int8`` answers both APIs through the int8 runtime."""

from __future__ import annotations

from pathlib import Path

import pytest

from sensevoice_serve.runtimes import int8_available

from ..conftest import shared_audio

pytestmark = pytest.mark.skipif(not int8_available(), reason="the int8 runtime needs onnxruntime and onnx")


def test_an_int8_server_answers_the_openai_and_native_apis(
    start_server, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cache = tmp_path_factory.mktemp("int8-cache")
    server = start_server(dtype="int8", cache_dir=cache)
    jfk = Path(shared_audio("jfk.flac")).read_bytes()
    openai = server.transcribe(jfk, name="jfk.flac", response_format="verbose_json")
    assert openai.status_code == 200, openai.text
    assert openai.json()["duration"] == pytest.approx(11.0, abs=0.1)
    native = server.transcribe_native(("jfk.flac", jfk))
    assert native.status_code == 200, native.text
    assert [entry for entry in (cache / "int8").iterdir() if entry.is_dir()]
