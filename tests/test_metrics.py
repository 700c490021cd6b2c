"""Site-effect measures on synthetic cohorts with a planted site effect (and without one)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neuroharmony_bids.errors import DataError
from neuroharmony_bids.harmonize import metrics

N_REGIONS = 20
PLANTED = [0, 3, 7, 11, 15]


def cohort(
    seed: int,
    n_per_site: int = 80,
    n_sites: int = 4,
    shift_sd: float = 0.0,
    shifted_site: int = 0,
    older_site: bool = False,
    older_by: float = 20.0,
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Volumes with real biology (age curve, sex, dx, eTIV) and an optional site shift.

    ``shift_sd`` adds that many noise SDs to the PLANTED regions of ``shifted_site``.
    ``older_site`` makes that site ``older_by`` years older on average: confounding, not a site effect.
    """
    rng = np.random.default_rng(seed)
    n = n_per_site * n_sites
    site = np.repeat([f"s{i}" for i in range(n_sites)], n_per_site)
    age = rng.uniform(8, 40, n)
    if older_site:
        age[site == f"s{shifted_site}"] += older_by
    sex = rng.choice(["M", "F"], n, p=[0.7, 0.3])
    dx = rng.choice(["ASD", "TDC"], n)
    etiv = rng.normal(1.5e6, 1.2e5, n) + (sex == "M") * 1e5
    base = np.random.default_rng(1234).uniform(1e3, 2e4, N_REGIONS)  # same regions always
    noise_sd = 0.05 * base
    age_c = (age - 25) / 10
    vol = (
        base
        + np.outer(-0.04 * age_c + 0.002 * age_c**2, base)
        + np.outer(etiv / 1.5e6 - 1, 0.5 * base)
        + np.outer(sex == "M", 0.02 * base)
        + np.outer(dx == "ASD", 0.01 * base)
        + rng.normal(0, 1, (n, N_REGIONS)) * noise_sd
    )
    if shift_sd:
        m = site == f"s{shifted_site}"
        vol[np.ix_(m, PLANTED)] += shift_sd * noise_sd[PLANTED]
    volumes = pd.DataFrame(vol, columns=[f"r{j}" for j in range(N_REGIONS)])
    covariates = pd.DataFrame({"age": age, "sex": sex, "dx": dx, "etiv": etiv})
    return volumes, covariates, site


def test_ttest_detects_planted_regions_only():
    vol, cov, site = cohort(seed=1, shift_sd=1.0)
    res = metrics.residual_site_effect(vol, site == "s0", cov)
    assert list(res.index) == list(vol.columns)
    detected = set(np.flatnonzero(res["significant"].to_numpy()))
    assert detected == set(PLANTED)
    # the estimated difference recovers the planted shift (1 noise SD = 5 % of the volume)
    assert np.allclose(res["difference_pct"].iloc[PLANTED], 5.0, atol=1.5)
    assert (res["stat"].iloc[PLANTED] > 0).all()


def test_ttest_no_site_effect_detects_nothing():
    vol, cov, site = cohort(seed=2, shift_sd=0.0)
    res = metrics.residual_site_effect(vol, site == "s0", cov)
    assert res["significant"].sum() <= 1
    assert (res["p_adj"] >= res["p"]).all()


def test_confounded_age_is_not_a_site_effect():
    """A site that is only older must not show a site effect once age is a covariate."""
    vol, cov, site = cohort(seed=3, shift_sd=0.0, older_site=True)
    is_site = site == "s0"
    adjusted = metrics.residual_site_effect(vol, is_site, cov)
    unadjusted = metrics.residual_site_effect(vol, is_site, None)
    assert adjusted["significant"].sum() == 0
    assert unadjusted["significant"].sum() >= N_REGIONS // 2


def test_ftest_multisite():
    vol, cov, site = cohort(seed=4, shift_sd=1.0, shifted_site=2)
    res = metrics.residual_site_effect(vol, site, cov)
    assert {"stat", "df1", "df2", "p", "significant", "eta2_partial"} <= set(res.columns)
    assert (res["df1"] == 3).all()
    assert set(np.flatnonzero(res["significant"].to_numpy())) == set(PLANTED)
    null_vol, null_cov, null_site = cohort(seed=5, shift_sd=0.0)
    # family-wise error 5 %: at most one chance finding among 20 regions
    assert metrics.site_effect_ftest(null_vol, null_site, null_cov)["significant"].sum() <= 1


@pytest.mark.parametrize("test", ["ttest", "ftest"])
def test_pvalues_are_calibrated_under_the_null(test):
    """Without a site effect, 5 % of uncorrected p-values fall below 0.05 (no anticonservatism)."""
    pvals = []
    for seed in range(100, 140):
        vol, cov, site = cohort(seed=seed, n_per_site=40)
        arg = site == "s0" if test == "ttest" else site
        pvals.append(metrics.residual_site_effect(vol, arg, cov)["p"].to_numpy())
    frac = (np.concatenate(pvals) < 0.05).mean()
    assert 0.025 < frac < 0.075


def test_site_auc_planted_vs_null():
    vol, cov, site = cohort(seed=6, shift_sd=1.0)
    auc = metrics.site_auc(vol, site == "s0", cov, cv=5, seed=0)
    assert auc > 0.85
    null_vol, null_cov, null_site = cohort(seed=7, shift_sd=0.0)
    null_auc = metrics.site_auc(null_vol, null_site == "s0", null_cov, cv=5, seed=0)
    assert abs(null_auc - 0.5) < 0.1
    # deterministic for a seed
    assert metrics.site_auc(vol, site == "s0", cov, cv=5, seed=0) == auc


def test_site_auc_residualization_removes_confounded_biology():
    vol, cov, site = cohort(seed=8, shift_sd=0.0, older_site=True)
    is_site = site == "s0"
    unadjusted = metrics.site_auc(vol, is_site, None)
    adjusted = metrics.site_auc(vol, is_site, cov)
    assert unadjusted > 0.75  # age alone gives the site away
    # residualizing removes most of it; what is left (documented floor) comes from estimating
    # the age curve where the site's ages barely overlap the reference's
    assert adjusted < 0.7
    assert adjusted < unadjusted - 0.1


def test_site_auc_multisite_mean_one_vs_rest():
    vol, cov, site = cohort(seed=9, shift_sd=3.0, shifted_site=1)
    multi = metrics.site_auc(vol, site, cov)
    per_site = [metrics.site_auc(vol, site == s, cov) for s in np.unique(site)]
    # residualization differs slightly (all site dummies vs one), so close, not identical
    assert multi == pytest.approx(np.mean(per_site), abs=0.03)
    assert max(per_site) > 0.95
    null_vol, null_cov, null_site = cohort(seed=10, shift_sd=0.0)
    assert abs(metrics.site_auc(null_vol, null_site, null_cov) - 0.5) < 0.1


def test_residualize_keeps_site_effect_removes_age():
    vol, cov, site = cohort(seed=11, shift_sd=2.0, older_site=True)
    res = metrics.residualize(vol, site == "s0", cov)
    age = cov["age"].to_numpy()
    for lev in np.unique(site):
        m = site == lev
        r = np.corrcoef(age[m], res.to_numpy()[m, 1])[0, 1]
        assert abs(r) < 0.3
    m = site == "s0"
    gap = res.iloc[:, PLANTED].to_numpy()[m].mean(0) - res.iloc[:, PLANTED].to_numpy()[~m].mean(0)
    assert (gap > 0).all()


def test_agreement():
    vol, _, _ = cohort(seed=12)
    same = metrics.agreement(vol, vol)
    assert same == {"r2": 1.0, "mae_pct": 0.0}
    off = vol * 1.02  # every volume 2 % too large
    res = metrics.agreement(off, vol)
    assert res["mae_pct"] == pytest.approx(2.0, rel=1e-9)
    assert res["r2"] < 1.0
    by = metrics.agreement_by_region(off, vol)
    manual = 1 - ((off - vol) ** 2).sum() / ((vol - vol.mean()) ** 2).sum()
    assert np.allclose(by["r2"], manual)
    # predicting the oracle's mean gives R² = 0
    mean_pred = pd.DataFrame(np.broadcast_to(vol.mean().to_numpy(), vol.shape), columns=vol.columns)
    assert metrics.agreement(mean_pred, vol)["r2"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(DataError):
        metrics.agreement(vol.iloc[:, :3], vol)


def test_age_correlation_change():
    vol, cov, site = cohort(seed=13)
    age = cov["age"].to_numpy()
    assert metrics.age_correlation_change(vol, vol, age, site) == 0.0
    # a per-site location/scale change (what ComBat does) keeps within-site correlations
    shifted = vol.copy()
    for k, lev in enumerate(np.unique(site)):
        shifted[site == lev] = shifted[site == lev] * (1 + 0.1 * k) + 500 * k
    assert metrics.age_correlation_change(vol, shifted, age, site) == pytest.approx(0, abs=1e-12)
    # an age-dependent correction changes them
    distorted = vol.add(np.outer(age - age.mean(), 0.01 * vol.mean().to_numpy()))
    assert metrics.age_correlation_change(vol, distorted, age, site) > 0.1
    r = metrics.within_site_age_correlation(vol, age, site)
    assert r.shape == (4, N_REGIONS)
    assert (r.to_numpy() < 0).mean() > 0.5  # the planted volume decline with age


def test_bad_input_is_refused():
    vol, cov, site = cohort(seed=14)
    bad = vol.copy()
    bad.iloc[5, 2] = np.nan
    with pytest.raises(DataError, match="r2"):
        metrics.residual_site_effect(bad, site == "s0", cov)
    with pytest.raises(DataError):
        metrics.residual_site_effect(vol, np.zeros(len(vol), bool), cov)
    with pytest.raises(DataError):
        metrics.residual_site_effect(vol, (site == "s0")[:-1], cov)
    bad_cov = cov.copy()
    bad_cov.loc[3, "age"] = np.nan
    with pytest.raises(DataError, match="age"):
        metrics.site_auc(vol, site == "s0", bad_cov)


def test_site_auc_groups_remove_anti_learning():
    """Batches whose mean was equalized in-sample: plain CV anti-learns, group CV does not."""
    vol, cov, site = cohort(seed=15, shift_sd=2.0)
    is_site = site == "s0"
    idx = np.flatnonzero(is_site)
    batch = np.array([f"ref{i}" for i in range(len(vol))], dtype=object)
    batch[idx] = [f"b{k // 10}" for k in range(len(idx))]  # batches of 10 site scans
    # an over-fitted joint harmonizer: every batch's mean set exactly to the reference
    # population's mean (estimated on an independent large cohort, not on these scans)
    harmonized = vol.copy()
    ref_mean = cohort(seed=99, n_per_site=2000, n_sites=1)[0].mean()
    for b in np.unique(batch[idx]):
        rows = batch == b
        harmonized[rows] = vol[rows] - vol[rows].mean() + ref_mean
    plain = metrics.site_auc(harmonized, is_site, None)
    grouped = metrics.site_auc(harmonized, is_site, None, groups=batch)
    assert plain < 0.42
    assert abs(grouped - 0.5) < 0.1
    # with the site effect left in, group CV still detects it
    assert metrics.site_auc(vol, is_site, None, groups=batch) > 0.85
    # one batch = no honest split
    one = np.where(is_site, "all", batch)
    assert np.isnan(metrics.site_auc(harmonized, is_site, None, groups=one))


def test_subsample_per_site_caps_each_site_deterministically():
    labels = np.array(["a"] * 30 + ["b"] * 5 + ["c"] * 12)
    rows = metrics.subsample_per_site(labels, 10, seed=3)
    kept = pd.Series(labels[rows]).value_counts().to_dict()
    assert kept == {"a": 10, "c": 10, "b": 5}
    assert np.all(np.diff(rows) > 0)
    assert np.array_equal(rows, metrics.subsample_per_site(labels, 10, seed=3))
    assert not np.array_equal(rows, metrics.subsample_per_site(labels, 10, seed=4))
    with pytest.raises(ValueError, match="at least 1"):
        metrics.subsample_per_site(labels, 0)


def test_site_auc_capped_per_site_still_finds_the_site_effect():
    vol, cov, site = cohort(seed=9, n_per_site=120, shift_sd=3.0, shifted_site=1)
    full = metrics.site_auc(vol, site, cov)
    capped = metrics.site_auc(vol, site, cov, max_per_site=50, tol=1e-3)
    assert capped == metrics.site_auc(vol, site, cov, max_per_site=50, tol=1e-3)
    assert capped == pytest.approx(full, abs=0.05)
    null_vol, null_cov, null_site = cohort(seed=10, n_per_site=120)
    assert abs(metrics.site_auc(null_vol, null_site, null_cov, max_per_site=50) - 0.5) < 0.1
