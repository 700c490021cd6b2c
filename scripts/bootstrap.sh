#!/usr/bin/env bash
# Create (or reuse) .venv from a lock file and install this package into it, from PyPI alone.
# Sourced by scripts/run_example.sh (runtime: requirements.lock) and scripts/run_tests.sh
# (NEUROHARMONY_LOCK=requirements-test.lock, which -r includes the runtime lock).
# The stamp .venv/.lock-sha256 holds one "sha256  file" line per lock file installed (the named
# lock and every lock it -r includes), so an edited lock reinstalls and an unchanged one does not.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${NEUROHARMONY_VENV:-$repo/.venv}"
lock="${NEUROHARMONY_LOCK:-requirements.lock}"
stamp="$venv/.lock-sha256"
python="${PYTHON:-python3}"

# The lock file and the lock files it includes (`-r FILE` lines), relative to the repository.
locks=()
pending=("$lock")
while [ "${#pending[@]}" -gt 0 ]; do
  file="${pending[0]}"
  pending=("${pending[@]:1}")
  [ -f "$repo/$file" ] || { echo "bootstrap: lock file $repo/$file not found" >&2; exit 66; }
  locks+=("$file")
  while read -r included; do
    pending+=("$included")
  done < <(sed -n 's/^-r[[:space:]]\{1,\}\([^[:space:]#]*\).*/\1/p' "$repo/$file")
done
want="$(cd "$repo" && sha256sum "${locks[@]}")"

if [ ! -x "$venv/bin/python" ]; then
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "bootstrap: $("$python" --version 2>&1) is too old: the lock needs Python >= 3.11" \
      "(set PYTHON=/path/to/python3.11 or newer)" >&2
    exit 66
  }
  "$python" -m venv "$venv"
fi
have="$(cat "$stamp" 2>/dev/null || true)"
# install unless every wanted "sha256  file" line is already in the stamp
if grep -qvxF -f <(printf '%s\n' "$have") <<<"$want"; then
  pip_pin="$(grep -m1 '^pip==' "$repo/requirements.lock")"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "$pip_pin"
  "$venv/bin/python" -m pip install -q -r "$repo/$lock"
  "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$repo"
  # keep the lines of locks installed earlier (e.g. the test lock) that this run did not touch
  {
    printf '%s\n' "$want"
    printf '%s\n' "$have" | grep -E '^[0-9a-f]{64}  [^ ]+$' \
      | grep -v -F -f <(printf '  %s\n' "${locks[@]}") || true
  } | sort -k2 > "$stamp"
fi
export PATH="$venv/bin:$PATH"
