"""sensevoice-serve: fast, dependable SenseVoiceSmall inference."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["SenseVoice", "__version__"]

if TYPE_CHECKING:
    from .pipeline import SenseVoice


def __getattr__(name: str):
    # Lazy, so `sensevoice --help` and the error types do not pay for importing torch.
    if name == "SenseVoice":
        from .pipeline import SenseVoice

        return SenseVoice
    raise AttributeError(name)
