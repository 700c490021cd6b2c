#!/usr/bin/env bash
# Install the locked runtime + test environment into .venv (first run only; from PyPI alone) and
# run lint plus the whole test suite.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NEUROHARMONY_LOCK=requirements-test.lock
# shellcheck source=scripts/bootstrap.sh
source "$repo/scripts/bootstrap.sh"
cd "$repo"
ruff check .
ruff format --check .
python -m pytest -n 2 --durations=20 "$@"
