"""Leave-one-site-out figures for a model card: how well an unseen site is harmonized.

For each site: fit on the others, harmonize the held-out site (one scan at a time, and jointly),
and compare with ComBat fitted on every site including it (the oracle).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import clone

from neuroharmony_bids.harmonize import metrics as M
from neuroharmony_bids.harmonize.combat import fit_combat
from neuroharmony_bids.harmonize.table import prepare


def _covariates(prep, table: pd.DataFrame, extra) -> pd.DataFrame:
    cov = pd.DataFrame({"age": prep.age, "sex": (prep.sex == "M").astype(float).to_numpy()})
    if prep.etiv is not None:
        cov["etiv"] = prep.etiv
    for c in extra:
        cov[c] = table[c].to_numpy()
    return cov


def loso_figures(model, table: pd.DataFrame, site_values: np.ndarray, sex_mapping=None) -> dict:
    """Per held-out site and in total: residual site effect, site AUC, R² vs oracle, Δage r."""
    table = table.reset_index(drop=True)
    prep = prepare(table, covariates=model.covariates, sex_mapping=sex_mapping)
    regions = model.regions_
    cols = [prep.region_columns[r] for r in regions]
    sites, codes = np.unique(site_values, return_inverse=True)
    design = model._design(prep)
    _, oracle = fit_combat(prep.volumes[regions].to_numpy(), codes, list(sites), design)
    oracle = pd.DataFrame(oracle, columns=regions)
    raw = prep.volumes[regions]
    cov = _covariates(prep, table, model.covariates)
    cols_of = set(regions)
    kept: dict[str, list[pd.DataFrame]] = {}
    rows = []
    for k, site in enumerate(sites):
        held = codes == k
        sub = clone(model)
        sub.fit(table[~held], site_values[~held], sex_mapping=sex_mapping)
        ref = pd.DataFrame(
            fit_combat(
                raw[~held].to_numpy(),
                np.unique(codes[~held], return_inverse=True)[1],
                [s for s in sites if s != site],
                sub._design(prepare(table[~held], covariates=model.covariates,
                                    sex_mapping=sex_mapping)),
            )[1],
            columns=regions,
        )  # fmt: skip
        variants = {"raw": raw[held]}
        # anatomy kept: half of the held-out scans get a known change (metrics.ANATOMY_CHANGE)
        held_table = table[held].reset_index(drop=True)
        half = np.arange(len(held_table)) % 2 == 0
        change = {prep.region_columns[r]: f for r, f in M.ANATOMY_CHANGE.items() if r in cols_of}
        changed_table = M.inject_change(held_table, half, change)
        for name, kw in (("single_scan", {}), ("joint_all", {"site_column": "_site"})):
            before, after = (
                sub.transform(t.assign(_site=site), sex_mapping=sex_mapping, **kw)
                for t in (held_table, changed_table)
            )
            variants[name] = before[cols].set_axis(regions, axis=1)
            kept.setdefault(name, []).append(
                M.retention(
                    held_table[list(change)], changed_table[list(change)],
                    before[list(change)], after[list(change)],
                )
            )  # fmt: skip
        flags = np.r_[np.ones(held.sum(), bool), np.zeros((~held).sum(), bool)]
        cov_pair = pd.concat([cov[held], cov[~held]], ignore_index=True)
        for name, vol in variants.items():
            pair = pd.concat([vol.reset_index(drop=True), ref], ignore_index=True)
            eff = M.residual_site_effect(pair, flags, cov_pair)
            agree = M.agreement(vol.reset_index(drop=True), oracle[held].reset_index(drop=True))
            sd_ratio = np.median(vol.std().to_numpy() / oracle[held].std().to_numpy())
            rows.append(
                {
                    "site": str(site),
                    "method": name,
                    "sd_ratio": float(sd_ratio),
                    "n_significant": int(eff["significant"].sum()),
                    "auc": M.site_auc(pair, flags, cov_pair),
                    "r2": agree["r2"],
                    "mae_pct": agree["mae_pct"],
                    "age_r_change": M.age_correlation_change(
                        raw[held].reset_index(drop=True),
                        vol.reset_index(drop=True),
                        prep.age[held],
                        np.zeros(held.sum()),
                    ),
                }
            )
    per_site = pd.DataFrame(rows)
    total = (
        per_site.groupby("method")
        .agg(
            n_significant=("n_significant", "sum"),
            auc=("auc", "mean"),
            r2=("r2", "mean"),
            mae_pct=("mae_pct", "mean"),
            age_r_change=("age_r_change", "mean"),
            sd_ratio=("sd_ratio", "mean"),
        )
        .round(4)
    )
    # anatomy kept, pooled over every held-out changed scan (raw keeps it by definition)
    total["retention"], total["retention_worst"] = 1.0, 1.0
    worst = {}
    for method, frames in kept.items():
        ret = M.summarize_retention(pd.concat(frames))
        total.loc[method, "retention"] = round(ret["retention"], 4)
        total.loc[method, "retention_worst"] = round(ret["retention_worst"], 4)
        worst[method] = ret["worst_region"]
    return {
        "n_regions": len(regions),
        "n_sites": len(sites),
        "summary": {m: total.loc[m].to_dict() for m in total.index},
        "retention_worst_region": worst,
        "anatomy_change": dict(M.ANATOMY_CHANGE),
        "per_site": per_site.round(4).to_dict(orient="records"),
    }
