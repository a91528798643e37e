"""Uploads are received apart from inference: a slow one holds its connection and nothing else, and has
bounds of its own (408)."""

from __future__ import annotations

import select

import pytest

from ..conftest import shared_audio
from .conftest import LiveServer, RawUpload, wait_until, wav

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
        assert upload.sent < len(upload.body)
    finally:
        upload.close()
    assert impatient.transcribe(wav(speech[:16000])).status_code == 200
