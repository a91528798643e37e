"""``sensevoice serve``: the HTTP server. Importing this package stays cheap (the CLI imports it to register
the subcommand); the app and its dependencies load when the command runs.

By default the command is a supervisor (``supervisor.py``) that binds the port and runs the server itself
in a child process, started as ``serve --listen-fd N --lifeline-fd M``; ``--no-supervise`` serves in this
process."""

from __future__ import annotations

import argparse
import socket
import sys

from pydantic import ValidationError

from ..errors import SenseVoiceError
from ..settings import Settings, load_settings

EXIT_OK, EXIT_LOAD_FAILED, EXIT_USAGE = 0, 1, 2
# Settings exposed as flags; each also reads SENSEVOICE_<NAME>. Values are parsed and checked by Settings.
SERVE_FLAGS = (
    "model", "host", "port", "device", "devices", "dtype", "api_key", "max_queue", "max_upload_mb",
    "max_duration_seconds", "request_timeout_seconds", "max_files_per_request", "decode_workers",
    "torch_threads", "max_batch_frames", "batch_size", "max_wait_ms", "language", "vad", "supervise",
    "realtime_max_sessions", "realtime_partial_interval_ms", "realtime_max_utterance_seconds",
    "realtime_max_buffer_seconds", "realtime_idle_timeout_seconds", "ray", "replicas", "ray_address",
    "max_uploads", "max_upload_temp_mb", "upload_idle_timeout_seconds", "upload_min_rate_kb",
    "header_timeout_seconds", "decode_timeout_seconds", "public_metrics", "beam_size", "hotwords",
    "hotwords_file", "hotword_score",
)  # fmt: skip


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve",
        help="run the HTTP server (OpenAI-compatible API, native API, web page, metrics)",
        description="Every flag can also be set with a SENSEVOICE_<FLAG> environment variable.",
    )
    for name in SERVE_FLAGS:
        field = Settings.model_fields[name]
        default = "" if field.default is None else f" (default: {field.default})"
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            help=f"{field.description or name.replace('_', ' ')}{default}",
            # --supervise / --no-supervise; unset (None) leaves the environment in charge, as for the others.
            **({"action": argparse.BooleanOptionalAction} if field.annotation is bool else {}),
        )
    # How a supervisor starts the serving process: the socket to serve on, the pipe whose closing says
    # that the supervisor is gone.
    parser.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--lifeline-fd", type=int, help=argparse.SUPPRESS)
    parser.set_defaults(handler=_serve_command)


def _serve_command(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(**{name: getattr(args, name) for name in SERVE_FLAGS})
    except ValidationError as error:
        for problem in error.errors():
            name = str(problem["loc"][0])
            flag = f"--{name.replace('_', '-')} (or SENSEVOICE_{name.upper()})"
            print(f"error: {flag}: {problem['msg']}", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings.decode_options()  # the server-wide hotwords: refused now, not in every request
    except SenseVoiceError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.listen_fd is not None:
        from .supervisor import exit_with_supervisor

        if args.lifeline_fd is not None:
            exit_with_supervisor(args.lifeline_fd)
        from .runner import serve

        return serve(settings, socket.socket(fileno=args.listen_fd))
    if settings.ray:  # Ray restarts replicas itself: no supervisor
        from ..ray.command import run_serve

        return run_serve(settings)
    if settings.supervise:
        from .supervisor import supervise

        return supervise(settings)
    from .runner import serve

    return serve(settings)
