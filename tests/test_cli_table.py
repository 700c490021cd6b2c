"""The tabular ``neuroharmony`` command: harmonize, train, info, and its exit codes."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from _synth import REGIONS, synth_table

from neuroharmony_bids.cli.table import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "neuroharmony_bids.cli.table", *args],
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    table = synth_table(n_sites=4, per_site=25, seed=9)
    table["dx"] = ["ASD", "TD"] * (len(table) // 2)
    src = tmp / "train.tsv"
    table.to_csv(src, sep="\t", index=False)
    model = tmp / "model.json"
    main(["train", str(src), str(model), "--site-column", "site", "--covariates", "dx"])
    return tmp, table, model


def test_train_info_harmonize_round_trip(trained):
    tmp, table, model = trained
    info = run("info", str(model))
    assert info.returncode == 0, info.stderr
    assert "dx[TD]" in info.stdout and "sha256" in info.stdout
    inp = tmp / "new.csv"
    table.drop(columns=["site"]).to_csv(inp, index=False)
    out = tmp / "out.csv"
    res = run("harmonize", str(inp), str(out), "--model", str(model))
    assert res.returncode == 0, res.stderr
    got = pd.read_csv(out)
    assert len(got) == len(table)
    assert list(got.columns[: table.shape[1] - 1]) == list(table.drop(columns=["site"]).columns)
    assert {"nh_status", "nh_out_of_range", "nh_features_used"} <= set(got.columns)
    assert not got[REGIONS].equals(table[REGIONS])
    # deterministic, byte-identical output
    out2 = tmp / "out2.csv"
    run("harmonize", str(inp), str(out2), "--model", str(model))
    assert out.read_bytes() == out2.read_bytes()


def test_joint_mode_and_tsv(trained):
    tmp, table, model = trained
    inp = tmp / "new.tsv"
    table.to_csv(inp, sep="\t", index=False)
    out = tmp / "joint.tsv"
    res = run("harmonize", str(inp), str(out), "--model", str(model), "--site-column", "site")
    assert res.returncode == 0, res.stderr
    assert pd.read_csv(out, sep="\t").shape[0] == len(table)


def test_bad_input_exit_65_and_no_output(trained):
    tmp, table, model = trained
    bad = table.copy().astype({"age": object})
    bad.loc[7, "age"] = "seven"
    inp = tmp / "bad.csv"
    bad.to_csv(inp, index=False)
    out = tmp / "never.csv"
    res = run("harmonize", str(inp), str(out), "--model", str(model))
    assert res.returncode == 65
    assert "column 'age', row 8" in res.stderr
    assert not out.exists()
    assert not list(tmp.glob(".nhtmp-*"))


def test_usage_errors_exit_64(trained):
    tmp, table, model = trained
    res = run("harmonize", str(tmp / "train.tsv"), str(tmp / "out.xlsx"), "--model", str(model))
    assert res.returncode == 64
    assert "must end in .csv or .tsv" in res.stderr
    res = run("train", str(tmp / "train.tsv"), str(tmp / "m2.json"))
    assert res.returncode == 64  # --site-column is required
    assert "--site-column" in res.stderr


def test_model_errors_exit_65(tmp_path, trained):
    tmp, _, _ = trained
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    res = run("info", str(broken))
    assert res.returncode == 65
    assert "corrupt or truncated" in res.stderr
