"""Uploads are received apart from inference: a slow one holds its connection and nothing else, and has
bounds of its own (408)."""

from __future__ import annotations

import select
from pathlib import Path

import pytest

from ..conftest import shared_audio
from .conftest import LiveServer, RawUpload, stopped, trickle, wait_until, wav

SLOW_UPLOADS = 100


@pytest.fixture(scope="module")
def patient(start_server) -> LiveServer:
    """Few inference places, and uploads that may take all the time they want."""
    return start_server(max_queue=2, decode_workers=1, upload_idle_timeout_seconds=600, upload_min_rate_kb=0)


@pytest.fixture(scope="module")
def impatient(start_server) -> LiveServer:
    return start_server(decode_workers=1, upload_idle_timeout_seconds=2, upload_min_rate_kb=1)


def test_slow_uploads_do_not_lock_out_other_requests(patient: LiveServer, speech) -> None:
    uploads = [RawUpload(patient, wav(speech[:16000])) for _ in range(SLOW_UPLOADS)]
    try:
        for upload in uploads:
            upload.send(300)  # the request's headers and the start of the file, then nothing for now
        wait_until(lambda: patient.metric("sensevoice_uploads_in_progress") == SLOW_UPLOADS, "all uploading")
        assert patient.get("/ready").status_code == 200
        response = patient.transcribe(shared_audio("jfk.flac").read_bytes(), "jfk.flac")
        assert response.status_code == 200, response.text
        for upload in uploads[:3]:  # a slow upload that does complete is answered like any other
            upload.send()
            assert upload.response()[0] == 200
    finally:
        for upload in uploads:
            upload.close()
    wait_until(lambda: patient.metric("sensevoice_uploads_in_progress") == 0, "the uploads are gone")
    assert patient.metric("sensevoice_requests_in_progress") == 0


def test_a_stalled_upload_gets_408_and_its_connection_closed(impatient: LiveServer, speech) -> None:
    upload = RawUpload(impatient, wav(speech[:16000]))
    try:
        upload.send(300)
        status, body = upload.response()
        assert status == 408 and body["error"]["message"] == "the upload sent nothing for 2 s"
        assert upload.response_headers["connection"] == "close"  # the rest of its body is not awaited
        upload.wait_closed()
    finally:
        upload.close()
    wait_until(lambda: impatient.metric("sensevoice_uploads_in_progress") == 0, "the upload is gone")


def test_an_upload_under_the_minimum_rate_gets_408(impatient: LiveServer, speech) -> None:
    """A byte every 0.1 s never stalls for the 2 s idle timeout, but averages far under 1 KB/s."""
    upload = RawUpload(impatient, wav(speech[:16000]))
    try:
        while not select.select([upload.socket], [], [], 0.1)[0]:
            upload.send(1)
        status, body = upload.response()
        assert status == 408 and "slower than this server's minimum of 1 KB/s" in body["error"]["message"]
        assert upload.response_headers["connection"] == "close"
        assert upload.sent < len(upload.body)
    finally:
        upload.close()
    assert impatient.transcribe(wav(speech[:16000])).status_code == 200


def test_an_upload_is_written_once_to_the_file_its_decoder_reads(patient: LiveServer, speech) -> None:
    """No spooled copy, no copy for the decoder: while the upload streams in and while it is decoded, the
    server's temp directory holds one file, the upload's, growing as its bytes come."""
    clip = wav(speech[: 16000 * 40])  # 1.3 MB: over the 1 MB that a spooled temporary file keeps in memory
    upload = RawUpload(patient, clip)
    try:
        upload.send(1_200_000)
        wait_until(
            lambda: temp_files(patient) and temp_files(patient)[0].stat().st_size > 1_100_000, "written"
        )
        [written] = temp_files(patient)
        assert patient.metric("sensevoice_upload_temp_bytes") == written.stat().st_size
        with stopped(patient.decode_worker_pids()):
            upload.send()
            wait_until(lambda: patient.metric("sensevoice_requests_in_progress") == 1, "it is decoding")
            assert temp_files(patient) == [written]  # the decoder reads the upload's own file
            assert written.stat().st_size == len(clip)
        assert upload.response()[0] == 200
    finally:
        upload.close()
    assert temp_files(patient) == [] and patient.metric("sensevoice_upload_temp_bytes") == 0


def temp_files(server: LiveServer) -> list[Path]:
    """Every file under the server's TMPDIR (the decode pool's directory is a folder there)."""
    return sorted(path for path in server.temp_dir.rglob("*") if path.is_file())


def test_uploads_beyond_the_temp_space_get_503(start_server, speech) -> None:
    server = start_server(max_upload_mb=0.5, max_upload_temp_mb=1, decode_workers=1)
    clip = wav(speech[: int(16000 * 14)])  # 0.45 MB
    held = [RawUpload(server, clip) for _ in range(2)]
    try:
        for upload in held:
            upload.send(400_000)
        wait_until(lambda: server.metric("sensevoice_upload_temp_bytes") >= 790_000, "0.8 MB held")
        declared = server.transcribe(clip)  # its Content-Length does not fit: refused before its body
        undeclared = trickle(server, clip, seconds=0.2)  # chunked: refused when it no longer fits
        for upload in held:
            upload.send()
            assert upload.response()[0] == 200
    finally:
        for upload in held:
            upload.close()
    for response in (declared, undeclared):
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        assert "1 MB of temporary space" in response.json()["error"]["message"]
    assert server.metric("sensevoice_upload_temp_bytes") == 0
    assert server.transcribe(clip).status_code == 200


@pytest.mark.parametrize(
    ("fields", "files", "status", "message"),
    [
        ({}, [("audio", b"RIFF")], 400, "file: Field required"),  # a file under another name
        ({}, [("file", b"RIFF"), ("file", b"RIFF")], 400, "too many files in one request: the limit is 1"),
        ({"response_format": "xml"}, [("file", b"RIFF")], 400, "response_format: Input should be"),
        ({"timestamp_granularities[]": "page"}, [("file", b"RIFF")], 400, "timestamp_granularities[].0"),
        ({"temperature": "warm"}, [("file", b"RIFF")], 400, "temperature: Input should be a valid number"),
        ({"prompt": "x" * 70_000}, [("file", b"RIFF")], 400, "'prompt' is over 64 KB"),
    ],
)
def test_openai_form_problems_get_400(server: LiveServer, fields, files, status, message) -> None:
    response = server.post(
        "/v1/audio/transcriptions", data=fields, files=[(name, ("a.wav", data)) for name, data in files]
    )
    assert response.status_code == status and message in response.json()["error"]["message"]
    assert temp_files(server) == []


def test_malformed_multipart_bodies_get_400(server: LiveServer, speech) -> None:
    upload = RawUpload(server, wav(speech[:16000]))
    upload.close()
    truncated = upload.body[:-60]  # the closing boundary (and a little more) never comes
    response = server.post(
        "/v1/audio/transcriptions",
        content=truncated,
        headers={"Content-Type": upload.content_type},
    )
    assert response.status_code == 400
    assert "ended before its closing boundary" in response.json()["error"]["message"]
    no_boundary = server.post("/v1/transcribe", content=b"x", headers={"Content-Type": "multipart/form-data"})
    assert no_boundary.status_code == 400 and "no boundary" in no_boundary.json()["error"]["message"]
    assert temp_files(server) == []


def test_openai_fields_that_are_accepted_and_ignored(server: LiveServer) -> None:
    jfk = shared_audio("jfk.flac").read_bytes()
    plain = server.transcribe(jfk, "jfk.flac")
    ignored = server.transcribe(jfk, "jfk.flac", model="whisper-1", prompt="Ask not", temperature="0.2")
    assert ignored.status_code == 200 and ignored.json() == plain.json()


def test_native_form_problems_get_400(server: LiveServer, speech) -> None:
    clip = ("a.wav", wav(speech[:16000]))
    not_a_flag = server.transcribe_native(clip, use_itn="maybe")
    assert not_a_flag.status_code == 400
    assert "use_itn: Input should be a valid boolean" in not_a_flag.json()["error"]["message"]
    nothing = server.post("/v1/transcribe", data={"language": "en"})  # not even multipart
    assert nothing.status_code == 400 and nothing.json()["error"]["message"] == "files: Field required"


def test_openapi_describes_the_multipart_forms(server: LiveServer) -> None:
    paths = server.get("/openapi.json").json()["paths"]
    openai_form = paths["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]["multipart/form-data"]
    native_form = paths["/v1/transcribe"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert openai_form["schema"]["properties"]["file"] == {"type": "string", "format": "binary"}
    assert openai_form["schema"]["required"] == ["file"]
    assert openai_form["schema"]["properties"]["response_format"]["default"] == "json"
    assert native_form["schema"]["properties"]["files"]["type"] == "array"
    assert "split_channels" in native_form["schema"]["properties"]
