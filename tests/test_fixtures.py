"""Fixture datasets: valid BIDS, derivatives in real layouts, generic enough for simulated rows."""

from __future__ import annotations

import gzip
import json
import subprocess

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from neuroharmony_bids.harmonize.features import CORE_IQMS, DK_REGIONS
from neuroharmony_bids.io.freesurfer_stats import read_subject_volumes
from neuroharmony_bids.io.mriqc_json import read_group_tsv, read_iqm_json
from neuroharmony_bids.testing import abide_rows, build_bids_dataset, tiny_t1w_bytes


def test_tiny_t1w_is_a_deterministic_valid_nifti(tmp_path):
    data = tiny_t1w_bytes()
    assert data == tiny_t1w_bytes()
    path = tmp_path / "x.nii.gz"
    path.write_bytes(data)
    img = nb.load(path)
    assert img.shape == (8, 8, 8) and img.get_fdata().max() == 200
    assert gzip.decompress(data)[344:348] == b"n+1\x00"


@pytest.mark.bids_validator
def test_abide_dataset_is_valid_bids_with_real_layout_derivatives(abide_table, tmp_path):
    rows = abide_rows(abide_table, 4, seed=2)
    fx = build_bids_dataset(tmp_path / "ds", rows)
    proc = subprocess.run(
        ["bids-validator-deno", "--format", "json", str(fx.root)], capture_output=True, text=True
    )
    assert proc.returncode == 0
    assert not [i for i in json.loads(proc.stdout)["issues"]["issues"] if i["severity"] == "error"]
    ptable = pd.read_csv(fx.root / "participants.tsv", sep="\t")
    assert list(ptable["participant_id"]) == [f"sub-{s}" for s in rows["SUB_ID"]]
    assert np.allclose(ptable["age"], rows["AGE_AT_SCAN"])
    assert list(ptable["site"]) == list(rows["SITE_ID"])
    for (_, row), name in zip(rows.iterrows(), fx.bids_names, strict=True):
        sub = name[: -len("_T1w")]
        side = json.loads((fx.root / sub / "anat" / f"{name}.json").read_text())
        assert (
            side["Manufacturer"] == row["vendor"] and side["ManufacturersModelName"] == row["model"]
        )
        vols = read_subject_volumes(fx.freesurfer_dir / sub)
        assert vols["Left-Thalamus-Proper"] == pytest.approx(row["Left-Thalamus-Proper"], abs=0.05)
        iqms = read_iqm_json(fx.mriqc_dir / f"{name}.json", CORE_IQMS)
        assert iqms["cjv"] == pytest.approx(row["iqm_cjv"])


def test_simulated_rows_with_other_column_names(tmp_path):
    """What the example generator passes: FS7 names, plain IQM names, its own id/age columns."""
    rng = np.random.default_rng(0)
    n = 3
    rows = pd.DataFrame(
        {
            "pid": ["a1", "b2", "c3"],
            "years": [30.0, 41.5, 55.0],
            "gender": ["F", "M", "F"],
            "scanner": ["Vendor X"] * n,
            "Left-Thalamus": rng.uniform(6000, 8000, n),
            "EstimatedTotalIntraCranialVol": rng.uniform(1.3e6, 1.7e6, n),
            **{r: rng.uniform(1000, 9000, n).round() for r in DK_REGIONS},
            **{q: rng.uniform(0.1, 5, n) for q in CORE_IQMS},
        }
    )
    fx = build_bids_dataset(
        tmp_path / "sim", rows, id_column="pid", age_column="years", sex_column="gender",
        site_column=None, manufacturer_column="scanner", model_column=None,
        fs_version="7.4.1", mriqc_layout="group",
    )  # fmt: skip
    assert fx.participants == ["sub-a1", "sub-b2", "sub-c3"]
    vols = read_subject_volumes(fx.freesurfer_dir / "sub-b2")
    assert vols["Left-Thalamus"] == pytest.approx(rows.loc[1, "Left-Thalamus"], abs=0.05)
    table = read_group_tsv(fx.mriqc_dir / "group_T1w.tsv")
    assert table.loc["sub-c3_T1w", "cjv"] == pytest.approx(rows.loc[2, "cjv"])
    ptable = pd.read_csv(fx.root / "participants.tsv", sep="\t")
    assert "site" not in ptable.columns and list(ptable["sex"]) == ["F", "M", "F"]


def test_duplicate_scans_are_refused(abide_table, tmp_path):
    rows = abide_rows(abide_table, 2)
    rows["SUB_ID"] = 7
    with pytest.raises(ValueError, match="same scan sub-7"):
        build_bids_dataset(tmp_path / "dup", rows)
    with pytest.raises(ValueError, match="mriqc_layout"):
        build_bids_dataset(tmp_path / "x", abide_rows(abide_table, 1), mriqc_layout="nested")


def test_resampling_gives_unique_subjects(abide_table):
    rows = abide_rows(abide_table, 1000, seed=1, replace=True)
    assert len(rows) == 1000 and rows["SUB_ID"].is_unique


def test_failed_parcellations_can_be_left_out(abide_table):
    from neuroharmony_bids.testing import failed_parcellation

    bad = failed_parcellation(abide_table)
    assert bad.any()  # ABIDE has a few failed FreeSurfer runs (0 mm^3 regions)
    dk = [c for c in abide_table.columns if c.endswith("_volume")]
    assert ((abide_table.loc[bad, dk] <= 0).any(axis=1)).all()
    kept = abide_rows(abide_table, drop_failed=True)
    assert len(kept) == len(abide_table) - bad.sum()
    assert not failed_parcellation(kept).any()
