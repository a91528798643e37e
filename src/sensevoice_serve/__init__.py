"""sensevoice-serve: fast, dependable SenseVoiceSmall inference."""

__version__ = "0.1.0"
