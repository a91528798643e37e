#!/usr/bin/env bash
# The GPU check of issue 14, in one command on a fresh GPU machine: install the project beside the machine's
# own CUDA torch (never replacing it), write a full-size RANDOM checkpoint, run `pytest -m gpu`, `sensevoice
# bench` in bf16 and fp32, and funasr's AutoModel on the same GPU as the baseline. Every step is time-boxed
# within one budget; a failing step is recorded and the next one runs. OUTDIR gets report.md (it starts
# with what ran and what did not), report.json and log.txt, rewritten after every step.
#
#   scripts/gpu-check.sh --prepare   here, online: .gpu-bundle/ = the wheels the GPU machine lacks (for its
#                                    Python) and a copy of ../shared/audio; carry it with the run
#   scripts/gpu-check.sh OUTDIR      on the GPU machine (README.md, "GPU check", has the exact device call)
#
# Environment:
#   GPU_CHECK_ALLOW_CPU=1      no GPU: rehearse every step on the CPU with tiny settings instead of failing
#   GPU_CHECK_PYTHON           the interpreter that holds torch (default python3)
#   GPU_CHECK_BUDGET_S         seconds for the whole check; each step's limit is cut to fit (default 450)
#   GPU_CHECK_BUNDLE           the bundle folder (default .gpu-bundle in the checkout)
#   GPU_CHECK_WORK             scratch folder (default a new one under TMPDIR)
#   GPU_CHECK_PYTHON_VERSION   --prepare: the GPU machine's Python version (default 3.12)
#   GPU_CHECK_PREP_PYTHON      --prepare: whose pip downloads, and whose installed versions are pinned
#                              (default .venv/bin/python, the environment the tests run in here)
set -uo pipefail # no -e: a failing step is recorded and the check goes on

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUNDLE=$(realpath -m "${GPU_CHECK_BUNDLE:-$ROOT/.gpu-bundle}")
PYTHON=${GPU_CHECK_PYTHON:-python3}
REPORT_SCRIPT=$ROOT/scripts/gpu_report.py
BUDGET_S=${GPU_CHECK_BUDGET_S:-450}
RESERVE_S=10           # kept back from every step for the final report
MIN_STEP_S=20          # a step that would get less is skipped, not started
LOG_TAIL_BYTES=200000  # of each output stream, into log.txt

# What the GPU machine's image lacks of the project's runtime dependencies (device README, KINDS.md), and
# what those need in turn; pinned by --prepare to the versions installed here.
PRODUCT_WHEELS=(av soundfile cffi pycparser pydantic pydantic-core annotated-types typing-inspection
  typing-extensions pydantic-settings python-dotenv fastapi starlette annotated-doc uvicorn python-multipart
  silero-vad)
# funasr's AutoModel for SenseVoiceSmall, installed without dependencies: these are the modules its import
# and inference reach that the image lacks (scipy, numba, scikit-learn, tiktoken, six, requests,
# lazy_loader are there); the rest of funasr's long requirement list is never imported on this path.
BASELINE_WHEELS=(funasr==1.4.16 omegaconf==2.4.0 kaldiio==2.18.1 librosa==0.11.0 rapidfuzz==3.14.6)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
  manylinux1_x86_64)
TREE_LIMIT_BYTES=$((64 * 1024 * 1024)) # what one device call may carry, tree and bundle together

usage() {
  sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 2
}

prepare() {
  local version=${GPU_CHECK_PYTHON_VERSION:-3.12}
  local prep_python=${GPU_CHECK_PREP_PYTHON:-$ROOT/.venv/bin/python}
  local download=("$prep_python" -m pip download --no-deps --only-binary=:all: --python-version "$version"
    --implementation cp --disable-pip-version-check -q)
  local platform
  for platform in "${PLATFORMS[@]}"; do download+=(--platform "$platform"); done
  rm -rf "$BUNDLE" && mkdir -p "$BUNDLE/wheels/product" "$BUNDLE/wheels/baseline" "$BUNDLE/audio" || exit 1

  local pins
  pins=$("$prep_python" -c 'import sys; from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))' "${PRODUCT_WHEELS[@]}") || {
    echo "error: $prep_python lacks one of ${PRODUCT_WHEELS[*]}: install the project there first" >&2
    exit 1
  }
  echo "downloading for CPython $version: $pins" >&2
  # shellcheck disable=SC2086 # pins: one word per requirement
  "${download[@]}" -d "$BUNDLE/wheels/product" $pins || { echo "error: product wheels failed" >&2; exit 1; }
  echo "downloading the funasr baseline: ${BASELINE_WHEELS[*]}" >&2
  if ! "${download[@]}" -d "$BUNDLE/wheels/baseline" "${BASELINE_WHEELS[@]}"; then
    rm -f "$BUNDLE"/wheels/baseline/*.whl
    echo "no funasr baseline wheels for CPython $version: the check will skip the baseline" >&2
  fi
  cp "$ROOT/../shared/audio/"* "$BUNDLE/audio/" || { echo "error: no ../shared/audio to copy" >&2; exit 1; }
  write_manifest "$version"
  check_carry_size
}

write_manifest() {
  {
    echo "GPU check bundle for CPython $1 on x86-64 manylinux, made $(date -u +%FT%TZ) by scripts/gpu-check.sh --prepare"
    (cd "$BUNDLE" && find wheels audio -type f -printf '%s\t%p\n' | sort -k2)
  } >"$BUNDLE/MANIFEST.txt"
}

check_carry_size() {
  local tree bundle
  tree=$(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null |
    tail -1 | cut -f1)
  bundle=$(du -sb "$BUNDLE" | cut -f1)
  awk -v b="$bundle" -v t="$tree" 'BEGIN { printf "bundle %.1f MiB + working tree %.1f MiB = %.1f MiB of the 64 MiB a device call carries\n", b / 2^20, t / 2^20, (b + t) / 2^20 }' >&2
  if ((tree + bundle > TREE_LIMIT_BYTES)); then
    echo "error: too big to carry: drop the baseline wheels (rm -r $BUNDLE/wheels/baseline) or shrink the tree" >&2
    exit 1
  fi
}

# ------------------------------------------------------------------------------------------ the check

render() {
  "$PYTHON" "$REPORT_SCRIPT" render --work "$WORK" --out "$OUT" || echo "warning: the report failed to render" >&2
}

record() { # NAME STATUS [report.py step options...]
  local name=$1 status=$2
  shift 2
  "$PYTHON" "$REPORT_SCRIPT" step --work "$WORK" --name "$name" --status "$status" "$@"
  render
}

skip_step() { # NAME WHY
  printf '\n== %s: skipped (%s)\n' "$1" "$2" | tee -a "$LOG" >&2
  record "$1" skipped --note "$2"
}

run_step() { # NAME MAX_SECONDS COMMAND...: stdout to out/NAME.out, stderr to out/NAME.err, both into log.txt
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE - $(date +%s) - RESERVE_S))
  if ((left < MIN_STEP_S)); then
    skip_step "$name" "out of time: ${left} s left of the ${BUDGET_S} s budget"
    return 1
  fi
  ((limit > left)) && limit=$left
  printf '\n== %s (at most %s s): %s\n' "$name" "$limit" "$*" | tee -a "$LOG" >&2
  local started rc status seconds note=""
  started=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@" >"$WORK/out/$name.out" 2>"$WORK/out/$name.err"
  rc=$?
  seconds=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  case $rc in
    0) status=ok ;;
    124 | 137) status=timeout note="stopped at its ${limit} s limit" ;;
    *) status=failed ;;
  esac
  {
    tail -c "$LOG_TAIL_BYTES" "$WORK/out/$name.out"
    echo "-- stderr"
    tail -c "$LOG_TAIL_BYTES" "$WORK/out/$name.err"
  } >>"$LOG"
  echo "   $name: $status (exit $rc, $seconds s)" | tee -a "$LOG" >&2
  record "$name" "$status" --rc "$rc" --seconds "$seconds" --limit "$limit" --note "$note" --command "$*"
  return "$rc"
}

gpu_settings() {
  MODE=gpu DEVICE=cuda MODEL_SIZE=full CLIP_SECONDS=5,10,30 CONCURRENCY=1,4,16,64 REQUESTS=20 REPEATS=5
  BENCH_DTYPES=(bf16 fp32) OUR_DTYPES=fp32,bf16
}

cpu_rehearsal_settings() { # the same steps, small enough for a CPU (half precision is for GPUs)
  MODE=cpu-rehearsal DEVICE=cpu MODEL_SIZE=tiny CLIP_SECONDS=5 CONCURRENCY=1,2 REQUESTS=2 REPEATS=1
  BENCH_DTYPES=(fp32) OUR_DTYPES=fp32
}

# shellcheck disable=SC2016 # expanded by the bash that runs it, where $0 is the interpreter
MACHINE_INFO='date -u; uname -srm; nproc; free -g | head -2
if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi: not found"; fi
"$0" -c "import platform, torch; print(\"python\", platform.python_version(), \"torch\", torch.__version__,
\"cuda\", torch.version.cuda, torch.__file__)"'

IMPORTS_CHECK='import importlib, sys, torch
assert not torch.__file__.startswith(sys.argv[1]), f"torch came from the wheelhouse: {torch.__file__}"
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.__file__)
for name in sys.argv[2:]:
    module = importlib.import_module(name)
    print(name, getattr(module, "__version__", ""), module.__file__)'

install_project() { # from a copy, so that the build leaves nothing in the checkout
  mkdir -p "$WORK/project/src" &&
    cp -r "$ROOT/pyproject.toml" "$ROOT/README.md" "$WORK/project/" &&
    cp -r "$ROOT/src/sensevoice_serve" "$WORK/project/src/" &&
    run_step install-project 90 "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation \
      --no-compile --disable-pip-version-check --target "$SITE" "$WORK/project"
}

install_wheels() { # STEP FOLDER
  local wheels=("$BUNDLE/wheels/$2"/*.whl)
  if [[ ! -e ${wheels[0]} ]]; then
    skip_step "$1" "no wheels in $BUNDLE/wheels/$2: run scripts/gpu-check.sh --prepare and carry .gpu-bundle"
    return 1
  fi
  run_step "$1" 120 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --disable-pip-version-check --upgrade --target "$SITE" "${wheels[@]}"
}

gpu_test_files() { # the test files that hold tests marked gpu
  grep -rlE 'pytest\.mark\.gpu' "$ROOT/tests" --include='*.py' | sort
}

bench() { # DTYPE
  run_step "bench-$1" 150 "$PYTHON" -m sensevoice_serve.cli bench --model "$WORK/model" --clips-dir "$AUDIO" \
    --clip-seconds "$CLIP_SECONDS" --concurrency "$CONCURRENCY" --requests "$REQUESTS" --device "$DEVICE" \
    --dtype "$1" --json "$WORK/bench-$1.json"
}

funasr_baseline() {
  install_wheels install-baseline baseline || {
    skip_step funasr "install-baseline did not run clean"
    return 1
  }
  run_step funasr 120 "$PYTHON" "$ROOT/scripts/gpu_funasr_baseline.py" --model "$WORK/model" \
    --clips-dir "$AUDIO" --device "$DEVICE" --dtypes "$OUR_DTYPES" --clip-seconds "$CLIP_SECONDS" \
    --repeats "$REPEATS" --json "$WORK/funasr.json"
}

probe_gpu() { # fail fast: no GPU and no rehearsal asked for ends the check here
  local probe='import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA GPU (CUDA build: {torch.version.cuda})")
print(torch.__version__, torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))'
  if run_step gpu-probe 60 "$PYTHON" -c "$probe"; then
    gpu_settings
  elif [[ ${GPU_CHECK_ALLOW_CPU:-} == 1 ]]; then
    cpu_rehearsal_settings
    record gpu-probe failed --rc 1 --note "no CUDA GPU, as expected: GPU_CHECK_ALLOW_CPU=1 rehearses on the CPU"
  else
    local why step
    why="no usable CUDA GPU: $(tail -1 "$WORK/out/gpu-probe.err")"
    for step in $(tail -n +2 "$WORK/plan.txt"); do record "$step" skipped --note "$why"; done
    echo "error: $why. This check is for a GPU machine; GPU_CHECK_ALLOW_CPU=1 rehearses its steps on the" \
      "CPU. Report: $OUT/report.md" >&2
    exit 2
  fi
  write_plan
}

write_plan() { # every step in order, so that the report names those the check never reached
  echo "$MODE" >"$WORK/mode.txt"
  local planned=(gpu-probe machine install-wheels install-project imports doctor model pytest
    "bench-${BENCH_DTYPES[0]}" install-baseline funasr)
  local dtype
  for dtype in "${BENCH_DTYPES[@]:1}"; do planned+=("bench-$dtype"); done
  printf '%s\n' "${planned[@]}" >"$WORK/plan.txt"
}

check() {
  probe_gpu
  run_step machine 30 bash -c "$MACHINE_INFO" "$PYTHON"
  install_wheels install-wheels product
  install_project || {
    export PYTHONPATH="$ROOT/src:$PYTHONPATH"
    echo "   the project runs from $ROOT/src instead" | tee -a "$LOG" >&2
  }
  run_step imports 60 "$PYTHON" -c "$IMPORTS_CHECK" "$SITE" sensevoice_serve.pipeline sensevoice_serve.cli \
    sensevoice_serve.server av soundfile pydantic pydantic_settings fastapi uvicorn multipart silero_vad
  run_step doctor 90 "$PYTHON" -m sensevoice_serve.cli doctor --json
  run_step model 120 "$PYTHON" -m sensevoice_serve.cli make-test-model "$MODEL_SIZE" "$WORK/model"
  local test_files
  mapfile -t test_files < <(gpu_test_files)
  if ((${#test_files[@]})); then
    run_step pytest 200 "$PYTHON" -m pytest -m gpu -p no:cacheprovider -q -rfEs \
      --junitxml="$WORK/pytest.xml" "${test_files[@]}"
  else
    skip_step pytest "no test file holds a test marked gpu"
  fi
  bench "${BENCH_DTYPES[0]}"
  funasr_baseline
  local dtype
  for dtype in "${BENCH_DTYPES[@]:1}"; do bench "$dtype"; done
}

main() {
  [[ ${1:-} == --prepare ]] && { prepare; exit; }
  [[ $# -eq 1 && $1 != -* ]] || usage
  mkdir -p "$1" || exit 2
  OUT=$(cd "$1" && pwd)
  WORK=${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}
  mkdir -p "$WORK/out" || exit 2
  LOG=$OUT/log.txt
  SITE=$WORK/site
  DEADLINE=$(($(date +%s) + BUDGET_S))
  AUDIO=$BUNDLE/audio
  [[ -d $AUDIO ]] || AUDIO=$(realpath -m "$ROOT/../shared/audio")
  cd "$ROOT" || exit 2
  : >"$LOG"
  gpu_settings
  write_plan
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
  export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1 XDG_CACHE_HOME="$WORK/cache"
  export SENSEVOICE_PROFILE="$WORK/no-profile.json" # the automatic settings, whatever this machine holds
  export GPU_REPORT_DIR="$WORK" GPU_TEST_MODEL_DIR="$WORK/model" GPU_TEST_AUDIO_DIR="$AUDIO"
  check
  render
  cat "$OUT/report.md"
  echo "report: $OUT/report.md, $OUT/report.json, $OUT/log.txt (scratch: $WORK)" >&2
  # Exit 0 when every step that counts ran clean (in a rehearsal, the GPU probe is meant to fail).
  local expected='^$' not_ok
  [[ $MODE == gpu ]] || expected='"name": "gpu-probe"'
  not_ok=$(grep -v '"status": "ok"' "$WORK/steps.jsonl" | grep -cv "$expected")
  ((not_ok == 0))
}

main "$@"
