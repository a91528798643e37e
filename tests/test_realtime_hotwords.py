"""Hotwords and beam size as SenseVoice extras of a realtime session's transcription settings."""

from __future__ import annotations

import pytest

from sensevoice_serve.hotwords import Hotword
from sensevoice_serve.realtime.protocol import RealtimeError, SessionSettings, SessionUpdate
from sensevoice_serve.realtime.session import Limits
from sensevoice_serve.settings import Settings

from .test_realtime_session import Client


def _updated(transcription: dict, settings: SessionSettings | None = None) -> SessionSettings:
    event = {"type": "session.update", "session": {"audio": {"input": {"transcription": transcription}}}}
    return SessionUpdate.model_validate(event).applied_to(settings or SessionSettings())


def test_session_update_carries_hotwords_and_beam() -> None:
    settings = _updated({"hotwords": ["ComfyUI:3", "张三"]})
    assert settings.transcription.hotwords == ("ComfyUI:3", "张三")
    assert settings.transcription.to_json()["hotwords"] == ("ComfyUI:3", "张三")
    settings = _updated({"language": "zh"}, settings)  # a later update keeps them
    assert settings.transcription.hotwords == ("ComfyUI:3", "张三")
    assert _updated({"beam_size": 8}, settings).transcription.beam_size == 8
    assert "hotwords" not in SessionSettings().transcription.to_json()  # OpenAI's shape until set


@pytest.mark.parametrize("transcription", [{"hotwords": ["x:loud"]}, {"hotwords": ["x"], "beam_size": 1}])
def test_session_update_refuses_bad_hotwords(transcription: dict) -> None:
    with pytest.raises(RealtimeError, match="boost|beam"):
        _updated(transcription)


def test_session_hotwords_reach_decoding_over_the_servers() -> None:
    client = Client(Limits())
    client.session._defaults = Settings(hotwords="server").decode_options()
    assert client.session._options().hotwords == (Hotword("server", 1.5),)
    client.session.settings = _updated({"hotwords": ["ComfyUI:3"], "language": "zh"})
    options = client.session._options()
    assert options.hotwords == (Hotword("ComfyUI", 3.0),) and options.beam_size == 4
    assert options.language == "zh"
