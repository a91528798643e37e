"""``sensevoice bench`` run as the CLI runs it, on the tiny checkpoint."""

from __future__ import annotations

import argparse
import contextlib
import io

from sensevoice_serve import bench


def run_command(argv: list[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="sensevoice")
    bench.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = args.handler(args)
    return code, output.getvalue()
