"""Group tables: gathered from the per-scan files in one pass, written byte-identically."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pandas as pd
import pytest
from test_workflows import pick_rows

from neuroharmony_bids.cli.run import run
from neuroharmony_bids.reports.citation import _read_scan_versions, versions_from_outputs
from neuroharmony_bids.workflows.group import collect_tables, discover_outputs

GROUP_ARGS = ["group", "--skip-bids-validation", "--site-column", "site"]


@pytest.fixture(scope="module")
def participant_out(abide_table, tmp_path_factory):
    """2 scans per site (where ABIDE has them) through the participant level (stand-in tool outputs)."""
    from neuroharmony_bids.testing import build_bids_dataset

    root = tmp_path_factory.mktemp("group_tables")
    bids, out = root / "bids", root / "out"
    rows = pick_rows(abide_table, 2, offset=3)
    build_bids_dataset(bids, rows)
    args = ["--skip-bids-validation", "--no-participant-reports"]
    assert run([str(bids), str(out), "participant", *args]) == 0
    return bids, out, len(rows)


@pytest.mark.slow  # participant level on 8 scans, then the group level three times
def test_group_tables_are_byte_identical_across_runs(participant_out, tmp_path):
    bids, first, n = participant_out
    second = tmp_path / "again"
    shutil.copytree(first, second)
    for out in (first, first, second):  # a re-run in place, and a copy of the inputs
        assert run([str(bids), str(out), *GROUP_ARGS]) == 0
        names = sorted(p.name for p in out.glob("group_*.tsv"))
        assert names == [
            "group_desc-harmonized_morph.tsv", "group_desc-jointharmonized_morph.tsv",
            "group_desc-raw_morph.tsv", "group_failed.tsv", "group_iqm_drift.tsv",
            "group_outofrange.tsv",
        ]  # fmt: skip
        texts = {name: (out / name).read_bytes() for name in names}
        if out is first and "before" not in locals():
            before = texts
        assert texts == before
    raw = pd.read_csv(first / "group_desc-raw_morph.tsv", sep="\t", na_values="n/a")
    assert len(raw) == n and raw["bids_name"].is_monotonic_increasing


def test_collect_tables_reads_every_file_once_and_names_bad_ones(participant_out, tmp_path):
    bids, src, n = participant_out
    out = tmp_path / "out"
    shutil.copytree(src, out)
    found = discover_outputs(out, bids)
    assert len(found) == n >= 7
    good_raw, good_harm, problems, versions = collect_tables(found, logging.getLogger("test"))
    assert problems == [] and len(good_raw) == len(good_harm) == n
    # the versions the sidecars record, as the citation's own pass over them finds them
    assert versions == _read_scan_versions(out) and len(versions) >= 1
    # every volume is a float column, whatever its text looked like ("6442" or "6442.5")
    assert good_raw["Left-Hippocampus"].dtype == np.float64
    assert good_harm["nh_status"].eq("harmonized").all()

    # a row with a column too few, and a sidecar that is not JSON: those two scans only
    short = found[1].files["raw_tsv"]
    header, row = short.read_text().splitlines()
    short.write_text(header + "\n" + row.rsplit("\t", 1)[0] + "\n")
    found[4].files["raw_json"].write_text("{not json")
    # a text cell where a number belongs: that cell is text, the others stay numbers
    harm = found[6].files["harmonized_tsv"]
    header, row = harm.read_text().splitlines()
    names, cells = header.split("\t"), row.split("\t")
    cells[names.index("Left-Hippocampus")] = "oops"
    harm.write_text(header + "\n" + "\t".join(cells) + "\n")

    # another header (a region this scan's FreeSurfer did not report): parsed on its own
    other = found[2].files["raw_tsv"]
    header, row = other.read_text().splitlines()
    names, cells = header.split("\t"), row.split("\t")
    gone = names.index("Left-Amygdala")
    del names[gone], cells[gone]
    other.write_text("\t".join(names) + "\n" + "\t".join(cells) + "\n")

    raw, harmonized, problems, _ = collect_tables(found, logging.getLogger("test"))
    reasons = {p["bids_name"]: p["reason"] for p in problems}
    assert set(reasons) == {found[1].scan.bids_name, found[4].scan.bids_name}
    assert (
        str(short) in reasons[found[1].scan.bids_name]
        and "columns" in reasons[found[1].scan.bids_name]
    )
    assert str(found[4].files["raw_json"]) in reasons[found[4].scan.bids_name]
    assert len(raw) == len(harmonized) == n - 2
    kept = good_raw[~good_raw["bids_name"].isin(list(reasons))].reset_index(drop=True)
    assert np.isnan(raw.loc[raw["bids_name"] == found[2].scan.bids_name, "Left-Amygdala"]).all()
    kept.loc[kept["bids_name"] == found[2].scan.bids_name, "Left-Amygdala"] = np.nan
    pd.testing.assert_frame_equal(raw, kept)
    cell = harmonized.set_index("bids_name")["Left-Hippocampus"]
    assert cell[found[6].scan.bids_name] == "oops"
    assert all(isinstance(v, float) for k, v in cell.items() if k != found[6].scan.bids_name)


def test_training_needs_two_labelled_sites(abide_table):
    from neuroharmony_bids.harmonize.train import train_on_labelled_sites

    table = abide_table.rename(columns={"SITE_ID": "site"}).head(40).copy()
    table["site"] = ["NYU"] * 30 + [None] * 10  # one site once unlabelled rows are left out
    with pytest.raises(ValueError, match=r"at least 2 sites; found 1 \(NYU\)"):
        train_on_labelled_sites(table, "site")


@pytest.mark.slow  # the group level twice on 8 scans
def test_group_citation_names_the_versions_of_every_sidecar_read_once(
    participant_out, tmp_path, monkeypatch
):
    """The group level's citation names the FreeSurfer/MRIQC versions from the sidecars it
    gathered; with a filter (not every sidecar read) it reads them all itself: same text."""
    bids, src, _ = participant_out
    out = tmp_path / "out"
    shutil.copytree(src, out)
    rescanned = versions_from_outputs(out)
    assert rescanned["freesurfer"] and rescanned["mriqc"]
    import neuroharmony_bids.reports.citation as citation

    def second_pass(out_dir):
        raise AssertionError("the group level read the sidecars a second time")

    with monkeypatch.context() as patch:
        patch.setattr(citation, "_read_scan_versions", second_pass)
        assert run([str(bids), str(out), *GROUP_ARGS]) == 0
    gathered = (out / "logs" / "CITATION.md").read_text()
    assert f"MRIQC {rescanned['mriqc']}" in gathered
    sub = sorted(out.glob("sub-*"))[0].name[4:]
    assert run([str(bids), str(out), *GROUP_ARGS, "--participant-label", sub]) == 0
    assert (out / "logs" / "CITATION.md").read_text() == gathered


def test_stacked_rows_parse_cells_like_pandas_round_trip():
    """The one-row TSVs parsed together (pyarrow): exact doubles, n/a missing, integers as
    floats, a date- or time-like cell kept as text, a column of n/a only a float column."""
    import csv
    import io

    from neuroharmony_bids.workflows.group import _stack_rows

    header = "a\tb\tc\td\te\tf"
    lines = ["0.1\t6442\tn/a\t2020-01-01\t12:00:00\tx", "1.2345678901234567e-05\t7\tn/a\tn/a\t1\t3"]
    got = _stack_rows([(0, header, lines[0]), (1, header, lines[1])], frozenset("abcdef"))
    want = pd.read_csv(
        io.StringIO("\n".join(lines)), sep="\t", header=None, names=list("abcdef"),
        na_values=["n/a"], keep_default_na=False, quoting=csv.QUOTE_NONE,
        float_precision="round_trip",
    )  # fmt: skip
    assert list(got.index) == [0, 1]
    for name in "abc":
        assert got[name].dtype == np.float64
        np.testing.assert_array_equal(got[name].to_numpy(), want[name].astype(float).to_numpy())
    assert got["d"].tolist()[0] == "2020-01-01" and np.isnan(got["d"].tolist()[1])
    assert got["e"].tolist() == ["12:00:00", 1.0] and got["f"].tolist() == ["x", 3.0]
