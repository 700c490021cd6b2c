#!/usr/bin/env python3
"""Benchmark: what the tools workflow costs around the tools (stand-ins that do no work).

Builds N scans without derivatives (the stand-ins' content is rendered from resampled shared
ABIDE rows), puts ``tests/standins`` on PATH and times ``run.py bids out participant`` with
the tools workflow running MRIQC (one call per batch of participants, one shared pybids index)
and recon-all (one per scan). Real MRIQC takes ~30 min and recon-all hours per scan, so this is
Nipype's orchestration overhead, not a tool speed. Prints figures; asserts nothing.

    python bench/tools_wf.py [--n 40] [--nprocs 1 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from participant import shared_table  # noqa: E402  (bench/participant.py)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="number of scans (default 40)")
    ap.add_argument("--nprocs", type=int, nargs="+", default=[1, 2], help="values to time")
    ap.add_argument("--keep", type=Path, help="build in this folder and keep it")
    args = ap.parse_args(argv)

    import pandas as pd

    from neuroharmony_bids.testing import abide_rows
    from neuroharmony_bids.testing.standins import build_standin_dataset, standin_env

    root = args.keep or Path(tempfile.mkdtemp(prefix="nh-bench-tools-"))
    if root.exists():
        shutil.rmtree(root)
    rows = abide_rows(pd.read_csv(shared_table()), args.n, seed=0, replace=True)
    built = build_standin_dataset(root, rows)
    standins = REPO / "tests" / "standins"
    print(f"scans: {args.n} ({len(built.participants)} participants); stand-ins from {standins}")
    for nprocs in args.nprocs:
        out, log = root / f"out_{nprocs}", root / f"calls_{nprocs}.jsonl"
        env = dict(standin_env(standins, built.data, log), PYTHONPATH=str(REPO))
        cmd = [sys.executable, str(REPO / "run.py"), str(built.bids), str(out), "participant",
               "--skip-bids-validation", "--no-participant-reports", "-q", "--nprocs",
               str(nprocs), "--fs-license-file", str(built.license)]  # fmt: skip
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        secs = time.perf_counter() - t
        calls = [json.loads(x)["tool"] for x in log.read_text().splitlines()]
        n_out = len(list(out.glob("sub-*/anat/*_desc-harmonized_morph.tsv")))
        print(f"--nprocs {nprocs}: {secs:6.1f} s ({secs / args.n * 1000:.0f} ms/scan), exit "
              f"{proc.returncode}, {calls.count('mriqc')} MRIQC call(s), "
              f"{calls.count('recon-all')} recon-all call(s), {n_out} harmonized tables")  # fmt: skip
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
