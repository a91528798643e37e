"""``sensevoice serve`` as registered with the CLI: flags map onto Settings, bad values are usage errors."""

from __future__ import annotations

import pytest

from sensevoice_serve import cli


def test_serve_flags_are_checked_by_settings(capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.build_parser().parse_args(["serve", "--port", "http", "--max-queue", "0"])
    assert args.handler(args) == 2
    errors = capsys.readouterr().err
    assert "--port (or SENSEVOICE_PORT): Input should be a valid integer" in errors
    assert "--max-queue (or SENSEVOICE_MAX_QUEUE): Input should be greater than or equal to 1" in errors


def test_unset_flags_leave_the_environment_and_defaults_in_charge() -> None:
    args = cli.build_parser().parse_args(["serve", "--api-key", "k", "--max-upload-mb", "1.5"])
    assert (args.api_key, args.max_upload_mb) == ("k", "1.5")
    assert args.model is None and args.port is None  # load_settings drops None: SENSEVOICE_* still apply


def test_supervision_is_a_switch_left_to_the_environment_when_unset() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["serve", "--no-supervise"]).supervise is False
    assert parser.parse_args(["serve", "--supervise"]).supervise is True
    assert parser.parse_args(["serve"]).supervise is None
