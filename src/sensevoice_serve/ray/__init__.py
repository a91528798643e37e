"""Beyond one machine, on Ray (the ``ray`` extra): the server as a Ray Serve application (``serve.py``),
bulk transcription as a Ray Data pipeline (``data.py``); ``command.py`` runs them for ``sensevoice serve
--ray`` and ``sensevoice transcribe --ray``.

``serve run sensevoice_serve.ray:app`` deploys the server with settings from SENSEVOICE_* variables; a Serve
config's ``import_path: sensevoice_serve.ray:build_app`` takes them as ``args``. Importing this package does
not import Ray: ``app`` and ``build_app`` load it when first used.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "build_app":
        from .serve import build_app

        return build_app
    if name == "app":
        from .serve import build_app

        return build_app({})
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
