"""Shared fixtures: random checkpoints in the official layout and the real recordings in ../shared/audio."""

from __future__ import annotations

import importlib.abc
import os
import sys
from pathlib import Path

import pytest

SHARED_AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"
# Keep tests on loopback: no hub client may phone home.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


class _BlockFunasr(importlib.abc.MetaPathFinder):
    """Proves the product never imports the reference implementation: any attempt fails loudly."""

    def find_spec(self, name, path=None, target=None):
        if name == "funasr" or name.startswith("funasr."):
            raise ImportError("funasr is blocked: the product must not need it (SENSEVOICE_BLOCK_FUNASR=1)")
        return None


if os.environ.get("SENSEVOICE_BLOCK_FUNASR") == "1":
    sys.meta_path.insert(0, _BlockFunasr())


def shared_audio(name: str) -> Path:
    path = SHARED_AUDIO / name
    if not path.is_file():
        pytest.skip(f"{path} is missing (the shared recordings live beside the checkout)")
    return path


@pytest.fixture(scope="session", autouse=True)
def _int8_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """int8 models built by this run (``dtype auto`` is int8 on a VNNI CPU) go to one temporary cache,
    shared with the servers and commands the tests start, not to the user's."""
    os.environ.setdefault("SENSEVOICE_CACHE_DIR", str(tmp_path_factory.mktemp("sensevoice-cache")))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sensevoice_serve.random_checkpoint import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("tiny-model"), "tiny", seed=0)


@pytest.fixture(scope="session")
def full_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sensevoice_serve.random_checkpoint import write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("full-model"), "full", seed=0)


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path):
    from sensevoice_serve.pipeline import SenseVoice

    return SenseVoice.from_pretrained(tiny_model_dir, device="cpu", dtype="fp32")
