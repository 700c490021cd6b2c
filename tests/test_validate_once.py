"""Rows are validated once: the BIDS App's participant and group steps get harmonized valid
rows and the refused rows with their reasons from one pass (issue 15)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from _synth import REGIONS, synth_table

import neuroharmony_bids.harmonize.table as table_module
from neuroharmony_bids.errors import DataError
from neuroharmony_bids.harmonize.apply import harmonize_valid_rows, invalid_rows
from neuroharmony_bids.harmonize.model import NeuroHarmonizer
from neuroharmony_bids.workflows.group import harmonize_jointly
from neuroharmony_bids.workflows.participant import harmonize_rows

#: Five training sites and two new ones, drawn alike (the new ones get harmonized).
_ALL = synth_table(n_sites=7, per_site=24, seed=5)


@pytest.fixture(scope="module")
def model() -> NeuroHarmonizer:
    return NeuroHarmonizer().fit(_ALL[_ALL["site"] < "site5"], "site")


def _scans() -> pd.DataFrame:
    """Rows of the new sites as the participant level builds them, three of them bad."""
    t = _ALL[_ALL["site"] >= "site5"].drop(columns=["notes"]).reset_index(drop=True)
    t.insert(0, "bids_name", t["participant_id"] + "_T1w")
    t = t.astype({"age": object, "sex": object})
    t.loc[4, "age"] = "x"
    t.loc[17, "sex"] = "?"
    t.loc[17, REGIONS[3]] = np.inf  # two problems in one row: both named, volume first
    t.loc[30, "age"] = 130.0
    return t


@pytest.fixture
def parses(monkeypatch) -> list[int]:
    """Counts full passes over the per-scan fields (one per validation of a table)."""
    calls: list[int] = []
    real = table_module._parse_scan_fields

    def counting(table, *args, **kwargs):
        calls.append(len(table))
        return real(table, *args, **kwargs)

    monkeypatch.setattr(table_module, "_parse_scan_fields", counting)
    return calls


def test_participant_rows_are_validated_once(model, parses):
    scans = _scans()
    expected = invalid_rows(scans, model)  # the reasons a separate check would give
    assert sorted(expected) == [4, 17, 30]
    parses.clear()
    done, failed = harmonize_rows(scans, model)
    assert parses == [len(scans)]  # one pass over the table, none to re-check rows
    names = scans["bids_name"].to_numpy()
    assert failed == {names[pos]: reason for pos, reason in expected.items()}
    assert "column 'age', row 5" in failed[names[4]]
    assert failed[names[17]].index("infinite") < failed[names[17]].index("'sex'")
    good = scans.drop(index=list(expected)).reset_index(drop=True)
    assert done["bids_name"].tolist() == good["bids_name"].tolist()
    alone = model.transform(good.astype({"age": float}))
    np.testing.assert_allclose(
        done[REGIONS].to_numpy(float), alone[REGIONS].to_numpy(float), rtol=1e-12, atol=0
    )
    assert {f"{r}_sd" for r in REGIONS} <= set(done.columns)


def test_a_batch_without_usable_columns_fails_each_scan(model):
    scans = _scans().drop(columns=REGIONS)  # no region the model knows
    done, failed = harmonize_rows(scans, model)
    assert done.empty
    assert set(failed) == set(scans["bids_name"])
    assert all("no FreeSurfer regional volume columns" in r for r in failed.values())


def test_joint_path_keeps_refused_rows_out_of_every_site(model, caplog):
    scans = _scans().assign(site=lambda t: t["site"].str.replace("site", "new"))
    bad = scans.loc[[4, 17, 30]].copy()
    bad["age"] = 40.0  # valid if read, with volumes that would move its site's estimate
    bad["sex"] = "F"
    bad[REGIONS] = bad[REGIONS].astype(float) * 1.04
    bad.loc[17, REGIONS[3]] = bad.loc[4, REGIONS[3]]
    with caplog.at_level(logging.WARNING):
        joint = harmonize_jointly(scans, model, logging.getLogger("test"))
    left_out = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(left_out) == 3
    good = scans.drop(index=[4, 17, 30]).reset_index(drop=True).astype({"age": float})
    want, want_sd = model.transform(
        good, site_column="site", person_column="participant_id", return_sd=True
    )
    assert joint["bids_name"].tolist() == good["bids_name"].tolist()
    np.testing.assert_allclose(
        joint[REGIONS].to_numpy(float), want[REGIONS].to_numpy(float), rtol=1e-12, atol=0
    )
    np.testing.assert_allclose(
        joint[[f"{r}_sd" for r in REGIONS]].to_numpy(float), want_sd.to_numpy(), rtol=1e-12
    )
    # were those rows counted, the sites' estimates would move
    counted = pd.concat([good, bad]).reset_index(drop=True)
    moved = model.transform(counted, site_column="site", person_column="participant_id")
    shift = np.abs(moved[REGIONS].to_numpy(float)[: len(good)] - want[REGIONS].to_numpy())
    assert shift.max() > 1.0  # mm³


def test_library_default_still_refuses_the_table_at_the_first_bad_row(model):
    scans = _scans()
    with pytest.raises(DataError, match=r"column 'age', row 5 .*\(2 more row\(s\) have problems\)"):
        model.transform(scans)
    done = harmonize_valid_rows(scans, model, site_column="site")
    assert sorted(done.refused) == [4, 17, 30]
    assert done.rows.tolist() == [i for i in range(len(scans)) if i not in (4, 17, 30)]
    assert done.harmonized.index.equals(pd.RangeIndex(len(scans) - 3))


def test_every_row_refused_gives_an_empty_table(model):
    scans = _scans().assign(age="unknown")
    done = harmonize_valid_rows(scans, model, return_sd=True)
    assert done.harmonized.empty and done.sd.empty and len(done.refused) == len(scans)
    assert list(done.harmonized.columns) == list(model.transform(_scans().drop(
        index=[4, 17, 30]).astype({"age": float})).columns)  # fmt: skip
