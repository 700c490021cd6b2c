"""Leave-one-site-out harmonization quality on the 17 ABIDE sites (printed, never asserted).

For each held-out site s (training pool = the other 16 sites):

- ``raw``: s's volumes untouched.
- ``oracle``: neuroCombat fitted on all 17 sites (age, sex, dx, eTIV protected): what the
  single-scan methods try to reproduce without seeing s.
- ``original``: the original Neuroharmony (bench/_original.py), trained on the 16 sites.
- ``ours``: neuroharmony_bids' NeuroHarmonizer, trained on the 16 sites, single-scan mode.

Figures per row (definitions in bench/README.md and neuroharmony_bids.harmonize.metrics):
residual site effect (regions × held-out sites with a Bonferroni-significant difference from
the ComBat-harmonized other sites), site-vs-rest AUC, R² and MAE % against the oracle, the
mean change of within-site age correlations, and the anatomy kept (issue 14): a known change
(metrics.ANATOMY_CHANGE: −10 % hippocampus, amygdala, entorhinal, parahippocampal; +15 %
lateral ventricles) is injected into half of the held-out site's scans, every row harmonizes
the changed site again, and retention = change out / change in (median over changed scans;
worst region), plus the held-out site's between-subject SD over the oracle's.

Usage: python bench/quality.py [--sites NYU KKI] [--drift] [--n-scans 1 2 5 10 20]
       [--json out.json] [--no-cache] [--ours MODULE:FACTORY]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore", category=pd.errors.PerformanceWarning)

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
from _original import OriginalNeuroharmony  # noqa: E402

from neuroharmony_bids.harmonize import metrics  # noqa: E402

#: bump when a cached computation changes meaning, so stale cache entries are not reused
CACHE_VERSION = 2

Apply = Callable[[pd.DataFrame, "str | None"], pd.DataFrame]


# ----------------------------------------------------------------------------- methods


def fit_ours(train_df: pd.DataFrame, **params) -> Apply:
    """Fit NeuroHarmonizer on the training pool; return apply(test_df, site_column) → volumes.

    ``site_column=None`` is the single-scan path; ``"site"`` is the joint path in which scans
    sharing a site value are harmonized together. ``params`` go to NeuroHarmonizer (the
    variants in bench/_variants.py use them).
    """
    import inspect

    from neuroharmony_bids.harmonize.model import NeuroHarmonizer

    # dx is protected like in the oracle, so both aim at the same target
    model = NeuroHarmonizer(covariates=("dx",), **params)
    site_kw = "site_column" if "site_column" in inspect.signature(model.fit).parameters else "site"
    model.fit(C.for_model(train_df), **{site_kw: C.SITE})

    def apply(test_df: pd.DataFrame, site_column: str | None = None) -> pd.DataFrame:
        out = model.transform(C.for_model(test_df), site_column=site_column)
        return out[C.REGIONS].astype(float).set_axis(test_df.index)

    return apply


def ours(train_df: pd.DataFrame, test_df: pd.DataFrame) -> pd.DataFrame:
    """Harmonized test volumes from a model trained on train_df (the pluggable entry)."""
    return fit_ours(train_df)(test_df, None)


def load_ours(spec: str) -> tuple[Callable[[pd.DataFrame], Apply] | None, str]:
    """Resolve ``MODULE:FACTORY`` (default: this file's fit_ours); (None, reason) if unusable."""
    if spec == "default":
        try:
            importlib.import_module("neuroharmony_bids.harmonize.model").NeuroHarmonizer  # noqa: B018
        except (ImportError, AttributeError) as exc:
            return None, f"neuroharmony_bids.harmonize.model.NeuroHarmonizer: {exc}"
        return fit_ours, "neuroharmony_bids.harmonize.model.NeuroHarmonizer"
    mod, _, func = spec.partition(":")
    try:
        return getattr(importlib.import_module(mod), func or "fit_ours"), spec
    except (ImportError, AttributeError) as exc:
        return None, f"{spec}: {exc}"


def _oracle(vol: pd.DataFrame, site: np.ndarray, cov: pd.DataFrame, version: int) -> pd.DataFrame:
    return C.combat(vol, site, cov)


def changed_half(test: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The held-out site with issue 14's anatomy change in every other scan (and the mask)."""
    half = np.arange(len(test)) % 2 == 0
    return metrics.inject_change(test, half), half


def _reference(
    vol: pd.DataFrame, site: np.ndarray, cov: pd.DataFrame, version: int
) -> pd.DataFrame:
    return C.combat(vol, site, cov)


def _original_predict(
    train: pd.DataFrame, test: pd.DataFrame, n_estimators: int, version: int
) -> dict[str, pd.DataFrame]:
    """Fit once, predict the standard, drifted and anatomy-changed test sets (one cache entry)."""
    model = OriginalNeuroharmony(C.REGIONS, n_estimators=n_estimators).fit(train, C.SITE)
    return {
        "standard": model.transform(test),
        "drift": model.transform(C.drift_iqms(test, seed=0)),
        "changed": model.transform(changed_half(test)[0]),
    }


# ----------------------------------------------------------------------------- figures


def evaluate(
    harmonized: pd.DataFrame,
    test: pd.DataFrame,
    reference: pd.DataFrame,
    reference_df: pd.DataFrame,
    oracle_test: pd.DataFrame,
    batches: np.ndarray | None = None,
    changed: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> dict:
    """All figures for one held-out site and one method.

    ``batches``: the joint-mode group of each test scan; adds ``auc_batch_cv``, the site AUC
    with each batch kept in one CV fold (see metrics.site_auc: removes anti-learning).
    ``changed``: (test with the anatomy change, its harmonized volumes); adds the per-scan,
    per-region retention ratios (``_retention``, pooled over sites by :func:`aggregate`).
    """
    vols = pd.concat([harmonized[C.REGIONS], reference[C.REGIONS]], ignore_index=True)
    cov = pd.concat([C.covariates(test), C.covariates(reference_df)], ignore_index=True)
    is_site = np.r_[np.ones(len(test), bool), np.zeros(len(reference), bool)]
    eff = metrics.residual_site_effect(vols, is_site, cov)
    agr = metrics.agreement(
        harmonized[C.REGIONS].reset_index(drop=True), oracle_test[C.REGIONS].reset_index(drop=True)
    )
    extra = {}
    if changed is not None:
        cols = [c for c in metrics.ANATOMY_CHANGE if c in C.REGIONS]
        extra["_retention"] = metrics.retention(
            test[cols].reset_index(drop=True),
            changed[0][cols].reset_index(drop=True),
            harmonized[cols].reset_index(drop=True),
            changed[1][cols].reset_index(drop=True),
        )
    extra["sd_ratio"] = float(
        np.median(harmonized[C.REGIONS].std().to_numpy() / oracle_test[C.REGIONS].std().to_numpy())
    )
    if batches is not None:
        groups = np.r_[np.asarray(batches, dtype=str), [f"ref{i}" for i in range(len(reference))]]
        extra["auc_batch_cv"] = metrics.site_auc(vols, is_site, cov, cv=5, seed=0, groups=groups)
    return extra | {
        "n_significant": int(eff["significant"].sum()),
        "n_regions": len(C.REGIONS),
        "mean_abs_difference_pct": float(np.abs(eff["difference_pct"]).mean()),
        "auc": metrics.site_auc(vols, is_site, cov, cv=5, seed=0),
        "r2": agr["r2"],
        "mae_pct": agr["mae_pct"],
        "age_corr_change": metrics.age_correlation_change(
            test[C.REGIONS].reset_index(drop=True),
            harmonized[C.REGIONS].reset_index(drop=True),
            test["age"].to_numpy(),
            test[C.SITE].to_numpy(),
        ),
        "n_scans": len(test),
    }


def aggregate(per_site: dict[str, dict], pooled: tuple[pd.DataFrame, pd.DataFrame] | None) -> dict:
    """Sum significant cells; average the rest over held-out sites (each site counts once)."""
    vals = list(per_site.values())
    out = {
        "n_significant": float(sum(v["n_significant"] for v in vals)),
        "denominator": int(sum(v["n_regions"] for v in vals)),
        "n_sites_with_effect": int(sum(v["n_significant"] > 0 for v in vals)),
    }
    out["pct_significant"] = 100.0 * out["n_significant"] / max(out["denominator"], 1)
    for key in (
        "auc",
        "auc_batch_cv",
        "r2",
        "mae_pct",
        "age_corr_change",
        "mean_abs_difference_pct",
        "sd_ratio",
    ):
        if key in vals[0]:
            out[key] = float(np.nanmean([v[key] for v in vals]))
    if "_retention" in vals[0]:
        # pooled over every changed scan of every held-out site
        out.update(metrics.summarize_retention(pd.concat([v["_retention"] for v in vals])))
    if pooled is not None:
        out["r2_pooled"] = metrics.agreement(*pooled)["r2"]
    return out


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sites", nargs="+", help="held-out sites to run (default: all 17)")
    p.add_argument("--drift", action="store_true", help="add the IQM-drift scenario (issue 8)")
    p.add_argument(
        "--n-scans",
        nargs="*",
        type=int,
        metavar="N",
        help="joint-mode curve: harmonize the new site N scans at a time (issue 7)",
    )
    p.add_argument("--repeats", type=int, default=3, help="random splits per N (default 3)")
    p.add_argument("--rows", nargs="+", default=["raw", "oracle", "original", "ours"])
    p.add_argument("--original-trees", type=int, default=100)
    p.add_argument("--ours", default="default", help="MODULE:FACTORY, factory(train) → apply")
    p.add_argument(
        "--variants",
        nargs="*",
        default=[],
        metavar="NAME",
        help="extra rows: factories of bench/_variants.py (e.g. fit_prior_only fit_weight_2)",
    )
    p.add_argument("--no-cache", action="store_true", help="recompute oracle/original")
    p.add_argument("--json", type=Path, help="write every figure (per site too) here")
    return p.parse_args(argv)


COLUMNS = [
    ("row", "row", ""),
    ("resid", "residual site effect", ""),
    ("pct_significant", "% cells", ".1f"),
    ("n_sites_with_effect", "sites with any", "d"),
    ("auc", "site AUC", ".3f"),
    ("r2", "R² vs oracle", ".3f"),
    ("r2_pooled", "R² pooled", ".3f"),
    ("mae_pct", "MAE % vs oracle", ".2f"),
    ("age_corr_change", "Δ age r", ".3f"),
    ("retention", "retention", ".3f"),
    ("retention_worst", "worst region", ".3f"),
    ("sd_ratio", "SD / oracle SD", ".3f"),
]


def _table(summary: dict[str, dict]) -> str:
    rows = []
    for name, agg in summary.items():
        rows.append(
            {"row": name, "resid": f"{agg['n_significant']:g} / {agg['denominator']}", **agg}
        )
    return C.markdown_table(rows, COLUMNS)


def _public(obj):
    """``obj`` without the private per-scan arrays (keys starting with ``_``), for JSON."""
    if isinstance(obj, dict):
        return {k: _public(v) for k, v in obj.items() if not str(k).startswith("_")}
    return obj


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    df = C.load_abide()
    all_sites = sorted(df[C.SITE].unique())
    sites = args.sites or all_sites
    unknown = sorted(set(sites) - set(all_sites))
    if unknown:
        sys.exit(f"unknown sites {unknown}; ABIDE sites: {' '.join(all_sites)}")
    mem = C.memory(not args.no_cache)
    oracle_fn = mem.cache(_oracle)
    reference_fn = mem.cache(_reference)
    original_fn = mem.cache(_original_predict)

    fit_factory, ours_name = (None, "not requested")
    if "ours" in args.rows:
        fit_factory, ours_name = load_ours(args.ours)
        if fit_factory is None:
            print(f"ours: not available ({ours_name})")

    variants = {}
    for name in args.variants:
        factory, why = load_ours(f"_variants:{name}")
        if factory is None:
            sys.exit(f"unknown variant {name}: {why}")
        variants[name] = factory
    oracle = oracle_fn(df[C.REGIONS], df[C.SITE].to_numpy(), C.covariates(df), CACHE_VERSION)
    scenarios = ["standard"] + (["drift"] if args.drift else [])
    per_site: dict[str, dict[str, dict[str, dict]]] = {sc: {} for sc in scenarios}
    pooled: dict[str, dict[str, list]] = {sc: {} for sc in scenarios}
    curve: dict[int, dict[str, dict]] = {}
    timings: dict[str, float] = {"oracle+reference": 0.0, "original": 0.0, "ours": 0.0}

    for s in sites:
        ts = time.perf_counter()
        is_test = (df[C.SITE] == s).to_numpy()
        train, test = df[~is_test], df[is_test]
        tests = {"standard": test}
        if args.drift:
            tests["drift"] = C.drift_iqms(test, seed=0)
        test_changed, _ = changed_half(test)
        changed_h: dict[str, pd.DataFrame] = {"raw": test_changed[C.REGIONS]}
        ref = reference_fn(
            train[C.REGIONS], train[C.SITE].to_numpy(), C.covariates(train), CACHE_VERSION
        )
        oracle_test, oracle_ref = oracle[is_test], oracle[~is_test]
        timings["oracle+reference"] += time.perf_counter() - ts
        methods: dict[str, dict[str, pd.DataFrame]] = {sc: {} for sc in scenarios}
        for sc, t in tests.items():
            if "raw" in args.rows:
                methods[sc]["raw"] = t[C.REGIONS]
        if "original" in args.rows:
            tt = time.perf_counter()
            preds = original_fn(train, test, args.original_trees, CACHE_VERSION)
            for sc in scenarios:
                methods[sc]["original"] = preds[sc]
            changed_h["original"] = preds["changed"]
            timings["original"] += time.perf_counter() - tt
        apply = None
        if fit_factory is not None:
            tt = time.perf_counter()
            apply = fit_factory(train)
            for sc, t in tests.items():
                methods[sc]["ours"] = apply(t, None)
            changed_h["ours"] = apply(test_changed, None)
            timings["ours"] += time.perf_counter() - tt
        for name, factory in variants.items():
            vapply = factory(train)
            methods["standard"][name] = vapply(test, None)
            changed_h[name] = vapply(test_changed, None)
        for sc in scenarios:
            for name, h in methods[sc].items():
                ch = (test_changed, changed_h[name]) if sc == "standard" else None
                r = evaluate(h, test, ref, train, oracle_test, changed=ch)
                per_site[sc].setdefault(name, {})[s] = r
                pooled[sc].setdefault(name, []).append((h[C.REGIONS], oracle_test[C.REGIONS]))
            if "oracle" in args.rows and sc == "standard":
                # ComBat with the site, refitted on the data with the changed held-out site
                both = df.copy()
                both.loc[is_test, C.REGIONS] = test_changed[C.REGIONS].to_numpy()
                oracle_changed = oracle_fn(
                    both[C.REGIONS], both[C.SITE].to_numpy(), C.covariates(both), CACHE_VERSION
                )[is_test]
                r = evaluate(
                    oracle_test, test, oracle_ref, train, oracle_test,
                    changed=(test_changed, oracle_changed),
                )  # fmt: skip
                per_site[sc].setdefault("oracle", {})[s] = r
                pooled[sc].setdefault("oracle", []).append((oracle_test, oracle_test))
        if apply is not None and args.n_scans:
            for n in args.n_scans:
                reps = []
                for rep in range(args.repeats):
                    rng = np.random.default_rng([rep, n, all_sites.index(s)])
                    perm = rng.permutation(len(test))
                    groups = np.empty(len(test), dtype=object)
                    for k, idx in enumerate(np.array_split(perm, max(1, len(test) // n))):
                        groups[idx] = f"{s}#group{k}"
                    labeled = test.assign(**{C.SITE: groups})
                    h = apply(labeled, C.SITE)
                    # issue 14: 10 % of the scans carry the anatomy change
                    few = np.zeros(len(test), dtype=bool)
                    few[rng.permutation(len(test))[: max(1, round(0.1 * len(test)))]] = True
                    t10 = metrics.inject_change(test, few)
                    h10 = apply(t10.assign(**{C.SITE: groups}), C.SITE)
                    reps.append(
                        evaluate(h, test, ref, train, oracle_test, batches=groups,
                                 changed=(t10, h10))
                    )  # fmt: skip
                curve.setdefault(n, {})[s] = {
                    k: float(np.mean([r[k] for r in reps])) for k in reps[0] if k != "_retention"
                } | {"_retention": pd.concat([r["_retention"] for r in reps])}
        done = {
            k: v["n_significant"]
            for k, v in ((k, per_site["standard"][k][s]) for k in per_site["standard"])
        }
        print(
            f"[{s}: n={len(test)}, {time.perf_counter() - ts:.1f}s] significant regions: {done}",
            file=sys.stderr,
        )

    summary: dict[str, dict[str, dict]] = {}
    for sc in scenarios:
        summary[sc] = {}
        for name in [
            r for r in ("raw", "oracle", "original", "ours", *variants) if r in per_site[sc]
        ]:
            pairs = pooled[sc][name]
            cat = (
                pd.concat([a for a, _ in pairs], ignore_index=True),
                pd.concat([b for _, b in pairs], ignore_index=True),
            )
            summary[sc][name] = aggregate(per_site[sc][name], cat)
    curve_summary = {n: aggregate(d, None) for n, d in curve.items()}

    print(
        f"\nLeave-one-site-out over {len(sites)} held-out site(s) of {len(all_sites)} "
        f"({len(df)} subjects, {len(C.REGIONS)} regions). ours: {ours_name}"
    )
    for sc in scenarios:
        title = {
            "standard": "Standard",
            "drift": "IQM drift on the held-out site (snrd×20, efc×0.7, snr×1.3, random ±10 %)",
        }[sc]
        print(f"\n### {title}\n")
        print(_table(summary[sc]))
    if curve_summary:
        print(
            "\n### ours, joint mode: the new site harmonized N scans at a time "
            f"(mean of {args.repeats} random splits)\n"
        )
        rows = [
            {"row": f"N = {n}", "resid": f"{a['n_significant']:.1f} / {a['denominator']}", **a}
            for n, a in curve_summary.items()
        ]
        curve_cols = [c for c in COLUMNS if c[0] != "r2_pooled"]
        curve_cols.insert(5, ("auc_batch_cv", "site AUC (batch CV)", ".3f"))
        print(C.markdown_table(rows, curve_cols))
    elif args.n_scans:
        print("\nN-scans curve: skipped (ours not available)")
    elapsed = time.perf_counter() - t0
    print(
        f"\nrun time {elapsed:.0f}s (oracle+reference {timings['oracle+reference']:.0f}s, "
        f"original {timings['original']:.0f}s, ours {timings['ours']:.0f}s); "
        f"cache: {'off' if args.no_cache else C.cache_dir()}"
    )

    if args.json:
        payload = {
            "command": " ".join(
                ["python", "bench/quality.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            "commit": C.git_commit(),
            "config": {
                "sites": sites,
                "rows": args.rows,
                "ours": ours_name,
                "original_trees": args.original_trees,
                "repeats": args.repeats,
                "n_scans": args.n_scans,
                "alpha": 0.05,
                "correction": "Bonferroni over regions, per held-out site",
            },
            "summary": summary,
            "per_site": _public(per_site),
            "n_scans_curve": {
                str(n): {"summary": curve_summary[n], "per_site": _public(curve[n])} for n in curve
            },
            "run_time_s": elapsed,
        }
        args.json.write_text(json.dumps(payload, indent=2, default=float))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
