"""The harmonizer: biology protected, names kept, flags, joint path, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _synth import REGIONS, synth_table
from sklearn.exceptions import NotFittedError

from neuroharmony_bids.errors import DataError
from neuroharmony_bids.harmonize import features as F
from neuroharmony_bids.harmonize.combat import fit_combat
from neuroharmony_bids.harmonize.model import FLAG_COLUMNS, NeuroHarmonizer


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return synth_table()


@pytest.fixture(scope="module")
def model(table) -> NeuroHarmonizer:
    return NeuroHarmonizer().fit(table, "site")


def _age_slope(vol: np.ndarray, age: np.ndarray) -> np.ndarray:
    x = np.column_stack([np.ones_like(age), age])
    return np.linalg.lstsq(x, vol, rcond=None)[0][1]


def test_age_slope_survives_where_unprotected_combat_loses_it(table, model):
    age = table["age"].to_numpy()
    raw = table[REGIONS].to_numpy()
    harmonized = model.transform(table, site_column="site")[REGIONS].to_numpy()
    truth = np.asarray(table.attrs["true_age_slope"])
    kept = _age_slope(harmonized, age)
    codes = pd.Categorical(table.site).codes
    _, unprotected = fit_combat(raw, codes, sorted(table.site.unique()), np.ones((len(age), 0)))
    lost = _age_slope(unprotected, age)
    err_kept = np.median(np.abs(kept - truth) / np.abs(truth))
    err_lost = np.median(np.abs(lost - truth) / np.abs(truth))
    assert err_kept < 0.25, err_kept
    assert err_lost > 2 * err_kept, (err_lost, err_kept)


def test_output_keeps_rows_columns_and_passthrough(table, model):
    out = model.transform(table)
    assert list(out.columns[: len(table.columns)]) == list(table.columns)
    assert list(out.columns[len(table.columns) :]) == list(FLAG_COLUMNS)
    assert (out["notes"] == table["notes"]).all()
    assert (out["participant_id"] == table["participant_id"]).all()
    assert not np.allclose(out[REGIONS].to_numpy(), table[REGIONS].to_numpy())
    assert set(out["nh_status"]) <= {"harmonized", "unharmonized"}
    assert out["nh_features_used"].str.contains("snrd_total").all()


def test_freesurfer6_and_7_spellings_give_same_numbers(shared_data):
    from neuroharmony_bids.harmonize.io import load_model

    model = load_model()
    abide = pd.read_csv(shared_data / "abide1" / "abide1_fs6_mriqc_pheno.csv").head(20)
    abide = abide.rename(columns={"AGE_AT_SCAN": "age"})
    fs6 = model.transform(abide)
    fs7 = model.transform(abide.rename(columns=F.FS_ALIASES))
    assert "Left-Thalamus-Proper" in fs6.columns and "Left-Thalamus" in fs7.columns
    np.testing.assert_allclose(
        fs6["Left-Thalamus-Proper"].to_numpy(), fs7["Left-Thalamus"].to_numpy()
    )
    assert not np.allclose(fs6["Left-Thalamus-Proper"], abide["Left-Thalamus-Proper"])


def test_subset_of_regions(table, model):
    sub = table.drop(columns=REGIONS[5:])
    out = model.transform(sub)
    assert (out["nh_n_regions"] == 5).all()
    full = model.transform(table)
    assert out.shape[0] == full.shape[0]


def test_missing_or_sentinel_iqm_costs_a_flag_not_the_scan(table, model):
    scans = table.head(4).reset_index(drop=True)
    scans.loc[1, "efc"] = np.nan  # MRIQC's bare NaN
    scans.loc[2, "snr_total"] = -1.0  # MRIQC's "could not compute"
    out = model.transform(scans)
    assert (out["nh_status"] == "harmonized").all()
    assert out.loc[0, "nh_iqms_missing"] == ""
    assert out.loc[1, "nh_iqms_missing"] == "efc"
    assert out.loc[2, "nh_iqms_missing"] == "snr_total"
    assert "efc" not in out.loc[1, "nh_features_used"].split(";")
    assert "cjv" in out.loc[1, "nh_features_used"].split(";")
    assert not np.allclose(out.loc[1, REGIONS].astype(float), scans.loc[1, REGIONS].astype(float))


def test_prior_is_trusted_less_when_part_of_it_is_missing(abide_table):
    from neuroharmony_bids.harmonize.io import load_model

    model = load_model()
    scans = abide_table.rename(columns={"AGE_AT_SCAN": "age"}).head(40)
    full = model.transform(scans)
    row = int(np.argmax(full["nh_confidence"].to_numpy()))
    assert full.loc[row, "nh_confidence"] > 0
    gappy = scans.copy()
    gappy.loc[row, "iqm_fber"] = -1.0
    out = model.transform(gappy)
    assert out.loc[row, "nh_iqms_missing"] == ""  # fber is not a core IQM: core prior used
    assert "fber" not in out.loc[row, "nh_features_used"].split(";")
    assert 0 < out.loc[row, "nh_confidence"] <= full.loc[row, "nh_confidence"]
    gappy.loc[row, "iqm_cjv"] = np.nan
    out = model.transform(gappy)
    assert out.loc[row, "nh_iqms_missing"] == "cjv"
    assert out.loc[row, "nh_confidence"] < full.loc[row, "nh_confidence"]


def test_too_few_iqms_fall_back_to_the_regional_profile(table, model):
    core = model.iqm_sets_["core"]
    scans = table.head(3).drop(columns=core[:10]).reset_index(drop=True)
    out = model.transform(scans)
    assert (out["nh_status"] == "harmonized").all()
    assert (out["nh_confidence"] == 0).all()
    assert (out["nh_features_used"] == "").all()
    assert out.loc[0, "nh_iqms_missing"].split(";") == core[:10]
    assert model.invalid_rows(scans) == {}


def test_far_region_is_flagged_by_name_and_the_rest_harmonized(table, model):
    scans = table.head(2).reset_index(drop=True)
    bad = scans.copy()
    bad.loc[0, REGIONS[0]] *= 8.0  # one region far off, as a mislabelled structure
    out = model.transform(bad)
    ref = model.transform(scans)
    assert out.loc[0, "nh_status"] == "harmonized"
    assert out.loc[0, "nh_regions_flagged"] == REGIONS[0]
    assert out.loc[1, "nh_regions_flagged"] == ""
    # the far region does not drag the other regions' correction with it
    others = REGIONS[1:]
    moved = np.abs(out.loc[0, others].astype(float) - ref.loc[0, others].astype(float))
    unflagged = model.set_params(profile_update="own_region")
    try:
        naive_moved = np.abs(
            _ignore_flags(unflagged, bad).loc[0, others].astype(float)
            - ref.loc[0, others].astype(float)
        )
    finally:
        model.set_params(profile_update="cross_region")
    assert moved.max() < naive_moved.max()


def _ignore_flags(model, table):
    """Transform as if no region were ever flagged (the whole-profile update of before)."""
    import neuroharmony_bids.harmonize.model as mod

    old = mod.REGION_Z_LIMIT
    mod.REGION_Z_LIMIT = np.inf
    try:
        return model.transform(table)
    finally:
        mod.REGION_Z_LIMIT = old


def test_single_scan_keeps_a_change_in_one_structure(table, model):
    """Cross-region update: a person's own atrophy is not read as the scanner's."""
    scans = table.head(6).reset_index(drop=True)
    changed = scans.copy()
    region = ["Left-Hippocampus"]
    changed[region] *= 0.9
    a, b = model.transform(scans), model.transform(changed)
    kept = (b[region].to_numpy() - a[region].to_numpy()) / (
        changed[region].to_numpy() - scans[region].to_numpy()
    )
    np.testing.assert_allclose(kept, 1.0, atol=1e-9)
    full = model.set_params(profile_update="own_region")
    try:
        a, b = full.transform(scans), full.transform(changed)
    finally:
        model.set_params(profile_update="cross_region")
    lost = (b[region].to_numpy() - a[region].to_numpy()) / (
        changed[region].to_numpy() - scans[region].to_numpy()
    )
    assert (lost < 0.99).all()


def test_posterior_sd_in_mm3(table, model):
    out, sd = model.transform(table.head(5), return_sd=True)
    assert list(sd.columns) == REGIONS and sd.index.equals(out.index)
    assert (sd.to_numpy() > 0).all()
    # more scans of one scanner: a surer correction
    _, sd_joint = model.transform(table.head(40).assign(site="x"), site_column="site",
                                  return_sd=True)  # fmt: skip
    assert (sd_joint.iloc[0] < sd.iloc[0]).all()
    # no profile update: the scanner offset is as uncertain as the training sites' spread
    prior_only = model.set_params(profile_weight=0.0)
    try:
        _, sd0 = prior_only.transform(table.head(5), return_sd=True)
    finally:
        model.set_params(profile_weight=1.0)
    np.testing.assert_allclose(sd0.to_numpy(), 0.0, atol=1e-9)


def test_other_freesurfer_version_is_flagged_for_single_scans(table, model):
    scans = table.head(3).assign(freesurfer_version=["6.0.0", "7.4.1", np.nan])
    out = model.transform(scans)
    assert model.freesurfer_version_ == "6.0"
    flags = out["nh_out_of_range_features"].str.split(";")
    assert ["freesurfer_version" in f for f in flags] == [False, True, False]
    joint = model.transform(scans.assign(site="a"), site_column="site")
    assert not joint["nh_out_of_range_features"].str.contains("freesurfer_version").any()


@pytest.mark.parametrize(
    ("params", "pattern"),
    [
        ({"profile_weight": -1.0}, "profile_weight"),
        ({"profile_weight": float("nan")}, "profile_weight"),
        ({"profile_update": "both"}, "profile_update"),
        ({"ridge_alphas": (0.0,)}, "ridge_alphas"),
    ],
)
def test_hyperparameters_are_validated_in_fit(table, params, pattern):
    with pytest.raises(ValueError, match=pattern):
        NeuroHarmonizer(**params).fit(table, "site")


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


def test_out_of_range_scans_are_flagged_but_harmonized(table, model):
    odd = table.tail(4).reset_index(drop=True)  # the oldest site
    odd.loc[0, "age"] = table["age"].max() + 3.0
    odd.loc[1, "snrd_total"] *= 20
    odd.loc[1, "efc"] *= 0.7
    out = model.transform(odd)
    assert out.loc[0, "nh_out_of_range_features"].split(";") == ["age"]
    assert "snrd_total" in out.loc[1, "nh_out_of_range_features"]
    assert out.loc[1, "nh_confidence"] <= out.loc[2, "nh_confidence"]
    assert out["nh_out_of_range"].tolist()[:2] == [1, 1]
    assert (out["nh_status"] == "harmonized").all()


def test_implausible_profile_is_left_unharmonized(table, model):
    bad = table.head(3).copy()
    bad[REGIONS[:8]] *= 3.0  # a failed segmentation: a third of the regions far off
    out = model.transform(bad)
    assert out.loc[0, "nh_status"] == "unharmonized"
    assert out.loc[0, "nh_regions_flagged"].split(";") == REGIONS[:8]
    assert "regional_profile" in out.loc[0, "nh_out_of_range_features"]
    np.testing.assert_allclose(out.loc[0, REGIONS].astype(float), bad.loc[0, REGIONS].astype(float))


def test_joint_path_approaches_combat_with_the_site():
    table = synth_table(n_sites=7, per_site=40, seed=3)
    train, new = table[table.site != "site6"], table[table.site == "site6"]
    model = NeuroHarmonizer().fit(train, "site")
    codes = pd.Categorical(table.site).codes
    design = model._design(
        __import__("neuroharmony_bids.harmonize.table", fromlist=["prepare"]).prepare(table)
    )
    _, oracle = fit_combat(table[REGIONS].to_numpy(), codes, sorted(table.site.unique()), design)
    oracle = oracle[(table.site == "site6").to_numpy()]
    single = model.transform(new)[REGIONS].to_numpy()
    joint = model.transform(new, site_column="site")[REGIONS].to_numpy()
    raw = new[REGIONS].to_numpy()
    # the own-region posterior; the default cross-region update reads each region's offset
    # from the others only, which 6 training sites cannot always estimate better than raw
    # here (a limit stated in the model card; the ABIDE model is judged by LOSO in bench/)
    model.set_params(profile_update="own_region")
    own = model.transform(new)[REGIONS].to_numpy()

    def err(x):
        return np.mean(np.abs(x - oracle) / oracle)

    assert err(joint) < err(single)
    assert err(joint) < err(own) <= err(raw) * 1.01
    assert err(joint) < 0.5 * err(raw)


def test_training_site_is_recognised_by_data(table, model):
    part = table[table.site == "site2"]
    joint = model.transform(part.assign(site="renamed"), site_column="site")[REGIONS]
    codes = pd.Categorical(table.site).codes
    prep = __import__("neuroharmony_bids.harmonize.table", fromlist=["prepare"]).prepare(table)
    _, combat = fit_combat(
        table[REGIONS].to_numpy(), codes, sorted(table.site.unique()), model._design(prep)
    )
    combat = combat[(table.site == "site2").to_numpy()]
    assert np.mean(np.abs(joint.to_numpy() - combat) / combat) < 0.02


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda t: t.assign(age="x"), r"column 'age', row 1"),
        (lambda t: t.drop(columns=["sex"]), "missing required column"),
        (lambda t: t.assign(sex="9"), "--sex-mapping"),
        (lambda t: t.assign(**{REGIONS[1]: np.inf}), "infinite"),
        (lambda t: t.assign(**{REGIONS[2]: "big"}), "is not a number"),
        (lambda t: pd.concat([t, t.head(1)]), "same scan"),
    ],
)
def test_bad_input_names_column_and_row(table, model, mutate, pattern):
    with pytest.raises(DataError, match=pattern):
        model.transform(mutate(table.copy()))


def test_one_unusable_region_costs_a_flag_not_the_scan(table, model):
    """An empty, zero or negative volume (a structure not segmented) is flagged and written as
    it came; the scan's other regions are harmonized as if that region were far (ignored)."""
    rows = table.head(3).copy()
    rows.loc[rows.index[0], REGIONS[0]] = np.nan
    rows.loc[rows.index[1], REGIONS[1]] = 0.0
    out, sd = model.transform(rows, return_sd=True)
    assert list(out["nh_status"]) == ["harmonized"] * 3
    assert np.isnan(out[REGIONS[0]].iloc[0]) and out[REGIONS[1]].iloc[1] == 0.0
    assert np.isnan(sd[REGIONS[0]].iloc[0]) and np.isnan(sd[REGIONS[1]].iloc[1])
    assert REGIONS[0] in out["nh_regions_flagged"].iloc[0].split(";")
    assert REGIONS[1] in out["nh_regions_flagged"].iloc[1].split(";")
    n = out["nh_n_regions"].to_numpy()
    assert n[0] == n[2] - 1 and n[1] == n[2] - 1
    assert np.isfinite(out.iloc[:, [out.columns.get_loc(r) for r in REGIONS[2:]]]).all().all()
    # the same as a scan whose region is far: the others ignore it when estimating the scanner
    far = rows.copy()
    far.loc[far.index[0], REGIONS[0]] = 1e9
    far_out = model.transform(far)
    np.testing.assert_allclose(
        out[REGIONS[1:]].iloc[0].to_numpy(float), far_out[REGIONS[1:]].iloc[0].to_numpy(float)
    )
    assert model.invalid_rows(rows) == {}
    # training, though, needs complete segmentations: refused, naming the row and column
    with pytest.raises(DataError, match=rf"row 1 .*{REGIONS[0]!r} = nan mm³"):
        NeuroHarmonizer().fit(table.assign(**{REGIONS[0]: [np.nan] + [1.0] * (len(table) - 1)}))


def test_harmonized_volume_is_never_negative(table, model):
    """A tiny structure the correction would take below 0 mm³ is left raw and flagged."""
    rows = table.head(1).copy()
    correction = rows[REGIONS].to_numpy(float) - model.transform(rows)[REGIONS].to_numpy(float)
    j = int(np.argmax(correction[0]))  # the region the model shrinks most
    assert correction[0, j] > 0
    # the single-scan correction of a region does not depend on its own volume (cross-region)
    rows[REGIONS[j]] = correction[0, j] / 2
    out, sd = model.transform(rows, return_sd=True)
    assert out[REGIONS[j]].iloc[0] == correction[0, j] / 2  # left raw, not negative
    assert REGIONS[j] in out["nh_regions_flagged"].iloc[0].split(";")
    assert np.isnan(sd[REGIONS[j]].iloc[0])
    assert (out[REGIONS].to_numpy(float) > 0).all()


def test_training_refuses_lonely_site_and_confounded_covariate(table):
    lonely = pd.concat([table, table.head(1).assign(site="solo", participant_id="sub-solo")])
    with pytest.raises(DataError, match="single scan"):
        NeuroHarmonizer().fit(lonely, "site")
    confounded = table.assign(scanner_type=table["site"].map(lambda s: s[-1]))
    with pytest.raises(DataError, match="confounded with site"):
        NeuroHarmonizer(covariates=("scanner_type",)).fit(confounded, "site")
    with pytest.raises(DataError, match="site column 'nosuch'"):
        NeuroHarmonizer().fit(table, "nosuch")


def test_estimator_conventions(table):
    est = NeuroHarmonizer(covariates=("notes",))
    assert est.get_params()["covariates"] == ("notes",)
    with pytest.raises(NotFittedError, match="not fitted"):
        est.transform(table)


def test_constant_training_iqm_is_kept_and_usable():
    table = synth_table(n_sites=4, per_site=20, seed=11).assign(spacing_x=1.0, fber=5.0)
    model = NeuroHarmonizer().fit(table, "site")
    assert "spacing_x" in model.iqms_ and "fber" in model.iqms_
    new = table.head(3).assign(spacing_x=[1.0, 1.2, 1.0])
    out = model.transform(new)
    assert out.loc[1, "nh_out_of_range_features"] == "spacing_x"
    assert out.loc[0, "nh_out_of_range"] == 0


def test_calibration_switches_off_an_uninformative_iqm_prior(table):
    # the synthetic IQMs carry no information on the site effects: LOSO calibration must learn
    # confidence 0, so the model equals the profile-only one, drifted IQMs or not
    model = NeuroHarmonizer().fit(table, "site")
    profile_only = NeuroHarmonizer(iqm_prior=False).fit(table, "site")
    scans = table.head(5).copy()
    drifted = scans.assign(snrd_total=scans["snrd_total"] * 20, efc=scans["efc"] * 0.7)
    for t in (scans, drifted):
        out = model.transform(t)
        assert (out["nh_confidence"] == 0).all()
        np.testing.assert_allclose(
            out[REGIONS].to_numpy(), profile_only.transform(t)[REGIONS].to_numpy()
        )


def test_shipped_model_bounds_the_prior_under_iqm_drift(abide_table):
    from neuroharmony_bids.harmonize.io import load_model

    model = load_model()
    scans = abide_table[abide_table["SITE_ID"] == "NYU"].head(20)
    scans = scans.rename(columns={"AGE_AT_SCAN": "age"})
    regions = [c for c in scans.columns if c.endswith("_volume")]
    base = model.transform(scans)
    assert (base["nh_confidence"] > 0).all()
    drifted = scans.assign(
        iqm_snrd_total=scans["iqm_snrd_total"] * 20, iqm_efc=scans["iqm_efc"] * 0.7
    )
    out = model.transform(drifted)
    assert out["nh_out_of_range_features"].str.contains("snrd_total").all()
    # the prior never extrapolates: drift moves the answer far less than harmonization does
    moved = np.abs(out[regions].to_numpy() - base[regions].to_numpy()).mean()
    harmonization = np.abs(base[regions].to_numpy() - scans[regions].to_numpy()).mean()
    assert moved < 0.5 * harmonization


def test_missing_user_covariate_uses_training_proportion():
    table = synth_table(n_sites=4, per_site=30, seed=13)
    table["dx"] = np.where(np.arange(len(table)) % 3 == 0, "ASD", "TD")
    model = NeuroHarmonizer(covariates=("dx",)).fit(table, "site")
    scans = table.head(6)
    without = model.transform(scans.drop(columns=["dx"]))
    unknown = model.transform(scans.assign(dx=np.nan))
    np.testing.assert_allclose(without[REGIONS].to_numpy(), unknown[REGIONS].to_numpy())
    # a known value is used: an all-ASD table differs from the unknown one
    known = model.transform(scans.assign(dx="ASD"), site_column="site")
    unknown_joint = model.transform(scans.assign(dx=np.nan), site_column="site")
    assert not np.allclose(known[REGIONS].to_numpy(), unknown_joint[REGIONS].to_numpy())


def test_scanner_uncertainty_falls_with_scans_and_halving_count_is_exact(model):
    sd = [float(np.median(model.scanner_uncertainty(n)["sd_mm3"])) for n in (1, 2, 5, 20)]
    assert sd == sorted(sd, reverse=True) and sd[-1] > 0
    for n in (1, 3, 10):
        more = model.scans_to_halve(n)
        assert more is not None and more > 0
        half = 0.5 * np.median(model.scanner_uncertainty(n)["sd_mm3"])
        assert np.median(model.scanner_uncertainty(n + more)["sd_mm3"]) <= half
        if n + more - 1 > n:
            assert np.median(model.scanner_uncertainty(n + more - 1)["sd_mm3"]) > half
    # the single-scan SD is the one transform reports for an unflagged scan
    _, sd1 = model.transform(_one_scan(model), return_sd=True)
    np.testing.assert_allclose(sd1.iloc[0].to_numpy(), model.scanner_uncertainty(1)["sd_mm3"])
    with pytest.raises(ValueError, match="n_scans"):
        model.scanner_uncertainty(0)


def _one_scan(model):
    return synth_table().head(1)


@pytest.mark.slow
def test_training_validates_leave_one_site_out_outside_fit(table):
    from neuroharmony_bids.harmonize.train import train

    plain = NeuroHarmonizer().fit(table, "site")
    assert plain.cv_metrics_ == {}
    model = train(table, "site", profile_weight=0.5)
    assert model.profile_weight == 0.5
    summary = model.cv_metrics_["summary"]
    assert set(summary) == {"raw", "single_scan", "joint_all"}
    assert summary["raw"]["retention"] == 1.0
    # a single scan keeps the change (up to what other changed regions move: the ventricles'
    # +15 % can push it past 1); a joint site treats a change shared by half of it as its own
    assert 0 < summary["joint_all"]["retention"] < summary["single_scan"]["retention"]
    assert abs(summary["single_scan"]["retention"] - 1) < 0.1
    assert summary["joint_all"]["n_significant"] <= summary["raw"]["n_significant"]
    np.testing.assert_allclose(
        model.transform(table.head(5))[REGIONS].to_numpy(),
        NeuroHarmonizer(profile_weight=0.5).fit(table, "site").transform(table.head(5))[REGIONS],
    )


def test_profile_weight_override_leaves_the_model_alone(table, model):
    from neuroharmony_bids.cli.parser import parse_settings
    from neuroharmony_bids.harmonize.apply import harmonize_table

    scans = table.head(4)
    out = harmonize_table(scans, model, profile_weight=0.0)
    assert model.profile_weight == 1.0
    prior_only = NeuroHarmonizer(profile_weight=0.0).fit(table, "site")
    np.testing.assert_allclose(
        out[REGIONS].to_numpy(dtype=float), prior_only.transform(scans)[REGIONS].to_numpy(float)
    )
    assert not np.allclose(out[REGIONS].to_numpy(float), model.transform(scans)[REGIONS])
    assert parse_settings(["/d", "/o", "participant", "--profile-weight", "2"]).profile_weight == 2
    assert parse_settings(["/d", "/o", "participant"]).profile_weight is None
    with pytest.raises(SystemExit):
        parse_settings(["/d", "/o", "participant", "--profile-weight", "-1"])


def test_refit_does_not_reuse_gains_of_the_previous_fit(table):
    model = NeuroHarmonizer().fit(table[table.site != "site0"], "site")
    model.transform(table.head(3))  # fills the per-model gain cache
    model.fit(table[table.site != "site5"], "site")
    fresh = NeuroHarmonizer().fit(table[table.site != "site5"], "site")
    np.testing.assert_allclose(
        model.transform(table.head(3))[REGIONS].to_numpy(float),
        fresh.transform(table.head(3))[REGIONS].to_numpy(float),
    )


def test_sex_mapping_is_a_parameter(table, tmp_path):
    coded = table.assign(sex=table["sex"].map({"M": 1, "F": 2}))
    with pytest.raises(DataError, match="sex"):
        NeuroHarmonizer().fit(coded, "site")
    model = NeuroHarmonizer(sex_mapping={"1": "M", "2": "F"}).fit(coded, "site")
    plain = NeuroHarmonizer().fit(table, "site")
    np.testing.assert_allclose(
        model.transform(coded.head(4))[REGIONS].to_numpy(float),
        plain.transform(table.head(4))[REGIONS].to_numpy(float),
    )
    assert model.get_params()["sex_mapping"] == {"1": "M", "2": "F"}
    from neuroharmony_bids.harmonize.io import load_model, save_model

    save_model(model, tmp_path / "m.json")
    again = load_model(tmp_path / "m.json")
    assert again.sex_mapping == {"1": "M", "2": "F"}
    np.testing.assert_allclose(
        again.transform(coded.head(4))[REGIONS].to_numpy(float),
        model.transform(coded.head(4))[REGIONS].to_numpy(float),
    )


def test_joint_uncertainty_closed_form_matches_the_direct_posterior(model):
    from neuroharmony_bids.harmonize.model import _posterior_gain

    T, S = model.between_cov_, model.within_cov_
    for n in (2, 3, 17, 1000, 100_000):
        direct = np.maximum(np.diag(T - _posterior_gain(T, S, n) @ T), 0.0)
        np.testing.assert_allclose(model._joint_variance(n), direct, rtol=1e-9, atol=1e-14)
        sd = model.combat_.sigma * np.sqrt(direct)
        np.testing.assert_allclose(model.scanner_uncertainty(n)["sd_mm3"].to_numpy(), sd, rtol=1e-9)
