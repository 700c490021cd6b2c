#!/usr/bin/env python3
"""Benchmark: the participant level over real FreeSurfer/FastSurfer and MRIQC outputs.

Builds a BIDS dataset whose derivatives are the real-format corpus of ``tests/data/real``
(each subject with aseg.stats and cortical stats: FreeSurfer 5.3, 6.0, 7.0, 7.4.1 x2 and the
FastSurfer layout), each paired with a real MRIQC JSON (21.0.0rc2 ... 24.1, two with
``fber = -1``, one with a ``NaN`` token). Images are stand-ins and age/sex are stand-in
covariates (the run reuses the existing derivatives). Then runs ``run.py bids out participant``
as a user would and prints:

- read N/N: corpus files the readers accept (every stats file, IQM JSON and group table);
- values exact N/N: scans whose ``*_desc-raw_morph.tsv`` holds exactly the numbers of their
  stats files (read here with a regex, independently of the parser);
- harmonized N/N: scans with ``nh_status = harmonized``;
- per scan: FreeSurfer version (found vs trained on), status, regions harmonized (and the
  cortical atlas), median posterior SD, IQMs missing, regions flagged, out-of-range inputs, or
  why it failed.

    python bench/real_outputs.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
REAL = REPO / "tests" / "data" / "real"

from neuroharmony_bids.testing.real_corpus import REAL_PAIRS as PAIRS  # noqa: E402


def read_corpus() -> tuple[int, int, list[str]]:
    """How many corpus files the readers accept, and why the others were refused."""
    from neuroharmony_bids.errors import NeuroharmonyError
    from neuroharmony_bids.io import freesurfer_stats as fs_stats
    from neuroharmony_bids.io import mriqc_json

    files = sorted(REAL.rglob("*.stats")) + sorted(REAL.rglob("*.json"))
    files += sorted(REAL.rglob("*.tsv")) + sorted(REAL.rglob("*stats2table.txt"))
    ok, errors = 0, []
    for path in files:
        try:
            if path.name == "aseg.stats":
                fs_stats.parse_aseg_stats(path)
            elif path.suffix == ".stats":
                fs_stats.parse_aparc_stats(path, require_dk="DKT" not in path.name)
            elif path.suffix == ".json":
                mriqc_json.read_iqms(path)
            elif path.name == "group_T1w.tsv":
                mriqc_json.read_group_tsv(path)
            else:
                fs_stats.read_stats_table(path)
            ok += 1
        except NeuroharmonyError as exc:
            errors.append(f"{path.relative_to(REAL)}: {exc}")
    return ok, len(files), errors


def text_volumes(stats_dir: Path) -> dict[str, float]:
    """Volumes as written in the files: aseg rows (column 4 = Volume_mm3, 5 = StructName),
    ``# Measure`` lines in mm^3, DK GrayVol (column 4) of ?h.aparc.stats."""
    out: dict[str, float] = {}
    aseg = (stats_dir / "aseg.stats").read_text()
    for line in aseg.splitlines():
        m = re.match(r"^# Measure [^,]+, ([\w-]+)[, ].*, ([-\d.]+), mm\^3$", line)
        if m:
            out[{"eTIV": "EstimatedTotalIntraCranialVol"}.get(m.group(1), m.group(1))] = float(
                m.group(2)
            )
        elif line.strip() and not line.startswith("#"):
            cells = line.split()
            out[cells[4]] = float(cells[3])
    for hemi in ("lh", "rh"):
        path = stats_dir / f"{hemi}.aparc.stats"
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip() and not line.startswith("#"):
                    cells = line.split()
                    out[f"{hemi}_{cells[0]}_volume"] = float(cells[3])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="build in this folder and keep it")
    args = ap.parse_args(argv)

    import pandas as pd

    from neuroharmony_bids.harmonize.features import canonical_region
    from neuroharmony_bids.io import freesurfer_stats as fs_stats

    ok, total, errors = read_corpus()
    print(f"read: {ok}/{total} corpus files")
    for err in errors:
        print(f"  refused: {err}")

    root = args.keep or Path(tempfile.mkdtemp(prefix="nh-real-"))
    if args.keep and root.exists():
        shutil.rmtree(root)
    from neuroharmony_bids.testing.real_corpus import build_real_dataset

    bids, fs_dir, mq_dir = build_real_dataset(root, REAL)
    out = root / "out"
    cmd = [
        sys.executable,
        str(REPO / "run.py"),
        str(bids),
        str(out),
        "participant",
        "--skip-bids-validation",
        "--no-participant-reports",
        "--freesurfer-dir",
        str(fs_dir),
        "--mriqc-dir",
        str(mq_dir),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    print(f"participant level: exit {proc.returncode}")
    stderr = proc.stderr

    n = len(PAIRS)
    exact = harmonized = with_output = 0
    lines = []
    for sub, stats, iqm, _, _ in PAIRS:
        release = fs_stats.read_subject(REAL / stats).release
        raw_tsv = out / f"sub-{sub}" / "anat" / f"sub-{sub}_desc-raw_morph.tsv"
        harm_tsv = out / f"sub-{sub}" / "anat" / f"sub-{sub}_desc-harmonized_morph.tsv"
        label = f"sub-{sub} ({stats.split('/')[0]} {release}, MRIQC {iqm.split('/')[0]})"
        if not raw_tsv.is_file():
            why = next((ln for ln in stderr.splitlines() if f"sub-{sub}_T1w failed" in ln), "")
            why = why.split(" failed: ", 1)[-1] or "no message"
            lines.append(f"  {label}: no output: {why[:300]}{' ...' if len(why) > 300 else ''}")
            continue
        with_output += 1
        raw = pd.read_csv(raw_tsv, sep="\t", float_precision="round_trip").iloc[0]
        written = {canonical_region(k): v for k, v in text_volumes(REAL / stats / "stats").items()}
        compared = [c for c in raw.index if c in written]
        wrong = [c for c in compared if not math.isclose(float(raw[c]), written[c], abs_tol=0)]
        if compared and not wrong:
            exact += 1
        detail = f"values {len(compared) - len(wrong)}/{len(compared)} exact"
        if wrong:
            detail += f" (differ: {', '.join(wrong[:5])})"
        if harm_tsv.is_file():
            h = pd.read_csv(harm_tsv, sep="\t").iloc[0]
            harmonized += h.get("nh_status") == "harmonized"
            flags = h.get("nh_out_of_range_features")
            sd = [float(h[c]) for c in h.index if c.endswith("_sd")]
            meta = json.loads(harm_tsv.with_suffix(".json").read_text())
            versions = meta["Harmonization"]["FreeSurferVersion"]

            def named(col: str, row=h) -> str:
                value = row.get(col)
                return value if isinstance(value, str) else "none"

            detail += (
                f"; {h.get('nh_status')}, {h.get('nh_n_regions')} regions "
                f"({meta['FreeSurfer']['CorticalAtlas']} cortex), confidence "
                f"{h.get('nh_confidence')}, median posterior SD "
                f"{statistics.median(sd) if sd else float('nan'):.1f} mm3; FreeSurfer "
                f"{versions['Found']} vs model {versions['ModelTrainedOn']}; IQMs missing: "
                f"{named('nh_iqms_missing')}; regions flagged: {named('nh_regions_flagged')}; "
                f"out of range: {flags if isinstance(flags, str) else 'none'}"
            )
        lines.append(f"  {label}: {detail}")
    print(f"values exact: {exact}/{n} scans ({with_output} scans had a raw output table)")
    print(f"harmonized: {harmonized}/{n} scans")
    print("per scan:")
    print("\n".join(lines))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"kept in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
