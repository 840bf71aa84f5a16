#!/usr/bin/env bash
# Set up a virtual environment in .venv on first use, then run the demo or the test suite.
#
#   bash dev.sh demo [ARGS...]   record and analyse the built-in CartPole policy
#   bash dev.sh test [ARGS...]   run the whole test suite (extra ARGS go to pytest)
#   bash dev.sh setup            only create or update .venv
#
# Torch is installed first and pinned (TORCH_SPEC, default torch==2.13.0) so that pip does not
# pick a multi-gigabyte build when resolving the package's own `torch>=2.2`; set TORCH_SPEC to
# choose another build. PYTHON selects the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")"
venv=.venv
python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-torch==2.13.0}

setup() {
  if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv with $($python --version)" >&2
    "$python" -m venv "$venv"
  fi
  local stamp="$venv/.interlatent-installed"
  local wanted
  wanted="$(cat pyproject.toml) $torch_spec"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    return
  fi
  echo "installing $torch_spec and interlatent-mcp[test] into $venv (first run only)" >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    "$venv/bin/python" -m pip install --quiet "$torch_spec" >&2
  fi
  "$venv/bin/python" -m pip install --quiet -e ".[test]" >&2
  printf '%s' "$wanted" > "$stamp"
}

command=${1:-}
shift || true
case "$command" in
  setup) setup ;;
  demo) setup; exec "$venv/bin/interlatent" demo "$@" ;;
  test) setup; exec "$venv/bin/python" -m pytest -q "$@" ;;
  *) echo "usage: bash dev.sh demo|test|setup [ARGS...]" >&2; exit 2 ;;
esac
