#!/usr/bin/env bash
# Run neuroharmony-bids end to end on the bundled SIMULATED example dataset.
#
#   scripts/run_example.sh [BIDS_DIR] [OUTPUT_DIR]
#
# BIDS_DIR (default ./example_output/bids) receives a small simulated 3-site BIDS dataset
# with FreeSurfer and MRIQC derivatives; OUTPUT_DIR (default: BIDS_DIR/../neuroharmony)
# receives the harmonized volumes and the reports. Installs the locked runtime environment
# (requirements.lock, from PyPI alone; no test tools) into .venv on first use
# (scripts/bootstrap.sh). No network access is needed after that.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NEUROHARMONY_LOCK=requirements.lock
# shellcheck source=scripts/bootstrap.sh
source "$repo/scripts/bootstrap.sh"

bids="${1:-./example_output/bids}"
out="${2:-$(dirname "$bids")/neuroharmony}"
start=$SECONDS

echo "==> Writing the SIMULATED example dataset to $bids"
python -m neuroharmony_bids.testing.example "$bids"

echo "==> Participant level: harmonize every scan"
python "$repo/run.py" "$bids" "$out" participant

echo "==> Group level: group tables and report"
python "$repo/run.py" "$bids" "$out" group

out_abs="$(cd "$out" && pwd)"
echo
echo "Done in $((SECONDS - start)) s. Results in $out_abs:"
echo "  group report:        $out_abs/group_report.html"
first_report="$(find "$out_abs" -path '*/anat/*_report.html' -print 2>/dev/null | sort | head -n 1)"
if [ -n "$first_report" ]; then
  echo "  participant reports: $out_abs/sub-*/anat/*_report.html (e.g. $first_report)"
fi
echo "  group tables:        $out_abs/group_desc-raw_morph.tsv, group_desc-harmonized_morph.tsv"
echo "  logs and citation:   $out_abs/logs/ (CITATION.md, CITATION.bib)"
