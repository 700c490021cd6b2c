#!/usr/bin/env python3
"""Benchmark: participant + group level over N scans with existing derivatives.

Builds a BIDS dataset from resampled rows of the shared ABIDE table (tiny placeholder T1w
images, FreeSurfer stats and MRIQC JSONs rendered in their real layouts; about 1 % of ABIDE
rows have one region at 0 mm³, a partly failed parcellation, harmonized with that region
flagged), then times ``neuroharmony-bids bids out participant``, ``... group`` and a
participant re-run exactly as a user runs them, in this process (BIDS validation included
unless --skip-validation), with wall and CPU time per named step of the two drivers. Target
(issue 15): participant + group under 40 s for 5,000 scans on 2 cores, the validator's own run
excluded; validation runs once per dataset state (the group level and re-runs reuse the
participant level's stamp).

Before the clock starts, the process allocates, touches and frees --warm-mib MiB: this VM's
host backs memory lazily (~8 ms per MiB on first touch), which would otherwise charge
whichever run comes first.

    python bench/participant.py [--n 1000] [--nprocs 2] [--keep DIR] [--skip-validation]

Before/after side by side on one dataset (built once and kept; ``--code`` runs the app from
another checkout, e.g. a read-only copy of an older commit, while this script times it):

    python bench/participant.py --n 5000 --keep /tmp/b5k --skip-validation
    python bench/participant.py --n 5000 --keep /tmp/b5k --skip-validation \\
        --reuse-dataset --code ../r4base
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the app's worker processes)."""
    import resource

    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def shared_table() -> Path:
    env = os.environ.get("NEUROHARMONY_SHARED_DATA")
    for base in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        path = base / "abide1" / "abide1_fs6_mriqc_pheno.csv"
        if path.is_file():
            return path
    sys.exit("shared data not found: set NEUROHARMONY_SHARED_DATA or place ../shared/data")


def warm(mib: int) -> None:
    """Allocate, touch (one byte per page) and free ``mib`` MiB, so that the runs timed next
    do not pay this VM's first-touch cost for memory the host has not backed yet."""
    if mib > 0:
        buf = bytearray(mib * 2**20)
        buf[::4096] = b"\1" * len(range(0, len(buf), 4096))
        del buf


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="number of scans (default 1000)")
    ap.add_argument("--nprocs", type=int, default=2, help="--nprocs given to the app")
    ap.add_argument("--seed", type=int, default=0, help="resampling seed")
    ap.add_argument("--keep", type=Path, help="build in this folder and keep it")
    ap.add_argument(
        "--reuse-dataset",
        action="store_true",
        help="with --keep: use the BIDS dataset already built there (same --n and --seed); "
        "only the outputs are deleted",
    )
    ap.add_argument(
        "--code",
        type=Path,
        metavar="CHECKOUT",
        help="run the app from this checkout (e.g. an older commit) instead of this one",
    )
    ap.add_argument("--skip-validation", action="store_true", help="pass --skip-bids-validation")
    ap.add_argument("--with-reports", action="store_true", help="also write per-scan reports")
    ap.add_argument(
        "--warm-mib",
        type=int,
        default=2048,
        help="MiB to allocate, touch and free before timing (default 2048; 0: none)",
    )
    args = ap.parse_args(argv)
    if args.code is not None:
        sys.path.insert(0, str(args.code.resolve()))
        for name in [m for m in sys.modules if m.split(".")[0] == "neuroharmony_bids"]:
            del sys.modules[name]

    import pandas as pd

    from neuroharmony_bids.cli.run import run
    from neuroharmony_bids.testing import abide_rows, build_bids_dataset

    root = args.keep or Path(tempfile.mkdtemp(prefix="nh-bench-"))
    bids_dir, out = root / "bids", root / "out"
    reuse = bool(args.keep and args.reuse_dataset and (bids_dir / "participants.tsv").is_file())
    for d in (out,) if reuse else (bids_dir, out):
        if d.exists():
            shutil.rmtree(d)
    t0 = time.perf_counter()
    if not reuse:
        table = pd.read_csv(shared_table())
        rows = abide_rows(table, args.n, seed=args.seed, replace=True)
        build_bids_dataset(bids_dir, rows)
    t_build = time.perf_counter() - t0

    # time each named step of the two drivers (module-level functions, patched in place; a
    # step another branch renames is simply not listed)
    import neuroharmony_bids.workflows.group as group_wf
    import neuroharmony_bids.workflows.participant as part_wf

    # per step: [wall s, CPU s of the whole process (all threads)]; the machine is shared, so
    # CPU time is printed beside wall time
    step_secs: dict[str, dict[str, list[float]]] = {"participant": {}, "group": {}}
    current = ["participant"]

    def timed(module, name: str) -> None:
        func = getattr(module, name, None)
        if func is None:
            return

        def wrapper(*a, **k):
            t, c = time.perf_counter(), cpu_seconds()
            try:
                return func(*a, **k)
            finally:
                acc = step_secs[current[0]].setdefault(name, [0.0, 0.0])
                acc[0] += time.perf_counter() - t
                acc[1] += cpu_seconds() - c

        setattr(module, name, wrapper)

    for name in ("plan_scans", "load_model_and_info", "prepare_output", "pending_scans",
                 "locate_and_run_tools", "collect_inputs", "harmonize_scans", "write_scans",
                 "write_reports"):  # fmt: skip
        timed(part_wf, name)
    for name in ("load_checked_model", "select_outputs", "gather", "site_labels",
                 "write_group_tables", "write_joint", "check_drift", "_write_report",
                 "train_model"):  # fmt: skip
        timed(group_wf, name)
    steps_first_run: dict[str, list[float]] = {}

    warm(args.warm_mib)
    common = ["--nprocs", str(args.nprocs), "-q"]
    if args.skip_validation:
        common.append("--skip-bids-validation")
    if not args.with_reports:
        common.append("--no-participant-reports")
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    codes = {}
    for level in ("participant", "group"):
        current[0] = level
        t, c = time.perf_counter(), cpu_seconds()
        codes[level] = run([str(bids_dir), str(out), level, *common])
        timings[level] = time.perf_counter() - t
        cpu[level] = cpu_seconds() - c
    steps_first_run.update(step_secs["participant"])
    step_secs["participant"].clear()
    current[0] = "participant"
    t, c = time.perf_counter(), cpu_seconds()
    codes["participant re-run"] = run([str(bids_dir), str(out), "participant", *common])
    timings["participant re-run"] = time.perf_counter() - t
    cpu["participant re-run"] = cpu_seconds() - c

    # validation runs once per dataset state (a stamp in logs/): say what each run spent on it
    validation = {}
    for log in sorted((out / "logs").glob("*.log")):
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            if "BIDS validation" in line:
                validation[log.name] = line.split(": ", 1)[-1]
    n_out = len(list(out.glob("sub-*/anat/*_desc-harmonized_morph.tsv")))
    n_failed = len(list((out / "logs" / "failed").glob("*.json")))
    total = timings["participant"] + timings["group"]
    print(f"scans: {args.n} (resampled ABIDE rows, seed {args.seed}); nprocs {args.nprocs}; "
          f"cpus visible {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()}")  # fmt: skip
    import neuroharmony_bids

    print(f"code: {Path(neuroharmony_bids.__file__).parent.parent}")
    print(f"memory warmed before timing: {args.warm_mib} MiB allocated, touched and freed")
    print(
        f"build fixture dataset:        {t_build:7.1f} s (not part of the target"
        + ("; reused)" if reuse else ")")
    )
    for level, secs in timings.items():
        print(
            f"{level + ':':29s} {secs:7.1f} s wall {cpu[level]:7.1f} s CPU  (exit {codes[level]})"
        )
        steps = steps_first_run if level == "participant" else step_secs[level.split()[0]]
        for name, (wall, used) in sorted(steps.items(), key=lambda kv: -kv[1][0]):
            if wall >= 0.05:
                print(f"  {name + ':':27s} {wall:7.1f} s wall {used:7.1f} s CPU")
    print(
        f"participant + group:          {total:7.1f} s  ({total / max(args.n, 1) * 1000:.1f} ms/scan)"
    )
    print(
        f"harmonized tables written:    {n_out}; failed scans reported: {n_failed} "
        "(ABIDE rows with a 0 mm^3 region are harmonized with that region flagged; code "
        "from older rounds refused them, exit 1)"
    )
    for name, line in validation.items():
        print(f"  {name}: {line}")
    print(
        f"target (issue 15): 5,000 scans participant + group < 40 s without the validator's run;"
        f" here {args.n} scans: {total:.1f} s"
    )
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    ok = codes["group"] == 0 and all(codes[k] in (0, 1) for k in codes)
    return 0 if ok and n_out + n_failed == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
