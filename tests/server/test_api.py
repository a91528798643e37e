"""The APIs as clients use them: the official openai client, plain multipart, and the native endpoint."""

from __future__ import annotations

import pytest
import srt
import webvtt

from ..conftest import shared_audio
from .conftest import LiveServer, wav

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="any", max_retries=0)


@pytest.fixture(scope="module")
def native_jfk(server: LiveServer) -> dict:
    response = server.transcribe_native(("jfk.flac", shared_audio("jfk.flac").read_bytes()))
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


def _openai_transcribe(client: openai.OpenAI, response_format: str, **extra: object):
    with shared_audio("jfk.flac").open("rb") as audio:
        return client.audio.transcriptions.create(
            model="whisper-1", file=audio, response_format=response_format, **extra
        )


def test_openai_json(client: openai.OpenAI, native_jfk: dict) -> None:
    result = _openai_transcribe(client, "json")
    assert result.text == native_jfk["text"] and result.text
    assert result.usage.seconds == 11


def test_openai_text(client: openai.OpenAI, native_jfk: dict) -> None:
    assert _openai_transcribe(client, "text").strip() == native_jfk["text"]


@pytest.mark.parametrize("response_format", ["srt", "vtt"])
def test_openai_subtitles(client: openai.OpenAI, native_jfk: dict, response_format: str) -> None:
    body = _openai_transcribe(client, response_format)
    if response_format == "srt":
        cues = [(c.start.total_seconds(), c.end.total_seconds(), c.content) for c in srt.parse(body)]
    else:
        cues = [(c.start_in_seconds, c.end_in_seconds, c.text) for c in webvtt.from_string(body)]
    assert cues[0][0] == 0 and cues[-1][1] == pytest.approx(11.0, abs=0.1)
    assert "".join(text for *_, text in cues).replace(" ", "") == native_jfk["text"].replace(" ", "")


def test_openai_verbose_json_with_words(client: openai.OpenAI, native_jfk: dict) -> None:
    result = _openai_transcribe(client, "verbose_json", timestamp_granularities=["word", "segment"])
    assert result.duration == pytest.approx(11.0, abs=0.1)
    assert result.text == native_jfk["text"]
    [segment] = result.segments
    assert (segment.id, segment.start, segment.end) == (0, 0.0, pytest.approx(11.0, abs=0.1))
    assert segment.tokens == [t["id"] for t in native_jfk["segments"][0]["tokens"]]
    # Words are whole words (sentencepiece pieces joined), in order, with times inside the audio.
    assert "".join(w.word for w in result.words).replace(" ", "") == result.text.replace(" ", "")
    assert all(" " not in w.word and 0 <= w.start <= w.end <= 11.1 for w in result.words)
    assert [w.start for w in result.words] == sorted(w.start for w in result.words)


def test_openai_long_upload_is_segmented(client: openai.OpenAI, speech) -> None:
    """47 s of speech, over the 30 s cap: the VAD splits it, and the formats follow the segments."""
    upload = ("speech.wav", wav(speech))
    result = client.audio.transcriptions.create(
        model="whisper-1", file=upload, response_format="verbose_json"
    )
    assert result.duration == pytest.approx(len(speech) / 16000, abs=0.01)
    assert len(result.segments) >= 2
    assert all(0 <= s.start < s.end <= result.duration and s.end - s.start <= 30.001 for s in result.segments)
    assert [s.start for s in result.segments] == sorted(s.start for s in result.segments)
    subtitles = client.audio.transcriptions.create(model="whisper-1", file=upload, response_format="srt")
    cues = list(srt.parse(subtitles))
    assert cues and cues[-1].end.total_seconds() <= result.duration


def test_openai_verbose_json_without_words(client: openai.OpenAI) -> None:
    result = _openai_transcribe(client, "verbose_json")
    assert result.segments and getattr(result, "words", None) is None


def test_openai_client_sees_errors_and_models(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="not a recognised audio") as caught:
        client.audio.transcriptions.create(model="whisper-1", file=("x.mp3", b"garbage" * 100))
    assert caught.value.code == "audio_decode"
    with pytest.raises(openai.BadRequestError, match="unsupported language 'fr'"):
        _openai_transcribe(client, "json", language="fr")
    with pytest.raises(openai.BadRequestError, match="response_format"):
        _openai_transcribe(client, "xml")
    assert [m.id for m in client.models.list()] == ["sensevoice-small"]


def test_errors_have_openai_shape(server: LiveServer) -> None:
    missing_file = server.post("/v1/audio/transcriptions", data={"model": "whisper-1"})
    not_found = server.get("/v1/nothing-here")
    wrong_method = server.get("/v1/transcribe")
    for response, status in ((missing_file, 400), (not_found, 404), (wrong_method, 405)):
        assert response.status_code == status
        error = response.json()["error"]
        assert error["message"] and error["type"] == "invalid_request_error" and error["code"]
    assert "file" in missing_file.json()["error"]["message"]


def test_native_endpoint_rich_result_and_options(server: LiveServer, native_jfk: dict, tiny_engine) -> None:
    assert native_jfk["source"] == "jfk.flac" and native_jfk["duration"] == pytest.approx(11.0, abs=0.01)
    for key in ("language", "emotion", "emotion_prob", "event", "itn", "raw_text", "emoji_text", "warnings"):
        assert key in native_jfk
    assert set(native_jfk["timings"]) == {"decode", "queue", "inference", "features", "model", "decoding"}
    assert all(value >= 0 for value in native_jfk["timings"].values())
    assert native_jfk["segments"][0]["tokens"][0].keys() == {"id", "text", "start", "end"}

    options = {"language": "en", "use_itn": False, "ban_emo_unk": True}
    response = server.transcribe_native(
        ("jfk.flac", shared_audio("jfk.flac").read_bytes()), **{k: str(v) for k, v in options.items()}
    )
    [expected] = tiny_engine.transcribe(shared_audio("jfk.flac"), **options)
    assert response.json()["results"][0]["raw_text"] == expected.raw_text != native_jfk["raw_text"]


def test_native_endpoint_segmentation_options(server: LiveServer) -> None:
    jfk = ("jfk.flac", shared_audio("jfk.flac").read_bytes())
    response = server.transcribe_native(jfk, max_segment_seconds="4")
    assert response.status_code == 200, response.text
    segments = response.json()["results"][0]["segments"]
    assert len(segments) >= 3  # 11 s of speech under a 4 s cap
    assert all(segment["end"] - segment["start"] <= 4.001 for segment in segments)

    refused = server.transcribe_native(jfk, max_segment_seconds="0.5")
    assert refused.status_code == 400
    assert "between 1 and 600 seconds" in refused.json()["error"]["message"]
    over_the_servers_cap = server.transcribe_native(jfk, max_segment_seconds="60")
    assert over_the_servers_cap.status_code == 400
    assert "at most this server's 30" in over_the_servers_cap.json()["error"]["message"]


def test_native_endpoint_several_files_one_bad(server: LiveServer, speech) -> None:
    response = server.transcribe_native(
        ("a.wav", wav(speech[:16000])), ("notes.txt", b"not audio\n" * 50), ("b.wav", wav(speech[:32000]))
    )
    assert response.status_code == 200
    first, bad, second = response.json()["results"]
    assert (first["status"], bad["status"], second["status"]) == (200, 400, 200)
    assert bad["source"] == "notes.txt" and "not a recognised audio" in bad["error"]["message"]
    assert first["duration"] == 1.0 and second["duration"] == 2.0


def test_decoded_uploads_leave_no_spill_files(server: LiveServer, speech) -> None:
    """Samples come back from the decode workers through files: none may outlive its request."""
    response = server.transcribe_native(("a.wav", wav(speech)), ("bad.mp3", b"not audio" * 100))
    assert [entry["status"] for entry in response.json()["results"]] == [200, 400]
    # The supervisor gives its serving process a temp directory of its own inside the server's TMPDIR.
    spill_dirs = list(server.temp_dir.glob("sensevoice-serve-*/sensevoice-uploads-*"))
    assert spill_dirs
    assert [path for directory in spill_dirs for path in directory.iterdir()] == []


def test_native_endpoint_only_bad_files_is_an_error(server: LiveServer) -> None:
    response = server.transcribe_native(("empty.wav", b""))
    assert response.status_code == 400
    assert "empty" in response.json()["error"]["message"]


def test_metrics_count_requests_by_endpoint_and_status(server: LiveServer) -> None:
    before = server.metric(
        "sensevoice_http_requests_total", endpoint="/v1/audio/transcriptions", status="400"
    )
    server.transcribe(b"", "empty.wav")
    server.get("/v1/some/random/path")
    after = server.metric("sensevoice_http_requests_total", endpoint="/v1/audio/transcriptions", status="400")
    assert after == before + 1
    assert server.metric("sensevoice_http_requests_total", endpoint="unmatched", status="404") >= 1
    for name in ("decode", "queue", "inference"):
        assert server.metric(f"sensevoice_{name}_seconds_count") > 0
    assert server.metric("sensevoice_audio_seconds_total") > 0
    assert (
        server.metric("sensevoice_queue_depth") == 0 and server.metric("sensevoice_requests_in_progress") == 0
    )


def test_health_ready_and_page(server: LiveServer) -> None:
    assert server.get("/health").json() == {"status": "ok", "warm": True}
    assert server.get("/ready").json() == {"status": "ready"}
    assert "/v1/audio/transcriptions" in server.get("/openapi.json").json()["paths"]
    assert server.get("/docs").status_code == 404  # Swagger UI would load its scripts from a CDN
    page = server.get("/").text
    assert "<form" in page and "v1/transcribe" in page
    # Nothing fetched from elsewhere: the page works with no internet.
    assert not any(url in page for url in ("http://", "https://", '="//', "url("))
