"""The tabular ``neuroharmony`` command: harmonize, train, info, and its exit codes."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
from _synth import REGIONS, synth_table

from neuroharmony_bids.cli.table import main
from neuroharmony_bids.harmonize.io import DEFAULT_MODEL


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


@pytest.mark.slow
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


# --------------------------------------------------------------------------- hostile tables


def _no_traceback(res: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


@pytest.fixture
def call(capsys):
    """Run ``neuroharmony`` in this process (fast): CompletedProcess-like result."""

    def _call(*args: str) -> subprocess.CompletedProcess:
        code = 0
        try:
            main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    return _call


def test_repeated_column_names_refused_naming_them(trained, tmp_path, call):
    _, table, model = trained
    text = table.drop(columns=["site"]).to_csv(index=False)
    header, rest = text.split("\n", 1)
    inp = tmp_path / "dup.csv"
    inp.write_text(header.replace(REGIONS[3], "age") + "\n" + rest)
    res = call("harmonize", str(inp), str(tmp_path / "out.csv"), "--model", str(model))
    assert res.returncode == 65
    assert "repeated column name" in res.stderr and "'age' in columns" in res.stderr
    _no_traceback(res)
    assert not (tmp_path / "out.csv").exists()


def test_million_column_header_fails_fast(trained, tmp_path, call):
    _, _, model = trained
    inp = tmp_path / "wide.csv"
    inp.write_text(",".join(["a"] * 1_000_000) + "\n" + "1," * 999_999 + "1\n")
    res = call("harmonize", str(inp), str(tmp_path / "out.csv"), "--model", str(model))
    assert res.returncode == 65
    assert "wide.csv, line 1: 1,000,000 columns" in res.stderr
    _no_traceback(res)
    inp.write_text(",".join(f"column{i}" for i in range(1_000_000)) + "\n")  # 8 MB header
    res = call("harmonize", str(inp), str(tmp_path / "out.csv"), "--model", str(model))
    assert res.returncode == 65 and "wide.csv, line 1: the header line is longer" in res.stderr
    _no_traceback(res)


def test_missing_input_66_unwritable_output_64_same_file_64(trained, tmp_path, call):
    tmp, table, model = trained
    res = call(
        "harmonize", str(tmp_path / "nope.csv"), str(tmp_path / "o.csv"), "--model", str(model)
    )
    assert res.returncode == 66 and "does not exist" in res.stderr
    _no_traceback(res)
    src = tmp / "train.tsv"
    blocked = "/proc/nope/out.csv" if os.geteuid() == 0 else "/nonexistent-root-folder/o.csv"
    res = call("harmonize", str(src), blocked, "--model", str(model))
    assert res.returncode == 64 and "cannot write the output table" in res.stderr
    _no_traceback(res)
    copy = tmp_path / "same.tsv"
    copy.write_bytes(src.read_bytes())
    before = copy.read_bytes()
    res = call("harmonize", str(copy), str(copy), "--model", str(model))
    assert res.returncode == 64 and "input table itself" in res.stderr
    _no_traceback(res)
    assert copy.read_bytes() == before


def test_formula_cells_neutralised_numbers_untouched(trained, tmp_path, call):
    _, table, model = trained
    t = table.drop(columns=["site"]).head(6).copy()
    t["participant_id"] = t["participant_id"].astype(object)
    t.loc[0, "participant_id"] = '=HYPERLINK("http://x","y")'
    t.loc[1, "participant_id"] = "+cmd|' /C calc'!A0"
    t.loc[2, "participant_id"] = "@SUM(1+1)"
    t.loc[3, "participant_id"] = "-2+3"
    t["note"] = ["-4.5", "ok", "=1+1", "x", "y", "z"]
    inp = tmp_path / "inj.csv"
    t.to_csv(inp, index=False)
    out = tmp_path / "out.csv"
    res = call("harmonize", str(inp), str(out), "--model", str(model))
    assert res.returncode == 0, res.stderr
    assert "5 text cell(s)" in res.stdout
    got = pd.read_csv(out, dtype={"participant_id": str, "note": str})
    assert list(got["participant_id"][:4]) == [
        "'=HYPERLINK(\"http://x\",\"y\")", "'+cmd|' /C calc'!A0", "'@SUM(1+1)", "'-2+3",
    ]  # fmt: skip
    assert list(got["note"][:3]) == ["-4.5", "ok", "'=1+1"]  # a number in a text column stays
    assert (got["age"] == t["age"]).all()  # numbers stay numbers


@pytest.mark.slow
def test_streamed_blocks_give_the_same_bytes_and_global_row_numbers(trained, tmp_path, monkeypatch):
    """Tiny blocks (many of them) vs one block: identical output; errors name the table's row."""
    from neuroharmony_bids import tabular

    tmp, table, model = trained
    inp = tmp_path / "in.tsv"
    table.drop(columns=["site"]).to_csv(inp, sep="\t", index=False)
    main(["harmonize", str(inp), str(tmp_path / "one.tsv"), "--model", str(model)])
    monkeypatch.setattr(tabular, "BLOCK_BYTES", 4096)
    assert len(list(tabular.iter_blocks(inp))) > 3
    main(["harmonize", str(inp), str(tmp_path / "many.tsv"), "--model", str(model)])
    assert (tmp_path / "one.tsv").read_bytes() == (tmp_path / "many.tsv").read_bytes()
    got = pd.read_csv(tmp_path / "many.tsv", sep="\t")
    assert set(got["nh_features_used"]) <= {"core", "full"}
    bad = table.drop(columns=["site"]).copy()
    bad.loc[90, "age"] = -3  # a later block
    bad.to_csv(inp, sep="\t", index=False)
    with pytest.raises(SystemExit) as exc:
        main(["harmonize", str(inp), str(tmp_path / "bad.tsv"), "--model", str(model)])
    assert exc.value.code == 65
    dup = table.drop(columns=["site"]).copy()
    dup.loc[95, "participant_id"] = dup.loc[2, "participant_id"]  # repeated across blocks
    dup.to_csv(inp, sep="\t", index=False)
    with pytest.raises(SystemExit):
        main(["harmonize", str(inp), str(tmp_path / "dup.tsv"), "--model", str(model)])
    assert not (tmp_path / "bad.tsv").exists() and not (tmp_path / "dup.tsv").exists()


def test_block_errors_name_the_tables_row(trained, tmp_path, monkeypatch, capsys):
    from neuroharmony_bids import tabular

    _, table, model = trained
    monkeypatch.setattr(tabular, "BLOCK_BYTES", 4096)
    bad = table.drop(columns=["site"]).copy()
    bad.loc[90, "age"] = -3
    inp = tmp_path / "in.csv"
    bad.to_csv(inp, index=False)
    with pytest.raises(SystemExit):
        main(["harmonize", str(inp), str(tmp_path / "o.csv"), "--model", str(model)])
    assert "row 91 (participant_id=" in capsys.readouterr().err
    dup = table.drop(columns=["site"]).copy()
    dup.loc[95, "participant_id"] = dup.loc[2, "participant_id"]
    dup.to_csv(inp, index=False)
    with pytest.raises(SystemExit):
        main(["harmonize", str(inp), str(tmp_path / "o.csv"), "--model", str(model)])
    assert "row 3 " in capsys.readouterr().err  # the first of the two rows, across blocks


def test_text_in_numeric_column_after_first_block_is_named(trained, tmp_path, monkeypatch, capsys):
    """pyarrow types the columns on the first block; a later text cell falls back to the exact
    (pandas) path, whose message names the cell."""
    from neuroharmony_bids import tabular

    _, table, model = trained
    monkeypatch.setattr(tabular, "BLOCK_BYTES", 4096)
    bad = table.drop(columns=["site"]).astype({"age": object})
    bad.loc[80, "age"] = "eighty"
    inp = tmp_path / "in.csv"
    bad.to_csv(inp, index=False)
    with pytest.raises(SystemExit) as exc:
        main(["harmonize", str(inp), str(tmp_path / "o.csv"), "--model", str(model)])
    assert exc.value.code == 65
    assert "column 'age', row 81" in capsys.readouterr().err


def test_unexpected_error_is_one_line_and_a_log(trained, tmp_path, monkeypatch, capsys):
    import neuroharmony_bids.harmonize.apply as apply

    tmp, _, model = trained
    monkeypatch.setattr(apply, "harmonize_table", lambda *a, **k: 1 / 0)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    with pytest.raises(SystemExit) as exc:
        main(["harmonize", str(tmp / "train.tsv"), str(tmp_path / "o.csv"), "--model", str(model)])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "ZeroDivisionError" in err and "this is a bug" in err
    logs = list(tmp_path.glob("neuroharmony-harmonize-*.log"))
    assert len(logs) == 1 and "Traceback" in logs[0].read_text()


def test_info_refuses_damaged_models_and_compares(trained, tmp_path, call):
    from neuroharmony_bids.testing.hostile import model_variant

    _, _, model = trained
    minimal = tmp_path / "minimal.json"
    minimal.write_bytes(model_variant("minimal document", model))
    res = call("info", str(minimal))
    assert res.returncode == 65 and "minimal.json" in res.stderr
    _no_traceback(res)
    fifo = tmp_path / "m.fifo"
    os.mkfifo(fifo)
    res = call("info", str(fifo))
    assert res.returncode == 65 and "FIFO" in res.stderr
    res = call("info", "--compare", str(model), str(model))
    assert res.returncode == 0 and "same file content" in res.stdout
    res = call("info", "--compare", str(model), str(DEFAULT_MODEL))
    assert res.returncode == 1 and "differ beyond rtol=1e-09" in res.stdout


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_streamed_and_whole_table_paths_write_the_same_bytes(
    trained, tmp_path, monkeypatch, call, suffix
):
    """Several blocks vs the whole table at once, on flagged rows, missing IQMs, text that
    needs quoting (only in later blocks), formula cells and an all-empty text column: one
    output, byte for byte, and the same on a second run."""
    from neuroharmony_bids import tabular
    from neuroharmony_bids.harmonize import features as F

    _, table, model = trained
    t = table.drop(columns=["site"]).copy()
    t.loc[5, F.CORE_IQMS[0]] = float("nan")  # a missing IQM
    t.loc[[7, 60], F.CORE_IQMS[1]] *= 50  # out of the training range: flagged
    t.loc[61, REGIONS[0]] *= 4  # a region far from its expected value
    t.loc[62, REGIONS[1]] = float("nan")  # an empty volume: flagged, written empty / n/a
    t.loc[63, REGIONS[2]] = -5.0  # a negative one: flagged, written as it came
    t.loc[70, "notes"] = 'said "no", then left\ttab'  # delimiter, quote, tab: a later block
    t.loc[71, "notes"] = "two\r\nlines"
    t.loc[72, "notes"] = "=1+1"
    t["empty"] = float("nan")
    t["empty"] = t["empty"].astype(object)
    inp = tmp_path / f"in{suffix}"
    t.to_csv(inp, sep="," if suffix == ".csv" else "\t", index=False)
    monkeypatch.setattr(tabular, "BLOCK_BYTES", 4096)
    assert len(list(tabular.iter_blocks(inp))) > 3
    outs = [tmp_path / f"streamed{i}{suffix}" for i in (1, 2)]
    for out in outs:
        assert call("harmonize", str(inp), str(out), "--model", str(model)).returncode == 0

    def whole(*args, **kwargs):
        raise tabular.Unstreamable("test: take the whole-table path")

    monkeypatch.setattr(tabular, "iter_blocks", whole)
    one = tmp_path / f"whole{suffix}"
    res = call("harmonize", str(inp), str(one), "--model", str(model))
    assert res.returncode == 0, res.stderr
    assert outs[0].read_bytes() == outs[1].read_bytes() == one.read_bytes()
    got = pd.read_csv(one, sep="," if suffix == ".csv" else "\t", dtype={"notes": str})
    assert got["notes"][70] == 'said "no", then left\ttab' and got["notes"][72] == "'=1+1"
    assert got["notes"][71] == "two\r\nlines" and got["empty"].isna().all()
    assert got["nh_out_of_range"][[7, 60]].tolist() == [1, 1]
    assert pd.isna(got[REGIONS[1]][62]) and got[REGIONS[2]][63] == -5.0
    assert REGIONS[1] in got["nh_regions_flagged"][62]
    assert len(got) == len(t) and list(got.columns[: t.shape[1]]) == list(t.columns)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_number_columns_passed_through_keep_their_input_text(
    trained, tmp_path, monkeypatch, call, suffix
):
    """A number column the command does not change (IQMs, age, extra columns) is written as
    the input spelled it (``12.500000`` stays), spaces around a number dropped, missing as
    missing; on the streamed path (blocks that start a column as empty too), the whole-table
    fallback and ``--site-column`` alike. pandas reads back the input's numbers."""
    import csv

    from neuroharmony_bids import tabular
    from neuroharmony_bids.harmonize import features as F

    _, table, model = trained
    sep = "," if suffix == ".csv" else "\t"
    t = table.copy()
    iqm = F.CORE_IQMS[0]
    spelled = [f"{v:.6f}" for v in t[iqm]]  # trailing zeros: not the shortest text
    spelled[3], spelled[4], spelled[5] = f" {t[iqm][3]!r} ", f"{t[iqm][4]:E}", ""
    t[iqm] = spelled
    t["age"] = [f"{v:.2f}" for v in t["age"]]
    t["score"] = ["-3.50", "+2", "7", "-inf", "1e3"] * (len(t) // 5)  # no formula guard
    t["late"] = [""] * 80 + ["2.50"] * (len(t) - 80)  # empty in the first blocks
    inp = tmp_path / f"in{suffix}"
    t.to_csv(inp, sep=sep, index=False)
    monkeypatch.setattr(tabular, "BLOCK_BYTES", 4096)
    assert len(list(tabular.iter_blocks(inp))) > 3

    def cells(path) -> dict[str, list[str]]:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh, delimiter=sep))
        return {name: [r[i] for r in rows[1:]] for i, name in enumerate(rows[0])}

    missing = "" if suffix == ".csv" else "n/a"
    expect = {
        iqm: [s.strip() or missing for s in spelled],
        "age": list(t["age"]),
        "score": list(t["score"]),
        "late": [s or missing for s in t["late"]],
    }
    streamed = tmp_path / f"streamed{suffix}"
    assert call("harmonize", str(inp), str(streamed), "--model", str(model)).returncode == 0
    got = cells(streamed)
    for name, text in expect.items():
        assert got[name] == text, name
    back = pd.read_csv(streamed, sep=sep)
    assert back[iqm].equals(pd.to_numeric(t[iqm].str.strip()).rename(iqm))
    assert (back["age"] == t["age"].astype(float)).all()

    joint = tmp_path / f"joint{suffix}"
    res = call("harmonize", str(inp), str(joint), "--model", str(model), "--site-column", "site")
    assert res.returncode == 0, res.stderr
    assert all(cells(joint)[name] == text for name, text in expect.items())

    def whole(*args, **kwargs):
        raise tabular.Unstreamable("test: take the whole-table path")

    monkeypatch.setattr(tabular, "iter_blocks", whole)
    one = tmp_path / f"whole{suffix}"
    assert call("harmonize", str(inp), str(one), "--model", str(model)).returncode == 0
    assert one.read_bytes() == streamed.read_bytes()
