"""Output folder: names, dataset-level files (also under 16 concurrent writers), per-scan files."""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neuroharmony_bids.atomic import TMP_PREFIX
from neuroharmony_bids.bids import Scan
from neuroharmony_bids.bids import derivatives as D
from neuroharmony_bids.bids import failures as F
from neuroharmony_bids.errors import UsageError
from neuroharmony_bids.harmonize.io import model_info

SCAN = Scan("01", Path("/data/bids/sub-01/ses-a/anat/sub-01_ses-a_run-2_T1w.nii.gz"),
            (("ses", "a"), ("run", "2")))  # fmt: skip


def _description(tmp_path: Path, container: str | None = None) -> dict:
    bids = tmp_path / "bids"
    bids.mkdir(exist_ok=True)
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "Source DS"}))
    return D.dataset_description(bids, tmp_path / "out", model_info(), container=container)


def test_names_follow_bids_derivatives():
    paths = D.scan_outputs("/out", SCAN)
    assert paths["raw_tsv"] == Path("/out/sub-01/ses-a/anat/sub-01_ses-a_run-2_desc-raw_morph.tsv")
    assert paths["harmonized_json"].name == "sub-01_ses-a_run-2_desc-harmonized_morph.json"
    assert D.report_path("/out", SCAN).name == "sub-01_ses-a_run-2_report.html"
    with pytest.raises(ValueError):
        D.morph_path("/out", SCAN, "other")


def test_dataset_description_content(tmp_path, monkeypatch):
    desc = _description(tmp_path, container="docker://neuroharmony/neuroharmony-bids:0.1.0")
    info = model_info()
    assert desc["DatasetType"] == "derivative"
    gen = desc["GeneratedBy"][0]
    assert gen["Name"] == "neuroharmony-bids" and gen["CodeURL"].startswith("https://")
    from neuroharmony_bids import __version__

    assert gen["Version"] == __version__
    assert gen["Container"] == {"Type": "docker", "Tag": "neuroharmony/neuroharmony-bids:0.1.0"}
    assert desc["SourceDatasets"] == [{"URL": "../bids", "Name": "Source DS"}]
    assert desc["NeuroharmonyModel"]["sha256"] == info["sha256"]
    assert desc["NeuroharmonyModel"]["name"] == info["metadata"]["name"]
    assert "Container" not in _description(tmp_path)["GeneratedBy"][0]
    # deterministic: no dates or hosts
    assert _description(tmp_path) == _description(tmp_path)


def test_dataset_files_refuse_another_model_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    desc = _description(tmp_path)
    D.write_dataset_files(out, desc)
    first = (out / "dataset_description.json").read_bytes()
    D.write_dataset_files(out, desc)  # identical: no-op
    assert (out / "dataset_description.json").read_bytes() == first
    other = json.loads(json.dumps(desc))
    other["NeuroharmonyModel"]["sha256"] = "f" * 64
    with pytest.raises(UsageError, match="--overwrite") as err:
        D.write_dataset_files(out, other)
    assert err.value.exit_code == 64
    D.write_dataset_files(out, other, overwrite=True)
    assert (
        json.loads((out / "dataset_description.json").read_text())["NeuroharmonyModel"]["sha256"]
        == "f" * 64
    )


def test_descriptions_tsv_defines_every_desc_label(tmp_path):
    out = tmp_path / "out"
    D.write_dataset_files(out, _description(tmp_path))
    table = pd.read_csv(out / "descriptions.tsv", sep="\t")
    assert list(table.columns) == ["desc_id", "description"]
    assert set(table["desc_id"]) == {f"desc-{k}" for k in D.DESCRIPTIONS}
    assert table["description"].str.len().min() > 20


def _writer(args: tuple[str, dict, int]) -> bytes:
    out, desc, rounds = args
    for _ in range(rounds):
        D.write_dataset_files(out, desc)
        data = (Path(out) / "dataset_description.json").read_bytes()
        json.loads(data)  # every read sees a whole file
    return data


def test_sixteen_concurrent_writers_never_corrupt(tmp_path):
    out = tmp_path / "out"
    desc = _description(tmp_path)
    ctx = mp.get_context("fork")
    with ctx.Pool(16) as pool:
        results = pool.map(_writer, [(str(out), desc, 20)] * 16)
    assert len(set(results)) == 1
    assert json.loads(results[0]) == desc
    assert not list(out.glob(TMP_PREFIX + "*"))
    assert (out / ".bidsignore").read_text() == D.BIDSIGNORE


def test_one_row_tsvs_are_the_group_writers_text(tmp_path):
    """Per-scan TSVs and group TSVs spell values alike: a per-scan file is the header and that
    row of ``tabular.write_blocks`` (the group tables' writer) over all the rows, whether the
    scans were formatted together or one by one."""
    from neuroharmony_bids.tabular import write_blocks

    row = {
        "participant_id": "sub-01",
        "session_id": "ses-a",
        "Left-Hippocampus": 4123.456789012345,
        "lh_insula_volume": 6442.0,
        "EstimatedTotalIntraCranialVol": 1464199.032007,
        "nh_status": "harmonized",
        "nh_confidence": 0.6401,
        "nh_out_of_range": np.int64(1),
        "nh_out_of_range_features": "cjv;age",
        "nh_n_regions": 101,
        "missing": np.nan,
        "flag": True,
    }
    rows = [
        row,
        {**row, "Left-Hippocampus": 1e-5, "nh_n_regions": np.nan, "flag": False},
        {**row, "Left-Hippocampus": 1.5e20, "nh_out_of_range_features": np.nan, "flag": 1.5},
        {**row, "nh_out_of_range_features": 'a "quoted"\tcell', "missing": 0.1 + 0.2},
    ]
    batch = D.format_tsvs(rows)
    assert batch == [D.format_tsv(r) for r in rows]
    write_blocks(tmp_path / "group.tsv", [pd.DataFrame(rows[:2])])
    group = (tmp_path / "group.tsv").read_text().splitlines(keepends=True)
    assert batch[:2] == [group[0] + line for line in group[1:]]
    assert batch[0].splitlines()[1].split("\t")[2:5] == [
        "4123.456789012345",
        "6442",
        "1464199.032007",
    ]
    assert batch[0].endswith("\tn/a\ttrue\n") and batch[1].split("\t")[-1] == "false\n"
    assert batch[1].splitlines()[1].split("\t")[2] == "0.00001"
    # values read back exactly (round trip), the quoted cell too
    back = pd.read_csv(
        io.StringIO(batch[3]), sep="\t", na_values="n/a", keep_default_na=False,
        float_precision="round_trip",
    )  # fmt: skip
    assert back.loc[0, "missing"] == 0.1 + 0.2
    assert back.loc[0, "nh_out_of_range_features"] == 'a "quoted"\tcell'
    # BIDS has no empty cells: an empty flag list is written n/a
    assert D.format_tsv({"nh_out_of_range_features": ""}).splitlines()[1] == "n/a"


def test_scan_tsvs_round_harmonized_values_as_numpy_does():
    """Harmonized volumes and SDs are written as ``numpy.round(v, 3)`` spells them (formatted
    in one vectorized pass for many scans), raw volumes as FreeSurfer gave them, and a scan's
    text does not depend on the scans formatted with it."""
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.uniform(0, 2e6, 200), [0.0005, 0.0015, 2.5e-4, 1234.5675]])
    pairs = []
    for k, v in enumerate(values):
        raw = {"Left-Hippocampus": float(v), "EstimatedTotalIntraCranialVol": 1.5e6 + k / 7}
        harm = {
            "Left-Hippocampus": float(v) / 3,
            "Left-Hippocampus_sd": float(v) / 7,
            "nh_status": "harmonized",
            "nh_confidence": 1 / 3,
        }  # eTIV absent from the harmonized row: n/a
        pairs.append(D.scan_rows(SCAN, raw, harm))
    texts = D.format_scan_tsvs(pairs)
    assert texts[:3] == [D.format_scan_tsvs([p])[0] for p in pairs[:3]]
    for (raw_row, harm_row), (raw_text, harm_text) in zip(pairs, texts, strict=True):
        raw_back = pd.read_csv(io.StringIO(raw_text), sep="\t", float_precision="round_trip")
        assert raw_back.loc[0, "Left-Hippocampus"] == raw_row["Left-Hippocampus"]
        cells = dict(zip(*(line.split("\t") for line in harm_text.splitlines()), strict=True))
        for col in ("Left-Hippocampus", "Left-Hippocampus_sd"):
            expected = np.round(harm_row[col], 3)
            assert float(cells[col]) == expected
            assert cells[col] == D.format_tsv({col: float(expected)}).splitlines()[1]
        assert cells["EstimatedTotalIntraCranialVol"] == "n/a"
        assert cells["nh_confidence"] == repr(1 / 3)  # flags are not rounded


def _outputs(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    D.write_dataset_files(out, _description(tmp_path))
    raw = {
        "Left-Hippocampus": 4100.5,
        "lh_insula_volume": 6400.0,
        "EstimatedTotalIntraCranialVol": 1.5e6,
    }
    harm = {
        "Left-Hippocampus": 4050.25, "lh_insula_volume": 6390.5,
        "EstimatedTotalIntraCranialVol": 1.5e6, "nh_status": "harmonized", "nh_confidence": 0.5,
        "nh_out_of_range": 1, "nh_out_of_range_features": "cjv;age", "nh_features_used": "cjv;cnr",
        "nh_n_regions": 2,
    }  # fmt: skip
    prov = {
        "Sources": ["bids:raw:sub-01/ses-a/anat/sub-01_ses-a_run-2_T1w.nii.gz"],
        "Scanner": {"Manufacturer": "Siemens", "MagneticFieldStrength": 3},
        "Covariates": {"age": 30.5, "sex": "F"},
        "ImageQualityMetrics": {"Software": "MRIQC", "Values": {"cjv": 0.4, "cnr": 3.1}},
        "FreeSurfer": {"Version": "7.3.2"},
        "Model": {"name": "m", "sha256": "a" * 64},
    }
    D.write_scan_outputs(out, SCAN, raw, harm, prov)
    return out


def test_per_scan_files_and_sidecars(tmp_path):
    out = _outputs(tmp_path)
    paths = D.scan_outputs(out, SCAN)
    assert D.is_done(out, SCAN)
    raw = pd.read_csv(paths["raw_tsv"], sep="\t")
    assert list(raw.columns) == [
        "participant_id", "session_id", "run_id", "Left-Hippocampus", "lh_insula_volume",
        "EstimatedTotalIntraCranialVol",
    ]  # fmt: skip
    assert list(raw.loc[0, ["session_id", "run_id"]]) == ["ses-a", "run-2"]
    harm = pd.read_csv(paths["harmonized_tsv"], sep="\t")
    assert list(harm.columns)[-len(D.NH_COLUMNS) :] == D.NH_COLUMNS
    assert harm.loc[0, "Left-Hippocampus"] == 4050.25
    side = json.loads(paths["harmonized_json"].read_text())
    for col in harm.columns:
        assert "Description" in side[col], col
    assert side["Left-Hippocampus"]["Units"] == "mm^3"
    assert side["EstimatedTotalIntraCranialVol"]["Units"] == "mm^3"
    assert set(side["nh_status"]["Levels"]) == {"harmonized", "unharmonized"}
    assert side["Manufacturer"] == "Siemens" and side["Model"]["sha256"] == "a" * 64
    assert side["Harmonization"]["OutOfRangeFeatures"] == ["cjv", "age"]
    assert side["Harmonization"]["IQMsUsed"] == ["cjv", "cnr"]
    assert side["ImageQualityMetrics"]["Values"]["cnr"] == 3.1
    raw_side = json.loads(paths["raw_json"].read_text())
    assert "Model" not in raw_side and raw_side["Covariates"] == {"age": 30.5, "sex": "F"}
    # sidecars are the same JSON the slow path (json.dumps of the whole dict) would give
    rebuilt = {
        **D.column_dictionary(list(harm.columns)),
        **{k: side[k] for k in side if k not in harm.columns},
    }
    assert side == rebuilt


def test_per_scan_files_skip_fsync_and_an_empty_one_counts_as_missing(tmp_path, monkeypatch):
    """Per-scan files are written without an fsync each (rename keeps them whole for readers);
    an OS crash may leave one empty, and a re-run must then recompute the scan."""
    import neuroharmony_bids.atomic as A

    synced = []
    monkeypatch.setattr(A.os, "fsync", lambda fd: synced.append(fd))
    out = _outputs(tmp_path)
    assert D.is_done(out, SCAN) and not list(D.scan_dir(out, SCAN).glob(TMP_PREFIX + "*"))
    assert len(synced) == 4  # the four dataset-level files are synced, the per-scan ones not
    D.write_output(tmp_path / "durable.txt", "x\n")
    assert len(synced) == 5  # the default write is durable
    paths = D.scan_outputs(out, SCAN)
    paths["raw_json"].write_bytes(b"")
    assert D.missing_outputs(out, SCAN) == ["raw_json"]
    assert not D.is_done(out, SCAN)


def test_atomic_write_creates_folders_keeps_mode_and_leaves_no_temp(tmp_path, monkeypatch):
    import os

    import neuroharmony_bids.atomic as A

    target = tmp_path / "new" / "deeper" / "file.tsv"
    old = os.umask(0o077)
    try:
        A.write_text(target, "a\tb\n", durable=False)
        A.write_text(target, "c\td\n")  # replaces it
    finally:
        os.umask(old)
    assert target.read_text() == "c\td\n"
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)
    assert [p.name for p in target.parent.iterdir()] == ["file.tsv"]
    # a temporary name left by a killed process of the same id: another name is taken
    monkeypatch.setattr(A, "_COUNTER", iter([7, 7]))
    stale = target.parent / f"{TMP_PREFIX}{os.getpid()}-{A.threading.get_ident()}-7.tmp"
    stale.write_text("stale")
    A.write_text(target, "e\n", durable=False)
    assert target.read_text() == "e\n" and stale.read_text() == "stale"
    # a failed write leaves neither a partial file nor its temporary file
    monkeypatch.setattr(A.os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(28, "full")))
    with pytest.raises(OSError):
        A.write_text(target, "f\n", durable=False)
    assert target.read_text() == "e\n"
    assert sorted(p.name for p in target.parent.iterdir()) == sorted(["file.tsv", stale.name])


@pytest.mark.bids_validator
def test_bids_validator_accepts_the_output_folder(tmp_path):
    out = _outputs(tmp_path)
    (out / "logs").mkdir()
    (out / "logs" / "run.log").write_text("log\n")
    F.write_failure(out, Scan("02", Path("/x")), "age is n/a", 65)
    proc = subprocess.run(
        ["bids-validator-deno", "--format", "json", str(out)], capture_output=True, text=True
    )
    issues = json.loads(proc.stdout)["issues"]["issues"]
    errors = [i for i in issues if i["severity"] == "error"]
    assert errors == [], errors
    assert proc.returncode == 0


def test_failure_records_round_trip(tmp_path):
    out = tmp_path / "out"
    F.write_failure(out, SCAN, "age is n/a", 65)
    table = F.read_failures(out)
    assert table.to_dict("records") == [
        {
            "bids_name": "sub-01_ses-a_run-2_T1w",
            "participant_id": "sub-01",
            "session_id": "ses-a",
            "reason": "age is n/a",
            "exit_code": 65,
        }
    ]
    F.clear_failure(out, SCAN)
    assert F.read_failures(out).empty
