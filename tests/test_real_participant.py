"""The participant level on real tool outputs (tests/data/real): FreeSurfer 5.3-7.4.1,
FastSurfer 2.x, MRIQC 21-24 JSONs with NaN and -1 IQMs. Every scan is harmonized."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neuroharmony_bids.bids import derivatives as D
from neuroharmony_bids.cli.run import run
from neuroharmony_bids.harmonize.io import load_model
from neuroharmony_bids.tabular import HARMONIZED_DECIMALS
from neuroharmony_bids.testing.real_corpus import REAL_PAIRS, build_real_dataset

REAL = Path(__file__).resolve().parent / "data" / "real"


def _argv(bids: Path, out: Path, fs_dir: Path, mq_dir: Path, *extra: str) -> list[str]:
    return [
        str(bids), str(out), "participant", "--skip-bids-validation",
        "--freesurfer-dir", str(fs_dir), "--mriqc-dir", str(mq_dir), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    bids, fs_dir, mq_dir = build_real_dataset(root, REAL)
    out = root / "out"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = run(_argv(bids, out, fs_dir, mq_dir))
    return {"out": out, "code": code, "err": err.getvalue(), "argv": (bids, fs_dir, mq_dir)}


def _outputs(out: Path, sub: str) -> dict[str, object]:
    stem = out / f"sub-{sub}" / "anat" / f"sub-{sub}_desc-"
    return {
        "raw": pd.read_csv(f"{stem}raw_morph.tsv", sep="\t").iloc[0],
        "harm": pd.read_csv(f"{stem}harmonized_morph.tsv", sep="\t").iloc[0],
        "raw_json": json.loads(Path(f"{stem}raw_morph.json").read_text()),
        "harm_json": json.loads(Path(f"{stem}harmonized_morph.json").read_text()),
    }


@pytest.mark.slow  # the participant level over six real subjects: ~10 s
def test_every_real_scan_is_harmonized(real_run):
    assert real_run["code"] == 0, real_run["err"]
    for sub, *_ in REAL_PAIRS:
        assert _outputs(real_run["out"], sub)["harm"]["nh_status"] == "harmonized", sub


@pytest.mark.slow
def test_nan_iqm_costs_a_flag_not_the_scan(real_run):
    """MRIQC 22.0.6 JSON with a bare NaN token for qi_1 (a core IQM of the model)."""
    got = _outputs(real_run["out"], "fs741")
    assert got["harm"]["nh_iqms_missing"] == "qi_1"
    assert "qi_1" not in got["harm"]["nh_features_used"].split(";")
    assert got["harm_json"]["ImageQualityMetrics"]["Unavailable"]["qi_1"] == "NaN"
    assert got["harm_json"]["Harmonization"]["IQMsMissing"] == ["qi_1"]


@pytest.mark.slow
def test_fastsurfer_subject_is_harmonized_on_its_aseg_regions(real_run):
    out = real_run["out"]
    got = _outputs(out, "fastsurfer")
    model = load_model()
    aseg_in_model = [r for r in model.regions_ if not r.startswith(("lh_", "rh_"))]
    cortical = [c for c in got["raw"].index if c.startswith(("lh_", "rh_"))]
    assert cortical == []  # DKT volumes never pose as Desikan regions
    assert got["harm"]["nh_n_regions"] == len([r for r in aseg_in_model if r in got["raw"]])
    fs = got["harm_json"]["FreeSurfer"]
    assert fs["Pipeline"] == "FastSurfer" and fs["CorticalAtlas"] == "DKT"
    assert "31 per hemisphere" in fs["CorticalRegions"] and "34" in fs["CorticalRegions"]
    assert "sub-fastsurfer: FastSurfer subject: cortical regions are DKT" in real_run["err"]
    # rows with different region sets are independent: each equals the core on its own row
    for sub in ("fastsurfer", "fs60"):
        one = _outputs(out, sub)
        regions = [c for c in one["raw"].index if c in D.REGION_ORDER]
        table = pd.DataFrame([{"age": 30.0, "sex": "F", **one["raw"][regions].to_dict()}])
        table["age"] = one["raw_json"]["Covariates"]["age"]
        table["sex"] = one["raw_json"]["Covariates"]["sex"]
        for name, value in one["raw_json"]["ImageQualityMetrics"]["Values"].items():
            table[name] = np.nan if value is None else value
        alone, sd = model.transform(table, return_sd=True)
        harmonized = [r for r in regions if r in model.regions_]
        # written rounded to tabular.HARMONIZED_DECIMALS: the core's values, rounded
        np.testing.assert_allclose(
            one["harm"][harmonized].astype(float),
            np.round(alone.iloc[0][harmonized].astype(float), HARMONIZED_DECIMALS),
            rtol=1e-12,
        )
        np.testing.assert_allclose(  # posterior SD (mm³) of each harmonized region
            one["harm"][[D.sd_column(r) for r in harmonized]].astype(float),
            np.round(sd.iloc[0][harmonized].astype(float), HARMONIZED_DECIMALS),
            rtol=1e-12,
        )


@pytest.mark.slow
def test_freesurfer_version_found_and_trained_on(real_run):
    """The model is trained on FreeSurfer 6.0: a single 7.4.1 scan is flagged, and the sidecar
    and report name both versions."""
    out = real_run["out"]
    fs741, fs60 = _outputs(out, "fs741"), _outputs(out, "fs60")
    versions = fs741["harm_json"]["Harmonization"]["FreeSurferVersion"]
    assert versions == {"Found": "7.4.1", "ModelTrainedOn": "6.0"}
    assert "freesurfer_version" in fs741["harm"]["nh_out_of_range_features"].split(";")
    assert fs741["harm"]["nh_out_of_range"] == 1
    assert fs60["harm_json"]["Harmonization"]["FreeSurferVersion"]["Found"] == "6.0"
    assert fs60["harm"]["nh_out_of_range"] == 0
    (report_file,) = [p for p in out.rglob("*.html") if p.name.startswith("sub-fs741_")]
    report = report_file.read_text()
    assert "FreeSurfer version (found / model trained on)" in report and "7.4.1 / 6.0" in report


@pytest.mark.slow
def test_posterior_sd_in_scan_and_group_tables(real_run, tmp_path):
    out = real_run["out"]
    model = load_model()
    fs60 = _outputs(out, "fs60")
    sd_cols = [c for c in fs60["harm"].index if c.endswith(D.SD_SUFFIX)]
    assert sd_cols == [D.sd_column(r) for r in D.REGION_ORDER if r in model.regions_]
    values = fs60["harm"][sd_cols].astype(float)
    # NaN exactly where a region was left unharmonized (a 0 mm³ hypointensity the correction
    # would take below 0): each of them is named in nh_regions_flagged
    flagged = str(fs60["harm"]["nh_regions_flagged"]).split(";")
    left_raw = [c for c in sd_cols if not np.isfinite(values[c])]
    assert all(c[: -len(D.SD_SUFFIX)] in flagged for c in left_raw), (left_raw, flagged)
    assert len(left_raw) <= 3
    for c in left_raw:
        assert fs60["harm"][c[: -len(D.SD_SUFFIX)]] == fs60["raw"][c[: -len(D.SD_SUFFIX)]]
    assert (values.drop(left_raw) > 0).all()
    entry = fs60["harm_json"][D.sd_column("Left-Hippocampus")]
    assert entry["Units"] == "mm^3" and "Posterior standard deviation" in entry["Description"]
    fast = _outputs(out, "fastsurfer")["harm"]
    assert not any(c.startswith(("lh_", "rh_")) for c in fast.index)
    assert np.isfinite(float(fast[D.sd_column("Left-Hippocampus")]))
    # the group tables carry the SD columns; the FastSurfer row has none for the cortex
    bids = real_run["argv"][0]
    assert run([str(bids), str(out), "group", "--skip-bids-validation"]) == 0
    group = pd.read_csv(out / "group_desc-harmonized_morph.tsv", sep="\t").set_index("bids_name")
    assert set(sd_cols) <= set(group.columns)
    assert np.isnan(group.loc["sub-fastsurfer_T1w", D.sd_column("lh_bankssts_volume")])
    np.testing.assert_allclose(group.loc["sub-fs60_T1w", sd_cols].astype(float), values)
    dictionary = json.loads((out / "group_desc-harmonized_morph.json").read_text())
    assert dictionary[D.sd_column("Left-Hippocampus")]["Units"] == "mm^3"


@pytest.mark.slow
def test_rerun_with_overwrite_is_byte_identical(real_run, tmp_path):
    out = real_run["out"]
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.glob("sub-*/anat/*_morph.*"))}
    with contextlib.redirect_stderr(io.StringIO()):
        assert run(_argv(*real_run["argv"][:1], out, *real_run["argv"][1:], "--overwrite")) == 0
    after = {p.relative_to(out): p.read_bytes() for p in sorted(out.glob("sub-*/anat/*_morph.*"))}
    assert len(before) == 4 * len(REAL_PAIRS) and after == before
