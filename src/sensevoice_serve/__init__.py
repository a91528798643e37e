"""sensevoice-serve: fast, dependable SenseVoiceSmall inference."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

# onnxruntime (the int8 runtime) ships telemetry on Linux that, unless told otherwise before it loads,
# writes a device id and a session file and uploads usage events. This package talks to no one: off for this
# process and the processes it starts (decode workers, Ray workers), unless the user set it themselves.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
__all__ = ["SenseVoice", "__version__"]

if TYPE_CHECKING:
    from .pipeline import SenseVoice


def __getattr__(name: str):
    # Lazy, so `sensevoice --help` and the error types do not pay for loading a model runtime.
    if name == "SenseVoice":
        from .pipeline import SenseVoice

        return SenseVoice
    raise AttributeError(name)
