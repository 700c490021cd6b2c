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
    t.loc[rows % 31 == 7, REGIONS[4]] = np.nan  # unusable regions: flagged, written raw
    t.loc[rows % 37 == 8, REGIONS[6]] = 0.0
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
        # the same bits: a site's rows meet in one chunk, in table order, whatever the chunks
        pd.testing.assert_frame_equal(part, whole, check_exact=True)
        pd.testing.assert_frame_equal(part_sd, whole_sd, check_exact=True)


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


def _alone(model, table: pd.DataFrame, rows: np.ndarray, return_sd: bool):
    """Rows of ``table`` each transformed alone, put together (index: their table rows)."""
    done = [model.transform(table.iloc[[i]], return_sd=return_sd) for i in rows]
    out = pd.concat([d[0] if return_sd else d for d in done]).set_axis(rows)
    return (out, np.vstack([d[1].to_numpy() for d in done])) if return_sd else out


def _assert_batch_invariant(model, table, monkeypatch, chunks=(5, 64, 333)):
    """Single-scan rows give the same bits alone, in the whole table, in another order and in
    chunks of any size on any number of threads (exact equality, not allclose)."""
    whole, whole_sd = model.transform(table, return_sd=True)
    pd.testing.assert_frame_equal(model.transform(table), whole, check_exact=True)
    assert (whole["nh_status"] == "unharmonized").any()  # the kinds of rows are there
    assert (whole["nh_regions_flagged"] != "").any()
    assert (whole["nh_iqms_missing"] != "").any()
    every = np.arange(len(table))
    alone, alone_sd = _alone(model, table, every, return_sd=True)
    pd.testing.assert_frame_equal(alone, whole, check_exact=True)
    np.testing.assert_array_equal(alone_sd, whole_sd.to_numpy())
    some = every[::3]  # without SDs (the volumes take the same path): a third of the rows
    alone = _alone(model, table, some, return_sd=False)
    pd.testing.assert_frame_equal(alone, whole.iloc[some], check_exact=True)
    order = np.random.default_rng(7).permutation(len(table))
    for chunk, threads in zip(chunks, (1, 2, 2), strict=True):
        monkeypatch.setattr(model_module, "CHUNK_ROWS", chunk)
        monkeypatch.setattr(model_module, "APPLY_THREADS", threads)
        shuffled, shuffled_sd = model.transform(table.iloc[order], return_sd=True)
        back = np.argsort(order)
        pd.testing.assert_frame_equal(
            shuffled.iloc[back].reset_index(drop=True), whole, check_exact=True
        )
        np.testing.assert_array_equal(shuffled_sd.to_numpy()[back], whole_sd.to_numpy())
    # the table inside a larger one (three copies: 3x the rows, other chunk boundaries)
    monkeypatch.setattr(model_module, "CHUNK_ROWS", 1024)
    copies = [table.assign(participant_id=f"copy{k}-" + table["participant_id"].astype(str))
              if "participant_id" in table.columns else table for k in range(3)]  # fmt: skip
    big = model.transform(pd.concat(copies, ignore_index=True))
    np.testing.assert_array_equal(
        big.iloc[len(table) : 2 * len(table)].select_dtypes("number").to_numpy(),
        whole.select_dtypes("number").to_numpy(),
    )


@pytest.mark.slow
def test_a_scans_bits_do_not_depend_on_its_batch(fitted, monkeypatch):
    """Flagged, broken and unusable regions, missing and -1 IQMs, unknown covariates."""
    model, table = fitted
    messy = _messy(table).drop(columns="site")
    _assert_batch_invariant(model, messy, monkeypatch)


@pytest.mark.slow
def test_an_abide_scans_bits_do_not_depend_on_its_batch(abide_table, monkeypatch):
    """Every ABIDE row (the shipped model), some with missing IQMs and unusable regions."""
    from neuroharmony_bids.harmonize.io import load_model

    table = abide_table.rename(columns={"AGE_AT_SCAN": "age"})
    rows = np.arange(len(table))
    table.loc[rows % 10 == 3, "cjv"] = np.nan
    table.loc[rows % 29 == 5, list(F.CORE_IQMS[:9])] = np.nan  # profile only
    table.loc[rows % 23 == 4, "snr_total"] = -1.0
    region = next(c for c in table.columns if "Thalamus" in c)
    table.loc[rows % 41 == 6, region] = 0.0
    _assert_batch_invariant(load_model(), table, monkeypatch)
