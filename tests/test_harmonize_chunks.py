"""transform in row chunks gives the one-chunk answer (single-scan and joint paths, bad rows)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from _synth import REGIONS, synth_table

import neuroharmony_bids.harmonize.model as model_module
from neuroharmony_bids.errors import DataError
from neuroharmony_bids.harmonize import features as F
from neuroharmony_bids.harmonize.model import NeuroHarmonizer


@pytest.fixture(scope="module")
def fitted() -> tuple[NeuroHarmonizer, pd.DataFrame]:
    table = synth_table(n_sites=5, per_site=36, seed=3)
    rng = np.random.default_rng(0)
    table["dx"] = np.where(rng.random(len(table)) < 0.4, "ASD", "TD")
    table["score"] = rng.normal(100, 15, len(table))
    return NeuroHarmonizer(covariates=("dx", "score")).fit(table, "site"), table


def _messy(table: pd.DataFrame) -> pd.DataFrame:
    """Every kind of row transform treats differently, spread over the table."""
    t = table.copy()
    n = len(t)
    rows = np.arange(n)
    t.loc[rows % 9 == 1, REGIONS[2]] *= 8.0  # one far region: flagged by name
    t.loc[rows % 23 == 5, REGIONS[:16]] *= 3.0  # broken profile: left raw
    t.loc[rows % 11 == 2, "snr_total"] = np.nan  # one IQM missing: core prior
    t.loc[rows % 13 == 3, "cjv"] = -1.0  # MRIQC's "not computed"
    t.loc[rows % 17 == 4, F.CORE_IQMS[:8]] = np.nan  # too many missing: profile only
    t["dx"] = t["dx"].where(rows % 7 != 0)  # unknown covariates: training proportion/mean
    t.loc[rows % 5 == 0, "score"] = np.nan
    t.loc[rows % 19 == 6, "age"] = 95.0  # out of the training range: flagged
    t["freesurfer_version"] = np.where(rows % 6 == 0, "7.4.1", "6.0.0")
    t.loc[rows % 10 == 9, "freesurfer_version"] = None
    # single-scan sites among the joint path's sites, and repeated scans of one person
    t.loc[rows % 29 == 0, "site"] = [f"solo{i}" for i in range((rows % 29 == 0).sum())]
    t["person"] = t["participant_id"].where(rows % 4 != 0, "sub-repeat")
    return t.sample(frac=1.0, random_state=1).set_index(rows + 1000)  # shuffled, odd index


def _run(model, table, chunk, monkeypatch, **kw):
    monkeypatch.setattr(model_module, "CHUNK_ROWS", chunk)
    return model.transform(table, return_sd=True, **kw)


@pytest.mark.parametrize("regions", ["all", "subset"])
@pytest.mark.parametrize(
    "kw", [{}, {"site_column": "site"}, {"site_column": "site", "person_column": "person"}]
)
def test_chunked_transform_equals_one_chunk(fitted, monkeypatch, regions, kw):
    model, table = fitted
    messy = _messy(table)
    if regions == "subset":
        messy = messy.drop(columns=REGIONS[1::3])
    whole, whole_sd = _run(model, messy, 10**9, monkeypatch, **kw)
    # the messy rows really are there (else the comparison would prove little)
    assert (whole["nh_status"] == "unharmonized").any()
    assert (whole["nh_regions_flagged"] != "").any()
    assert (whole["nh_iqms_missing"] != "").any()
    assert whole["nh_out_of_range_features"].str.contains("freesurfer_version").any()
    for chunk in (7, 50):
        part, part_sd = _run(model, messy, chunk, monkeypatch, **kw)
        assert list(part.columns) == list(whole.columns)
        assert (part.dtypes == whole.dtypes).all()
        assert part.index.equals(pd.RangeIndex(len(messy)))
        numeric = whole.select_dtypes("number").columns
        np.testing.assert_allclose(
            part[numeric].to_numpy(float), whole[numeric].to_numpy(float), rtol=1e-12, atol=0
        )
        text = [c for c in whole.columns if c not in numeric]
        pd.testing.assert_frame_equal(part[text], whole[text])
        np.testing.assert_allclose(part_sd.to_numpy(), whole_sd.to_numpy(), rtol=1e-12)


def test_a_bad_row_in_a_later_chunk_is_numbered_as_in_the_table(fitted, monkeypatch):
    model, table = fitted
    bad = table.astype({"age": object, "sex": object})
    bad.loc[30, "age"] = "x"
    bad.loc[100, "sex"] = "?"
    monkeypatch.setattr(model_module, "CHUNK_ROWS", 7)
    with pytest.raises(
        DataError, match=r"column 'age', row 31 .*\(1 more row\(s\) have problems\)"
    ):
        model.transform(bad)


def test_output_does_not_share_memory_with_the_input(fitted):
    model, table = fitted
    out = model.transform(table)
    for col in ("age", "participant_id", REGIONS[0], F.CORE_IQMS[0]):
        assert not np.shares_memory(out[col].to_numpy(), table[col].to_numpy())
    again = model.transform(out)  # an output harmonized again: its flag columns replaced
    assert list(again.columns) == list(out.columns)


@pytest.mark.parametrize("kw", [{}, {"site_column": "site", "person_column": "person"}])
def test_chunk_threads_do_not_change_a_bit(fitted, monkeypatch, kw):
    model, table = fitted
    messy = _messy(table)
    monkeypatch.setattr(model_module, "CHUNK_ROWS", 13)
    runs = []
    for threads in (1, 2):
        monkeypatch.setattr(model_module, "APPLY_THREADS", threads)
        runs.append(model.transform(messy, return_sd=True, **kw))
    (one, one_sd), (two, two_sd) = runs
    pd.testing.assert_frame_equal(one, two, check_exact=True)
    pd.testing.assert_frame_equal(one_sd, two_sd, check_exact=True)


def test_text_columns_give_the_numbers_of_numeric_ones(fitted, monkeypatch):
    """Numeric columns are read as one block, text and integer ones cell by cell: the same
    bits once the cells are numbers (pandas parses the text, as before)."""
    model, table = fitted
    messy = _messy(table)
    as_text, parsed = messy.copy(), messy.copy()
    for col in (REGIONS[0], REGIONS[5], "cjv", "snr_total", "age", F.ETIV):
        as_text[col] = [("n/a" if pd.isna(v) else repr(float(v))) for v in messy[col]]
        parsed[col] = pd.to_numeric(as_text[col], errors="coerce")
    as_ints = messy.copy()
    as_ints[REGIONS[3]] = messy[REGIONS[3]].round().astype(int)
    rounded = messy.assign(**{REGIONS[3]: messy[REGIONS[3]].round()})
    monkeypatch.setattr(model_module, "CHUNK_ROWS", 17)
    for variant, reference in ((as_text, parsed), (as_ints, rounded)):
        got, want = model.transform(variant), model.transform(reference)
        # harmonized regions and flags (the other columns pass through as given)
        numeric = [*REGIONS, "nh_confidence", "nh_out_of_range", "nh_n_regions"]
        np.testing.assert_array_equal(got[numeric].to_numpy(float), want[numeric].to_numpy(float))
        flags = ["nh_status", "nh_features_used", "nh_regions_flagged", "nh_iqms_missing"]
        flags += ["nh_out_of_range_features"]
        pd.testing.assert_frame_equal(got[flags], want[flags])


def test_a_fragmented_frame_gives_no_performance_warning(fitted):
    model, table = fitted
    once = model.transform(table)  # an output harmonized again: its nh_* columns replaced
    with warnings.catch_warnings():  # one block per column, as a frame built column by column
        warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
        frag = once[["participant_id"]].copy()
        for col in once.columns[1:]:
            frag[col] = once[col].to_numpy()
        for i in range(100):
            frag[f"extra{i}"] = float(i)
        for col in REGIONS[::2]:  # volumes as integers: replaced by float columns
            frag[col] = once[col].round().astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.PerformanceWarning)
        out = model.transform(frag)
    assert list(out.columns) == [c for c in frag.columns if c not in F.FLAG_COLUMNS] + list(
        F.FLAG_COLUMNS
    )


def test_unique_rows_is_numpys_unique_by_rows():
    rng = np.random.default_rng(4)
    for shape, p in (((300, 101), 0.01), ((50, 9), 0.5), ((1, 3), 0.5), ((40, 16), 0.2)):
        flags = rng.random(shape) < p
        flags[: len(flags) // 3] = flags[0]  # repeated rows
        want, want_inv = np.unique(flags, axis=0, return_inverse=True)
        got, got_inv = model_module._unique_rows(flags)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got_inv, np.asarray(want_inv).ravel())
