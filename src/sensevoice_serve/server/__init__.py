"""``sensevoice serve``: the HTTP server."""

from __future__ import annotations

import argparse
import logging

from ..settings import load_settings

logger = logging.getLogger(__name__)


def serve(settings) -> int:
    import uvicorn

    from .app import create_app

    app = create_app(settings)

    class DrainingServer(uvicorn.Server):
        """On SIGTERM/SIGINT, /ready turns 503 and new work is refused while in-flight requests finish."""

        def handle_exit(self, sig, frame) -> None:
            app.state.service.draining = True
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=None
    )
    DrainingServer(config).run()
    return 0


def _serve_command(args: argparse.Namespace) -> int:
    flags = {k: v for k, v in vars(args).items() if k not in {"command", "verbose", "handler"}}
    return serve(load_settings(**flags))


def register(commands) -> None:
    parser = commands.add_parser(
        "serve", help="run the HTTP server (OpenAI-compatible API, web page, metrics)"
    )
    parser.add_argument("--model", help="model directory or hub id")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", help="auto | fp32 | fp16 | bf16")
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY'")
    parser.add_argument("--max-queue", type=int, help="requests admitted at once (503 + Retry-After beyond)")
    parser.add_argument("--max-upload-mb", type=float, help="largest upload (413 above)")
    parser.add_argument("--max-duration-seconds", type=float, help="longest audio (413 above; default 7200)")
    parser.add_argument("--request-timeout-seconds", type=float, help="504 after this long")
    parser.add_argument("--decode-workers", type=int, help="decode processes (default: from the cores)")
    parser.add_argument("--torch-threads", type=int, help="torch threads (default: cores left by decoding)")
    parser.add_argument("--max-batch-frames", type=int, help="padded 60 ms frames per forward")
    parser.add_argument("--max-wait-ms", type=float, help="how long a lone request waits for batch company")
    parser.set_defaults(handler=_serve_command)
