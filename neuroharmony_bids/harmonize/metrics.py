"""Site-effect measures shared by ``bench/quality`` and the group report.

Every measure asks one question: after harmonization, can a scan's site still be told apart
from the reference, once biology (age, sex, diagnosis, head size) is accounted for? They are
pure numpy / scipy / scikit-learn, vectorized across regions (one least-squares solve for all
regions, never a loop of per-region model fits), and deterministic for a given ``seed``.

Conventions
-----------
``volumes``
    DataFrame, one row per scan, one column per region (any spelling; only numbers matter).
``site``
    Either a boolean array (True = the scans under test, False = the reference) for the
    two-group tests, or an array of site labels for the multi-site versions.
``covariates``
    DataFrame with the same rows. Numeric columns enter linearly (z-scored); a column named
    ``age`` (any case) also enters squared, since regional volumes are curved over the
    lifespan; non-numeric columns (e.g. ``sex`` as M/F, ``dx`` as ASD/TDC) are one-hot
    encoded. Constant columns are dropped, so a subset with a single sex still works.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from neuroharmony_bids.errors import DataError

__all__ = [
    "covariate_design",
    "residual_site_effect",
    "site_effect_ttest",
    "site_effect_ftest",
    "residualize",
    "site_auc",
    "subsample_per_site",
    "agreement",
    "agreement_by_region",
    "within_site_age_correlation",
    "age_correlation_change",
    "ANATOMY_CHANGE",
    "inject_change",
    "retention",
    "summarize_retention",
]


# --------------------------------------------------------------------------- helpers


def _as_matrix(volumes: pd.DataFrame) -> np.ndarray:
    """Float matrix of the volumes; refuse NaN/inf, which would silently bias every test."""
    y = volumes.to_numpy(dtype=float)
    if y.ndim != 2:
        raise DataError("volumes must be a 2-D table (rows = scans, columns = regions)")
    bad = ~np.isfinite(y)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"volumes: non-finite value in column {volumes.columns[col]!r}, row "
            f"{volumes.index[row]!r}; drop or impute such rows before measuring site effects"
        )
    return y


def covariate_design(covariates: pd.DataFrame | None, n: int | None = None) -> np.ndarray:
    """Biological covariate columns (no intercept): z-scored numerics, age², one-hot categories.

    Z-scoring keeps ``age`` and ``age²`` well conditioned; the fitted values, and so every
    test below, do not depend on it.
    """
    if covariates is None or covariates.shape[1] == 0:
        if n is None:
            raise ValueError("n is required when there are no covariates")
        return np.empty((n, 0))
    cols: list[np.ndarray] = []
    for name in covariates.columns:
        s = covariates[name]
        if s.isna().any():
            row = s.index[s.isna().to_numpy()][0]
            raise DataError(f"covariates: missing value in column {name!r}, row {row!r}")
        if pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
            levels = sorted(pd.unique(s.astype(str)))
            for lev in levels[1:]:
                cols.append((s.astype(str) == lev).to_numpy(dtype=float))
            continue
        x = s.to_numpy(dtype=float)
        if not np.isfinite(x).all():
            raise DataError(f"covariates: non-finite value in column {name!r}")
        sd = x.std()
        if sd == 0:
            continue
        z = (x - x.mean()) / sd
        cols.append(z)
        if str(name).lower() == "age":
            cols.append(z**2 - np.mean(z**2))
    if not cols:
        return np.empty((len(covariates), 0))
    design = np.column_stack(cols)
    keep = design.std(axis=0) > 0
    return design[:, keep]


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """One least-squares solve for all regions: (coefficients, RSS per region, dof, (X'X)⁺)."""
    beta, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ beta
    rss = np.einsum("ij,ij->j", resid, resid)
    dof = x.shape[0] - int(rank)
    return beta, rss, dof, np.linalg.pinv(x.T @ x)


def _site_labels(site: Sequence | np.ndarray | pd.Series, n: int) -> np.ndarray:
    arr = np.asarray(site)
    if arr.shape != (n,):
        raise DataError(f"site has {arr.shape[0] if arr.ndim else 0} entries for {n} scans")
    return arr


def _bonferroni(p: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    m = max(len(p), 1)
    p_adj = np.minimum(p * m, 1.0)
    return p_adj, p_adj < alpha


# --------------------------------------------------------------------------- residual site effect


def site_effect_ttest(
    volumes: pd.DataFrame,
    is_site: Sequence[bool] | np.ndarray,
    covariates: pd.DataFrame | None,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Per region, does the site differ from the reference after biology? (OLS t-test).

    Model, per region: volume ~ 1 + is_site + age + age² + sex + dx + eTIV (whatever covariates
    are given). The coefficient of ``is_site`` is the residual site effect; regions are
    significant after Bonferroni over regions. Columns: ``difference`` (volume units),
    ``difference_pct`` (% of the reference mean), ``stat`` (t), ``df``, ``p``, ``p_adj``,
    ``significant``.
    """
    y = _as_matrix(volumes)
    flag = _site_labels(is_site, len(y)).astype(bool)
    n_site = int(flag.sum())
    if n_site == 0 or n_site == len(flag):
        raise DataError("site_effect_ttest needs scans both in the site and in the reference")
    x = np.column_stack([np.ones(len(y)), flag.astype(float), covariate_design(covariates, len(y))])
    beta, rss, dof, xtx_inv = _ols(x, y)
    if dof <= 0:
        raise DataError(
            "too few scans for the number of covariates (no residual degrees of freedom)"
        )
    se = np.sqrt(rss / dof * max(xtx_inv[1, 1], 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, beta[1] / se, 0.0)
    p = 2.0 * stats.t.sf(np.abs(t), dof)
    p_adj, sig = _bonferroni(p, alpha)
    ref_mean = y[~flag].mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        pct = 100.0 * beta[1] / np.abs(ref_mean)
    return pd.DataFrame(
        {
            "difference": beta[1],
            "difference_pct": pct,
            "stat": t,
            "df": dof,
            "p": p,
            "p_adj": p_adj,
            "significant": sig,
        },
        index=pd.Index(volumes.columns, name="region"),
    )


def site_effect_ftest(
    volumes: pd.DataFrame,
    site: Sequence | np.ndarray,
    covariates: pd.DataFrame | None,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Per region, does any of k sites differ after biology? (OLS F-test, k − 1 df).

    Compares volume ~ 1 + covariates + site dummies with volume ~ 1 + covariates; Bonferroni
    over regions. This is the group report's "regions with a significant site effect among the
    k sites". Columns: ``stat`` (F), ``df1``, ``df2``, ``p``, ``p_adj``, ``significant``,
    ``eta2_partial`` (share of residual variance the sites explain).
    """
    y = _as_matrix(volumes)
    labels = _site_labels(site, len(y)).astype(str)
    levels = np.unique(labels)
    if len(levels) < 2:
        raise DataError("site_effect_ftest needs at least two sites")
    cov = covariate_design(covariates, len(y))
    dummies = (labels[:, None] == levels[None, 1:]).astype(float)
    x_red = np.column_stack([np.ones(len(y)), cov])
    x_full = np.column_stack([x_red, dummies])
    _, rss_red, dof_red, _ = _ols(x_red, y)
    _, rss_full, dof_full, _ = _ols(x_full, y)
    df1 = dof_red - dof_full
    if dof_full <= 0 or df1 <= 0:
        raise DataError(
            "sites are confounded with the covariates or there are too few scans: "
            "the site effect cannot be separated from biology"
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(rss_full > 0, ((rss_red - rss_full) / df1) / (rss_full / dof_full), 0.0)
        eta2 = np.where(rss_red > 0, (rss_red - rss_full) / rss_red, 0.0)
    p = stats.f.sf(f, df1, dof_full)
    p_adj, sig = _bonferroni(p, alpha)
    return pd.DataFrame(
        {
            "stat": f,
            "df1": df1,
            "df2": dof_full,
            "p": p,
            "p_adj": p_adj,
            "significant": sig,
            "eta2_partial": eta2,
        },
        index=pd.Index(volumes.columns, name="region"),
    )


def residual_site_effect(
    volumes: pd.DataFrame,
    site: Sequence | np.ndarray,
    covariates: pd.DataFrame | None,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Residual site effect per region: t-test if ``site`` is boolean, F-test if labels.

    Boolean ``site`` = held-out site (True) vs reference (False), as in the leave-one-site-out
    benchmark; labels = all sites at once, as in the group report.
    """
    arr = np.asarray(site)
    if arr.dtype == bool:
        return site_effect_ttest(volumes, arr, covariates, alpha)
    return site_effect_ftest(volumes, arr, covariates, alpha)


# --------------------------------------------------------------------------- site classifier


def residualize(
    volumes: pd.DataFrame, site: Sequence | np.ndarray, covariates: pd.DataFrame | None
) -> pd.DataFrame:
    """Remove the biological covariates' linear part, estimated *within* sites.

    The OLS fit is volume ~ 1 + site dummies + covariates on all scans; only the covariate
    part is subtracted. Keeping the site dummies in the fit means a site that is, say, younger
    than the reference does not lend its site effect to the age slope (which fitting the
    covariates alone, or on the reference alone and extrapolating, would do), so what is left
    is site effect + noise.
    """
    y = _as_matrix(volumes)
    labels = _site_labels(site, len(y)).astype(str)
    levels = np.unique(labels)
    cov = covariate_design(covariates, len(y))
    if cov.shape[1] == 0:
        return volumes.astype(float).copy()
    dummies = (labels[:, None] == levels[None, 1:]).astype(float)
    x = np.column_stack([np.ones(len(y)), dummies, cov])
    beta, *_ = _ols(x, y)
    k = 1 + dummies.shape[1]
    out = y - cov @ beta[k:]
    return pd.DataFrame(out, index=volumes.index, columns=volumes.columns)


def _binary_auc(
    x: np.ndarray,
    target: np.ndarray,
    cv: int,
    seed: int,
    c: float,
    groups: np.ndarray | None = None,
) -> float:
    if groups is None:
        n_pos = int(target.sum())
        n_neg = len(target) - n_pos
    else:
        n_pos = len(np.unique(groups[target == 1]))
        n_neg = len(np.unique(groups[target == 0]))
    folds = min(cv, n_pos, n_neg)
    if folds < 2:
        return float("nan")
    clf = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=c, class_weight="balanced", max_iter=2000),
    )
    if groups is None:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    else:
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(
        clf, x, target, groups=groups, cv=splitter, method="decision_function"
    )
    return float(roc_auc_score(target, scores))


#: The classifier's matrices are small (a few hundred scans by a hundred regions): BLAS threads
#: cost more than they save there (measured at 5,000 scans, 17 sites on 2 cores: 0.6-1.7 s of
#: CPU per AUC with 2 OpenBLAS threads, 0.2 s with one), so the fits run on one.
_ONE_BLAS_THREAD = threadpool_limits.wrap(limits=1, user_api="blas")


@_ONE_BLAS_THREAD
def site_auc(
    volumes: pd.DataFrame,
    site: Sequence | np.ndarray,
    covariates: pd.DataFrame | None,
    cv: int = 5,
    seed: int = 0,
    c: float = 1.0,
    groups: Sequence | np.ndarray | None = None,
    max_per_site: int | None = None,
    tol: float = 1e-4,
) -> float:
    """Cross-validated ROC AUC of a site-vs-rest classifier on residualized volumes (0.5 = chance).

    Volumes are first residualized on the covariates (:func:`residualize`, fitted within
    sites on all scans), then a standardized, class-balanced L2 logistic regression is
    evaluated with stratified ``cv``-fold CV; the AUC is computed on the pooled out-of-fold
    scores. With boolean ``site`` this is the held-out-site-vs-reference AUC; with labels it
    is the macro one-vs-rest AUC of one multinomial classifier (sites with fewer than 2 scans
    are dropped; two sites fall back to the binary case). A univariate test can miss a site effect spread thinly over many regions; the classifier
    sees the whole regional profile.

    ``groups`` (boolean ``site`` only): scans harmonized together (one label per harmonization
    batch; give every reference scan its own label) are kept in one fold. Use it when the
    harmonizer saw the site's scans jointly: a harmonizer that equalizes a batch's mean
    in-sample makes every training fold's mean difference the mirror of the left-out fold's,
    and plain CV then *anti-learns* (AUC far below 0.5). With groups, each fold holds whole
    batches, so that artefact is gone (NaN if there are fewer than 2 batches). A weaker one
    remains if the batches were matched to the mean of these very reference scans.

    Floor: when a site's covariates barely overlap the reference's (e.g. only adults against
    children), the estimation error of the covariate curve leaves a structured residual the
    classifier can use, so even perfectly harmonized data score somewhat above 0.5. Compare
    methods on the same scans; ComBat-with-the-site shows the attainable floor.

    ``max_per_site`` (site labels only): the classifier sees at most this many scans per site,
    drawn by :func:`subsample_per_site` with ``seed`` (residualization still uses every scan).
    The multinomial fit grows faster than linearly with the scans, so a fixed cap keeps the
    group report's cost flat at UK-Biobank scale; callers should say that they subsampled.
    ``tol``: the solver's stopping tolerance (1e-3 moved the ABIDE multi-site AUC by 1e-4 at
    a third of the time).
    """
    arr = np.asarray(site)
    resid = residualize(volumes, arr, covariates).to_numpy()
    if arr.dtype == bool:
        g = None if groups is None else np.asarray(groups).astype(str)
        return _binary_auc(resid, arr.astype(int), cv, seed, c, g)
    if groups is not None:
        raise ValueError("groups is only supported with a boolean site (site vs reference)")
    labels = arr.astype(str)
    if max_per_site is not None:
        rows = subsample_per_site(labels, max_per_site, seed)
        resid, labels = resid[rows], labels[rows]
    levels, counts = np.unique(labels, return_counts=True)
    keep = np.isin(labels, levels[counts >= 2])
    if len(levels[counts >= 2]) < 2:
        return float("nan")
    if len(levels[counts >= 2]) == 2:
        return _binary_auc(resid[keep], (labels[keep] == levels[counts >= 2][0]).astype(int),
                           cv, seed, c)  # fmt: skip
    # one multinomial classifier, scored one-vs-rest per site (macro mean): k sites cost one
    # fit per fold instead of k
    folds = min(cv, int(counts[counts >= 2].min()))
    clf = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=c, class_weight="balanced", max_iter=2000, tol=tol),
    )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    proba = cross_val_predict(clf, resid[keep], labels[keep], cv=splitter, method="predict_proba")
    return float(roc_auc_score(labels[keep], proba, multi_class="ovr", average="macro"))


def subsample_per_site(
    labels: Sequence | np.ndarray, max_per_site: int, seed: int = 0
) -> np.ndarray:
    """Row indices (ascending) keeping at most ``max_per_site`` random scans of each site.

    Deterministic for a given ``seed``; sites with fewer scans keep them all.
    """
    if max_per_site < 1:
        raise ValueError("max_per_site must be at least 1")
    arr = np.asarray(labels).astype(str)
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    for lev in np.unique(arr):  # sorted, so the draws do not depend on row order of sites
        rows = np.flatnonzero(arr == lev)
        if len(rows) > max_per_site:
            rows = rng.choice(rows, size=max_per_site, replace=False)
        keep.append(rows)
    return np.sort(np.concatenate(keep)) if keep else np.empty(0, dtype=int)


# --------------------------------------------------------------------------- agreement with oracle


def agreement_by_region(harmonized: pd.DataFrame, oracle: pd.DataFrame) -> pd.DataFrame:
    """Per region R² and MAE (% of the oracle's mean volume) of harmonized vs oracle volumes.

    R² = 1 − Σ(h − o)² / Σ(o − ō)² over the rows given (so it can be negative when the
    harmonizer is worse than predicting the oracle's mean).
    """
    if list(harmonized.columns) != list(oracle.columns) or len(harmonized) != len(oracle):
        raise DataError("harmonized and oracle must have the same rows and region columns")
    h = _as_matrix(harmonized)
    o = _as_matrix(oracle)
    sse = ((h - o) ** 2).sum(axis=0)
    sst = ((o - o.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(sst > 0, 1.0 - sse / sst, np.nan)
        mae_pct = 100.0 * np.abs(h - o).mean(axis=0) / np.abs(o).mean(axis=0)
    return pd.DataFrame(
        {"r2": r2, "mae_pct": mae_pct}, index=pd.Index(harmonized.columns, name="region")
    )


def agreement(harmonized: pd.DataFrame, oracle: pd.DataFrame) -> dict[str, float]:
    """How close harmonized volumes are to ComBat-fitted-with-the-site: mean R², mean MAE%.

    Means over regions of :func:`agreement_by_region`, so each region counts equally whatever
    its size.
    """
    by = agreement_by_region(harmonized, oracle)
    return {"r2": float(np.nanmean(by["r2"])), "mae_pct": float(np.nanmean(by["mae_pct"]))}


# --------------------------------------------------------------------------- biology preserved


def within_site_age_correlation(
    volumes: pd.DataFrame, age: Sequence[float] | np.ndarray, site: Sequence | np.ndarray
) -> pd.DataFrame:
    """Pearson r of each region with age within each site (rows: sites, columns: regions).

    Sites with fewer than 3 scans or no age spread give NaN.
    """
    y = _as_matrix(volumes)
    a = np.asarray(age, dtype=float)
    labels = _site_labels(site, len(y)).astype(str)
    levels = np.unique(labels)
    out = np.full((len(levels), y.shape[1]), np.nan)
    for i, lev in enumerate(levels):  # a loop over sites, vectorized over regions
        m = labels == lev
        if m.sum() < 3:
            continue
        ac = a[m] - a[m].mean()
        yc = y[m] - y[m].mean(axis=0)
        den = np.sqrt((ac**2).sum() * (yc**2).sum(axis=0))
        with np.errstate(divide="ignore", invalid="ignore"):
            out[i] = np.where(den > 0, ac @ yc / den, np.nan)
    return pd.DataFrame(out, index=pd.Index(levels, name="site"), columns=volumes.columns)


def age_correlation_change(
    before: pd.DataFrame,
    after: pd.DataFrame,
    age: Sequence[float] | np.ndarray,
    site: Sequence | np.ndarray,
) -> float:
    """Mean |Δr| of each region's within-site correlation with age, before vs after.

    Harmonization should move scans between scanners, not reorder them by age inside one:
    a per-scan correction that depends on age (or on anything correlated with it) shows up
    here. Averaged over site × region cells where both correlations are defined.
    """
    if list(before.columns) != list(after.columns) or len(before) != len(after):
        raise DataError("before and after must have the same rows and region columns")
    r0 = within_site_age_correlation(before, age, site).to_numpy()
    r1 = within_site_age_correlation(after, age, site).to_numpy()
    d = np.abs(r1 - r0)
    return float(np.nanmean(d)) if np.isfinite(d).any() else float("nan")


# --------------------------------------------------------------------------- anatomy kept

#: Issue 14's known change (canonical FreeSurfer 7 names → factor): medial temporal atrophy
#: of 10 % and 15 % larger lateral ventricles, as in Alzheimer's disease.
ANATOMY_CHANGE: dict[str, float] = {
    **{f"{h}-{r}": 0.90 for h in ("Left", "Right") for r in ("Hippocampus", "Amygdala")},
    **{f"{h}_{r}_volume": 0.90 for h in ("lh", "rh") for r in ("entorhinal", "parahippocampal")},
    **{f"{h}-Lateral-Ventricle": 1.15 for h in ("Left", "Right")},
}


def inject_change(
    volumes: pd.DataFrame, rows: np.ndarray, change: dict[str, float] | None = None
) -> pd.DataFrame:
    """A copy of ``volumes`` with ``change`` (column → factor) applied to the ``rows`` mask."""
    change = ANATOMY_CHANGE if change is None else change
    out = volumes.copy()
    mask = np.asarray(rows, dtype=bool)
    for col, factor in change.items():
        if col in out.columns:
            out.loc[mask, col] = out.loc[mask, col].astype(float) * factor
    return out


def retention(
    raw: pd.DataFrame, raw_changed: pd.DataFrame, harm: pd.DataFrame, harm_changed: pd.DataFrame
) -> pd.DataFrame:
    """Change out / change in, per changed scan and changed column (1 = anatomy fully kept).

    Only rows and columns where the raw volumes differ are returned.
    """
    din = raw_changed.to_numpy(dtype=float) - raw.to_numpy(dtype=float)
    dout = harm_changed.to_numpy(dtype=float) - harm.to_numpy(dtype=float)
    rows = np.flatnonzero(np.abs(din).max(axis=1) > 0)
    cols = np.flatnonzero(np.abs(din).max(axis=0) > 0)
    ratio = dout[np.ix_(rows, cols)] / din[np.ix_(rows, cols)]
    return pd.DataFrame(ratio, index=raw.index[rows], columns=raw.columns[cols])


def summarize_retention(ratios: pd.DataFrame) -> dict[str, float | str]:
    """Median over changed scans (of each scan's median over regions) and the worst region.

    The worst region is the changed region with the lowest median retention over scans.
    """
    if ratios.empty:
        return {"retention": float("nan"), "retention_worst": float("nan"), "worst_region": ""}
    by_region = ratios.median(axis=0)
    return {
        "retention": float(np.median(ratios.median(axis=1))),
        "retention_worst": float(by_region.min()),
        "worst_region": str(by_region.idxmin()),
    }
