"""Group level: scans sharing a site are harmonized jointly (the several-scans path)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_workflows import pick_rows

from neuroharmony_bids.cli.run import run
from neuroharmony_bids.harmonize.apply import harmonize_table
from neuroharmony_bids.harmonize.features import DK_REGIONS
from neuroharmony_bids.harmonize.io import load_model
from neuroharmony_bids.testing import build_bids_dataset


def test_group_writes_joint_table_matching_the_core(abide_table, tmp_path):
    rows = pick_rows(abide_table, 4, offset=2)
    bids = tmp_path / "bids"
    build_bids_dataset(bids, rows)
    out = tmp_path / "out"
    assert run([str(bids), str(out), "participant", "--skip-bids-validation"]) == 0
    assert (
        run([str(bids), str(out), "group", "--skip-bids-validation", "--site-column", "site"]) == 0
    )
    joint = pd.read_csv(out / "group_desc-jointharmonized_morph.tsv", sep="\t")
    single = pd.read_csv(out / "group_desc-harmonized_morph.tsv", sep="\t")
    raw = pd.read_csv(out / "group_desc-raw_morph.tsv", sep="\t")
    assert len(joint) == len(single) == len(rows)
    assert (joint["bids_name"] == raw["bids_name"]).all()
    assert joint["site"].nunique() == 4
    # the joint answer differs from the single-scan one, and equals the core's joint path
    assert not np.allclose(joint[DK_REGIONS].to_numpy(), single[DK_REGIONS].to_numpy())
    expected = harmonize_table(raw, load_model(), site_column="site")
    np.testing.assert_allclose(
        joint[DK_REGIONS].to_numpy(), expected[DK_REGIONS].to_numpy(), rtol=1e-6
    )
    desc = (out / "descriptions.tsv").read_text()
    assert "desc-jointharmonized" in desc


@pytest.mark.slow
def test_every_run_writes_the_citation(abide_table, tmp_path):
    rows = pick_rows(abide_table, 2, offset=6)
    bids = tmp_path / "bids"
    build_bids_dataset(bids, rows)
    out = tmp_path / "out"
    assert run([str(bids), str(out), "participant", "--skip-bids-validation"]) == 0
    md = out / "logs" / "CITATION.md"
    assert "Garcia-Dias" in md.read_text() and (out / "logs" / "CITATION.bib").is_file()
    assert run([str(bids), str(out), "group", "--skip-bids-validation"]) == 0
    assert "6.x or earlier" in md.read_text() or "FreeSurfer 6" in md.read_text()


@pytest.mark.slow
def test_group_reports_iqm_drift(abide_table, tmp_path):
    rows = pick_rows(abide_table, 2, offset=4)
    rows = rows.assign(**{c: rows[c] * 20 for c in rows.columns if c.startswith("iqm_snrd_")})
    bids = tmp_path / "bids"
    build_bids_dataset(bids, rows)
    out = tmp_path / "out"
    assert run([str(bids), str(out), "participant", "--skip-bids-validation"]) == 0
    assert run([str(bids), str(out), "group", "--skip-bids-validation"]) == 0
    drift = pd.read_csv(out / "group_iqm_drift.tsv", sep="\t").set_index("iqm")
    assert drift.loc["snrd_total", "shifted"]
    assert not drift.loc["cjv", "shifted"]
    assert "IQM drift" in (out / "group_report.html").read_text()
