"""Fit/apply time and peak memory: ours vs neuroCombat and neuroHarmonize (printed, never asserted).

- Fit on the ABIDE pool (all sites; scans with a failed segmentation dropped).
- Apply to the pool and to 1k / 10k / 100k subjects resampled from it with replacement
  (fixed seed): subjects per second and peak traced memory, to check the targets of issue 15
  (apply >= 250k scans/s at 100k ahead of both anchors, <= 4 MiB per 1k scans, fit within
  10x neuroCombat's).

Why the runs are warmed and interleaved (fairness on this kind of machine):

- The benchmark VM's memory is backed lazily by its host: the first touch of guest memory not
  used recently costs ~8 ms per MiB (50x a normal page fault), so a figure that allocates fresh
  memory measures the host, and whichever tool runs second profits from memory the first one
  freed. Before every timed call the process allocates, touches and frees a buffer larger than
  the peak being measured (``--warm-mib``, by default 4x the input table plus 256 MiB), the
  same for every tool.
- The machine is shared: the tools of one step run interleaved (ours, neuroCombat,
  neuroHarmonize, ours, ...), best of ``--repeat`` each, so a busy spell slows all of them
  alike; CPU time is printed beside wall time.

Time and memory are measured in separate runs: tracemalloc slows allocation-heavy code, so
times come from the untraced runs and memory from one traced run per tool. Peak memory is
what tracemalloc sees (Python objects and NumPy buffers), net of the input table.

Usage: python bench/speed.py [--sizes 1000 10000 100000] [--repeat 3] [--original] [--joint]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

warnings.filterwarnings("ignore", category=pd.errors.PerformanceWarning)


def warm(mib: float) -> None:
    """Allocate, touch and free ``mib`` MiB, so that the next allocations reuse memory the
    host has already backed (see the module docstring); costs ~0.15 s per GiB once warm."""
    buf = np.ones(int(mib * 2**20) // 8)
    del buf


def interleaved(
    fns: dict[str, Callable[[], object]], repeat: int, warm_mib: float
) -> dict[str, tuple[float, float, float, object]]:
    """{tool: (best wall s, its CPU s, peak traced MiB, result)}, tools run in turn.

    Each round runs every tool once (warmed before each call); the best wall time of each
    tool over ``repeat`` rounds is kept with its CPU time. Then one traced run per tool gives
    its peak memory. CPU time is reported beside wall time because the machine is shared.
    """
    best = {name: (float("inf"), float("inf"), None) for name in fns}
    for _ in range(max(repeat, 1)):
        for name, fn in fns.items():
            warm(warm_mib)
            t, c = time.perf_counter(), time.process_time()
            result = fn()
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            if wall < best[name][0]:
                best[name] = (wall, cpu, result)
            del result
    out = {}
    for name, fn in fns.items():
        warm(warm_mib)
        tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        wall, cpu, result = best[name]
        out[name] = (wall, cpu, peak / 2**20, result)
    return out


def resample(df: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """n subjects drawn with replacement (fresh participant ids so rows stay distinct)."""
    out = df.sample(n=n, replace=True, random_state=seed).reset_index(drop=True)
    out["participant_id"] = [f"sub-r{i:06d}" for i in range(n)]
    return out


def _combat_covars(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "SITE": df[C.SITE].to_numpy(),
            "age": df["age"].to_numpy(),
            "sex": (df["sex"] == "M").to_numpy(int),
            "etiv": df["etiv"].to_numpy(),
        }
    )


def _quiet(fn: Callable, *args, **kwargs):
    """Call a tool with its console chatter muted (neuroCombat prints per call)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def run(args: argparse.Namespace) -> list[dict]:
    df = C.load_abide()
    sizes = [len(df)] + list(args.sizes)
    inputs = {n: (df if n == len(df) else resample(df, n)) for n in sizes}
    rows: list[dict] = []

    def row(tool: str, step: str, n: int, secs: float, cpu: float, mib: float) -> None:
        rows.append(
            {
                "tool": tool,
                "step": step,
                "n": n,
                "seconds": secs,
                "cpu_seconds": cpu,
                "per_s": n / secs if secs > 0 else float("inf"),
                "per_cpu_s": n / cpu if cpu > 0 else float("inf"),
                "peak_mib": mib,
                "mib_per_1k": 1000 * mib / n,
            }
        )
        print(
            f"  {tool:16s} {step:14s} n={n:>7d} {secs:8.3f}s (cpu {cpu:.3f}s) {mib:9.1f} MiB",
            file=sys.stderr,
        )

    def warm_mib(table: pd.DataFrame) -> float:
        if args.warm_mib is not None:
            return args.warm_mib
        return 4 * table.memory_usage(deep=True).sum() / 2**20 + 256

    from neuroCombat import neuroCombat, neuroCombatFromTraining
    from neuroHarmonize import harmonizationApply, harmonizationLearn

    from neuroharmony_bids.harmonize.model import NeuroHarmonizer

    # ---------------------------------------------------------------- fit, interleaved
    table = C.for_model(df)
    cv_fit = _combat_covars(df)
    x_fit = df[C.REGIONS].to_numpy(float)
    fits = interleaved(
        {
            "ours": lambda: NeuroHarmonizer().fit(table, C.SITE),
            "neuroCombat": lambda: _quiet(
                neuroCombat,
                dat=x_fit.T,
                covars=cv_fit,
                batch_col="SITE",
                categorical_cols=["sex"],
                continuous_cols=["age", "etiv"],
            ),  # fmt: skip
            "neuroHarmonize": lambda: _quiet(harmonizationLearn, x_fit, cv_fit),
        },
        min(args.repeat, 2),
        warm_mib(table),
    )
    for tool, (secs, cpu, mib, _) in fits.items():
        row(tool, "fit", len(df), secs, cpu, mib)
    model, nc, (nh_model, _) = (fits[t][3] for t in ("ours", "neuroCombat", "neuroHarmonize"))

    # ---------------------------------------------------------------- apply, interleaved
    for n in sizes:
        d = inputs[n]
        t = C.for_model(d)
        dat, batch = d[C.REGIONS].to_numpy(float).T, d[C.SITE].to_numpy()
        x, cv = d[C.REGIONS].to_numpy(float), _combat_covars(d)
        fns = {
            "ours": lambda t=t: model.transform(t),
            "neuroCombat": lambda dat=dat, batch=batch: _quiet(
                neuroCombatFromTraining, dat=dat, batch=batch, estimates=nc["estimates"]
            ),
            "neuroHarmonize": lambda x=x, cv=cv: _quiet(harmonizationApply, x, cv, nh_model),
        }
        for tool, (secs, cpu, mib, _) in interleaved(fns, args.repeat, warm_mib(t)).items():
            row(tool, "apply", n, secs, cpu, mib)
        if args.joint:
            joint = {"ours": lambda t=t: model.transform(t, site_column=C.SITE)}
            secs, cpu, mib, _ = interleaved(joint, 1, warm_mib(t))["ours"]
            row("ours", "apply joint", n, secs, cpu, mib)
        del t, dat, batch, x, cv, fns

    # ---------------------------------------------------------------- original (optional)
    if args.original:
        from _original import OriginalNeuroharmony

        fit = {
            "original": lambda: OriginalNeuroharmony(
                C.REGIONS, n_estimators=args.original_trees
            ).fit(df, C.SITE)
        }
        secs, cpu, mib, orig = interleaved(fit, 1, warm_mib(table))["original"]
        row("original", "fit", len(df), secs, cpu, mib)
        for n in sizes[: 1 + sum(s <= 10000 for s in args.sizes)]:
            d = inputs[n]
            secs, cpu, mib, _ = interleaved(
                {"original": lambda d=d: orig.transform(d)}, 1, warm_mib(d)
            )["original"]
            row("original", "apply", n, secs, cpu, mib)
    return rows


#: Issue 15's targets for ours: apply scans/s at 100k, MiB per 1k scans, fit time / neuroCombat's.
APPLY_TARGET, MIB_TARGET, FIT_RATIO_TARGET = 250_000, 4.0, 10.0


def targets(rows: list[dict]) -> str:
    """Issue 15's targets as figures measured side by side in this run (printed, not asserted).

    Apply is judged at the largest size run (the target is stated at 100k), by wall time and,
    since the machine is shared, by CPU time too.
    """
    get = {(r["tool"], r["step"], r["n"]): r for r in rows}
    applied = [r["n"] for r in rows if r["tool"] == "ours" and r["step"] == "apply"]
    if not applied:
        return "targets: ours was not measured"
    n = max(applied)
    ours = get[("ours", "apply", n)]
    lines = [f"targets (issue 15), measured in this run; apply at n={n:,}:"]
    for key, what in (("per_s", "wall"), ("per_cpu_s", "CPU")):
        anchors = ", ".join(
            f"{ours[key] / get[(tool, 'apply', n)][key]:.2f}x {tool}"
            for tool in ("neuroCombat", "neuroHarmonize")
            if (tool, "apply", n) in get
        )
        verdict = "met" if ours[key] >= APPLY_TARGET else "not met"
        lines.append(
            f"  apply ({what}): {ours[key]:,.0f} scans/s vs target {APPLY_TARGET:,} "
            f"({verdict}); vs anchors: {anchors}"
        )
    per_1k = {r["n"]: r["mib_per_1k"] for r in rows if r["tool"] == "ours" and r["step"] == "apply"}
    verdict = "met" if per_1k[n] <= MIB_TARGET else "not met"
    lines.append(
        f"  memory: {per_1k[n]:.2f} MiB per 1k scans vs target {MIB_TARGET:g} ({verdict}); "
        "by size: " + ", ".join(f"{k:,}: {v:.2f}" for k, v in sorted(per_1k.items()))
    )
    fits = [r for r in rows if r["step"] == "fit" and r["tool"] in ("ours", "neuroCombat")]
    if len(fits) == 2:
        ours_fit, nc_fit = sorted(fits, key=lambda r: r["tool"] != "ours")
        for key, what in (("seconds", "wall"), ("cpu_seconds", "CPU")):
            ratio = ours_fit[key] / nc_fit[key] if nc_fit[key] > 0 else float("inf")
            verdict = "met" if ratio <= FIT_RATIO_TARGET else "not met"
            lines.append(
                f"  fit ({what}): {ours_fit[key]:.3f} s = {ratio:.1f}x neuroCombat's "
                f"{nc_fit[key]:.3f} s vs target {FIT_RATIO_TARGET:g}x ({verdict})"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", nargs="+", type=int, default=[1000, 10000, 100000])
    p.add_argument("--repeat", type=int, default=3, help="timed runs per step (best kept)")
    p.add_argument("--joint", action="store_true", help="also time ours in joint mode")
    p.add_argument("--original", action="store_true", help="also time the original (slow)")
    p.add_argument("--original-trees", type=int, default=100)
    p.add_argument(
        "--table-rows",
        type=int,
        default=200_000,
        help="rows for `neuroharmony harmonize` vs pyarrow read+write (0: skip)",
    )
    p.add_argument("--only-table", action="store_true", help="only the table I/O comparison")
    p.add_argument(
        "--warm-mib",
        type=float,
        default=None,
        help="MiB touched before every timed call (default: 4x the input table + 256)",
    )
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        from threadpoolctl import threadpool_info

        threads = ", ".join(f"{i['internal_api']}×{i['num_threads']}" for i in threadpool_info())
    except ImportError:
        threads = "n/a"
    print(
        f"CPU cores visible: {os.cpu_count()} (threads: {threads}); "
        f"times are best of {args.repeat}, tools interleaved, memory warmed before every call "
        f"({'4x the input + 256 MiB' if args.warm_mib is None else f'{args.warm_mib:g} MiB'}), "
        "memory = tracemalloc peak"
    )
    if args.table_rows:
        from _table_io import table_io

        table = C.for_model(resample(C.load_abide(), args.table_rows))
        print("\n`neuroharmony harmonize` vs pyarrow read+write of the same CSV")
        print(C.markdown_table([{"what": k, "figure": v} for k, v in table_io(table)],
                               [("what", "", ""), ("figure", "", "")]))  # fmt: skip
        if args.only_table:
            return 0
    rows = run(args)
    print()
    print(
        C.markdown_table(
            rows,
            [
                ("tool", "tool", ""),
                ("step", "step", ""),
                ("n", "subjects", "d"),
                ("seconds", "wall (s)", ".3f"),
                ("cpu_seconds", "CPU (s)", ".3f"),
                ("per_s", "subjects/s (wall)", ",.0f"),
                ("per_cpu_s", "subjects/CPU-s", ",.0f"),
                ("peak_mib", "peak MiB", ".1f"),
                ("mib_per_1k", "MiB per 1k subjects", ".2f"),
            ],
        )
    )
    print()
    print(targets(rows))
    print(f"\nrun time {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
