"""Dataset-level IQM drift (issue: do no harm): a whole dataset shifted is named, not hidden."""

from __future__ import annotations

import pandas as pd
import pytest
from _synth import synth_table

from neuroharmony_bids.harmonize.drift import detect_drift
from neuroharmony_bids.harmonize.model import NeuroHarmonizer


@pytest.fixture(scope="module")
def fitted():
    table = synth_table(n_sites=6, per_site=30, seed=21)
    return table, NeuroHarmonizer().fit(table, "site")


def test_a_training_site_is_not_drift(fitted):
    table, model = fitted
    report = detect_drift(table[table.site == "site3"], model, site_column="site")
    assert report.shifted == []
    assert "none" in report.message()


def test_rescaled_iqms_are_named_with_advice(fitted):
    table, model = fitted
    new = table[table.site == "site1"].copy()
    new["snrd_total"] *= 20
    new["efc"] *= 0.7
    report = detect_drift(new, model, site_column="site")
    assert {"snrd_total", "efc"} <= set(report.shifted)
    assert "cjv" not in report.shifted
    msg = report.message()
    assert "snrd_total" in msg and "MRIQC version" in msg and "--site-column" in msg
    # per scan, the IQM prior is switched off for such scans
    out = model.transform(new)
    assert (
        out["nh_confidence"] <= model.transform(table[table.site == "site1"])["nh_confidence"]
    ).all()


def test_shipped_model_flags_a_version_change(abide_table):
    from neuroharmony_bids.harmonize.io import load_model

    model = load_model()
    site = abide_table[abide_table["SITE_ID"] == "NYU"].rename(columns={"AGE_AT_SCAN": "age"})
    assert detect_drift(site, model).shifted == []
    drifted = site.assign(
        **{c: site[c] * 20 for c in site.columns if c.startswith("iqm_snrd_")},
        iqm_efc=site["iqm_efc"] * 0.7,
    )
    shifted = detect_drift(drifted, model).shifted
    assert {"snrd_total", "snrd_gm", "snrd_wm", "efc"} <= set(shifted)
    assert isinstance(detect_drift(drifted, model).table, pd.DataFrame)
