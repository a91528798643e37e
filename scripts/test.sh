#!/usr/bin/env bash
# The project's test command (README, CI). Two phases prove the product does not need funasr:
# everything but the parity tests runs before the reference implementation is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1 MODELSCOPE_DISABLE_TELEMETRY=1
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/pip install -q -c constraints.txt -e '.[test]'
.venv/bin/ruff check .
echo "== phase 1: product tests, funasr absent (on a fresh machine) and blocked from import (everywhere)"
SENSEVOICE_BLOCK_FUNASR=1 .venv/bin/python -m pytest -m "not parity" "$@"
echo "== phase 2: parity with the reference implementation (funasr); the ONNX export in sherpa-onnx"
.venv/bin/pip install -q -c constraints.txt -e '.[test,parity,bench]'
.venv/bin/python -m pytest -m "parity or bench" "$@"
