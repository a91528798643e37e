"""The int8 path never imports torch: transcribing and serving with a cached int8 model stay ~230 MB and
a second of start-up lighter (issue 12's memory and cold-start targets rest on this)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sensevoice_serve.runtimes import int8_available

from .conftest import shared_audio

pytestmark = pytest.mark.skipif(not int8_available(), reason="the int8 runtime needs onnxruntime and onnx")

TRANSCRIBE = """
import sys
from sensevoice_serve.pipeline import SenseVoice

engine = SenseVoice.from_pretrained(sys.argv[1], device="cpu", dtype="int8", cache_dir=sys.argv[2])
(result,) = engine.transcribe(sys.argv[3], beam_size=2, hotwords=["Kennedy"])
assert result.duration > 10 and result.segments, result
print("torch" in sys.modules)
"""


@pytest.fixture(scope="module")
def int8_cache(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding the tiny model's int8 build (building it is the one int8 step that needs torch)."""
    from sensevoice_serve.pipeline import SenseVoice

    cache = tmp_path_factory.mktemp("int8-cache")
    SenseVoice.from_pretrained(tiny_model_dir, device="cpu", dtype="int8", cache_dir=cache)
    return cache


def test_int8_transcribes_without_importing_torch(tiny_model_dir: Path, int8_cache: Path) -> None:
    """The Python API; tests/server/test_int8_server.py checks the server's processes."""
    paths = [str(tiny_model_dir), str(int8_cache), str(shared_audio("jfk.flac"))]
    command = [sys.executable, "-c", TRANSCRIBE, *paths]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False", "torch was imported on the int8 path"


def test_onnxruntime_telemetry_is_off(tmp_path: Path) -> None:
    """onnxruntime 1.2x+ on Linux writes a device id and a session file (then uploads events) unless its
    telemetry is disabled before it loads: importing the package first must leave nothing behind."""
    script = (
        "import sensevoice_serve.runtimes.int8, onnxruntime, os; print(os.environ['ORT_DISABLE_TELEMETRY'])"
    )
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    assert list(tmp_path.rglob("*")) == []
