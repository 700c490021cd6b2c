"""The bundled SIMULATED example dataset: valid BIDS, has the derivatives, deterministic."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from neuroharmony_bids.harmonize.features import DK_REGIONS, ETIV, NEUROHARMONY_REGIONS
from neuroharmony_bids.harmonize.metrics import residual_site_effect, site_auc
from neuroharmony_bids.io.freesurfer_stats import read_subject_volumes
from neuroharmony_bids.io.mriqc_json import read_iqm_json
from neuroharmony_bids.testing.example import (
    SEED,
    SIMULATED_NAME,
    main,
    shipped_model,
    simulate_table,
    write_example_dataset,
)


def _digest(root):
    """sha256 per file; FreeSurfer stats name their SUBJECTS_DIR, so the root is masked."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes().replace(str(root).encode(), b"<root>")
            out[path.relative_to(root).as_posix()] = hashlib.sha256(data).hexdigest()
    return out


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    root = tmp_path_factory.mktemp("example") / "bids"
    assert main([str(root)]) == 0
    return root


def test_labelled_simulated(example):
    desc = json.loads((example / "dataset_description.json").read_text())
    assert desc["Name"] == SIMULATED_NAME and "SIMULATED" in desc["Name"]
    assert "SIMULATED DATA" in (example / "README").read_text()
    for sub in ("freesurfer", "mriqc"):
        d = json.loads((example / "derivatives" / sub / "dataset_description.json").read_text())
        assert d["Name"].startswith("SIMULATED")


def test_has_derivatives_for_every_scan(example):
    participants = pd.read_csv(example / "participants.tsv", sep="\t")
    assert len(participants) == 24
    assert participants["site"].nunique() == 4
    assert set(participants["sex"]) == {"M", "F"}
    for sub in participants["participant_id"]:
        assert (example / sub / "anat" / f"{sub}_T1w.nii.gz").is_file()
        vols = read_subject_volumes(example / "derivatives" / "freesurfer" / sub)
        assert all(r in vols for r in DK_REGIONS) and vols[ETIV] > 1e6
        iqms = read_iqm_json(example / "derivatives" / "mriqc" / sub / "anat" / f"{sub}_T1w.json")
        assert {"cjv", "snr_total", "efc"} <= set(iqms)


@pytest.mark.parametrize("use_model", [True, False], ids=["shipped-model", "built-in-table"])
def test_sites_differ_in_volumes_and_iqms(use_model):
    model = shipped_model() if use_model else None
    if use_model:
        assert model is not None, "the shipped model must load"
    table = simulate_table(model=model)
    regions = list(NEUROHARMONY_REGIONS)
    sites, covariates = table["site"].to_numpy(), table[["age", "sex"]]
    # simulated scanner effects are detectable beyond age and sex
    assert site_auc(table[regions], sites, covariates) > 0.8
    if use_model:  # realistic (ABIDE-sized) effects: many regions differ by site
        # site effects are drawn at random from the model's between-site covariance: judge the
        # simulation over several draws, not on whether one draw of 4 sites is typical
        share = []
        for seed in (SEED, 1, 2, 3, 4):
            t = table if seed == SEED else simulate_table(seed=seed, model=model)
            p = residual_site_effect(t[regions], t["site"].to_numpy(), t[["age", "sex"]])["p"]
            share.append((p < 0.05).mean())
        assert np.mean(share) > 0.15  # 5 % expected without site effects
    assert table.groupby("site")["cjv"].mean().std() > 0
    noisy = table.index[-1]
    assert table.loc[noisy, "cjv"] > table["cjv"].drop(noisy).max()
    assert table.loc[noisy, "snr_total"] < table["snr_total"].drop(noisy).min()


def test_deterministic(tmp_path, example):
    again = write_example_dataset(tmp_path / "again")
    assert _digest(again) == _digest(example)


def test_refuses_to_overwrite_other_data(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        write_example_dataset(tmp_path / "other")


@pytest.mark.skipif(
    shutil.which("bids-validator-deno") is None, reason="bids-validator-deno not installed"
)
def test_bids_validator_passes(example):
    proc = subprocess.run(
        ["bids-validator-deno", "--format", "json", str(example)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(proc.stdout)
    errors = [i for i in report["issues"]["issues"] if i.get("severity") == "error"]
    assert errors == [], errors[:3]
    assert proc.returncode == 0
