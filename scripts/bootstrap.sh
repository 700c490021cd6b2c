#!/usr/bin/env bash
# Create (or reuse) .venv from requirements.lock and install this package into it.
# Sourced by scripts/run_example.sh, scripts/run_tests.sh and .ci/run.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${NEUROHARMONY_VENV:-$repo/.venv}"
stamp="$venv/.lock-sha256"
want="$(sha256sum "$repo/requirements.lock" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r "$repo/requirements.lock"
  "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$repo"
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
