#!/usr/bin/env bash
# The project's test command (README, CI). Two phases prove the product does not need funasr:
# everything but the parity tests runs before the reference implementation is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1 MODELSCOPE_DISABLE_TELEMETRY=1
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/pip install -q -c constraints.txt -e '.[test,ray]'
.venv/bin/ruff check .
# The web page's browser test needs Debian's chromium and chromium-driver (tests never download anything).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  as_root=""
  [ "$(id -u)" = 0 ] || as_root="sudo -n"
  if command -v apt-get >/dev/null && $as_root true 2>/dev/null; then
    echo "== installing chromium and chromium-driver (apt-get) for tests/server/test_page.py"
    { $as_root apt-get update -qq && $as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq chromium chromium-driver; } >/dev/null \
      || echo "warning: apt-get could not install chromium: the browser test will skip" >&2
  else
    echo "warning: no chromium/chromedriver and no apt-get as root: tests/server/test_page.py will skip" >&2
  fi
fi
echo "== phase 1: product tests, funasr absent (on a fresh machine) and blocked from import (everywhere)"
SENSEVOICE_BLOCK_FUNASR=1 .venv/bin/python -m pytest -m "not parity" "$@"
echo "== phase 2: parity with the reference implementation (funasr); the ONNX export in sherpa-onnx"
.venv/bin/pip install -q -c constraints.txt -e '.[test,parity,bench]'
.venv/bin/python -m pytest -m "parity or bench" "$@"
