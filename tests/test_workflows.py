"""End to end: participant then group level on fixture datasets rendered from ABIDE rows."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neuroharmony_bids.bids import derivatives as D
from neuroharmony_bids.bids import failures as F
from neuroharmony_bids.cli.run import run
from neuroharmony_bids.harmonize.apply import harmonize_table
from neuroharmony_bids.harmonize.features import ETIV, canonical_region
from neuroharmony_bids.harmonize.io import load_model, model_info
from neuroharmony_bids.testing import build_bids_dataset, iqm_columns, volume_columns

SITES = ["CALTECH", "KKI", "OLIN", "PITT"]


def pick_rows(abide_table: pd.DataFrame, per_site: int, offset: int = 0) -> pd.DataFrame:
    """Half female, half male per site (ComBat needs sex to vary within sites)."""
    parts = []
    for site in SITES:
        at = abide_table[abide_table["SITE_ID"] == site].sort_values("SUB_ID")
        n_f = per_site // 2
        parts.append(at[at["sex"] == "F"].iloc[offset : offset + n_f])
        parts.append(at[at["sex"] == "M"].iloc[offset : offset + per_site - n_f])
    return pd.concat(parts).sort_values("SUB_ID").reset_index(drop=True)


def validator_errors(path: Path) -> list[dict]:
    proc = subprocess.run(
        ["bids-validator-deno", "--format", "json", str(path)], capture_output=True, text=True
    )
    return [i for i in json.loads(proc.stdout)["issues"]["issues"] if i["severity"] == "error"]


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("sub-*/**/*_morph.*"))}


@pytest.fixture(scope="module")
def main_run(abide_table, tmp_path_factory):
    """16 scans from 4 sites (FreeSurfer 6 layout, flat MRIQC JSONs): participant + group."""
    root = tmp_path_factory.mktemp("e2e")
    rows = pick_rows(abide_table, 4)
    bids = root / "bids"
    build_bids_dataset(bids, rows)
    out = root / "out"
    codes = {"participant": run([str(bids), str(out), "participant", "--nprocs", "2"])}
    codes["group"] = run([str(bids), str(out), "group", "--skip-bids-validation"])
    return {"bids": bids, "out": out, "rows": rows, "codes": codes}


@pytest.mark.slow  # the end-to-end main_run fixture takes ~35 s
@pytest.mark.bids_validator
def test_participant_and_group_succeed(main_run):
    assert main_run["codes"] == {"participant": 0, "group": 0}
    out = main_run["out"]
    names = sorted(p.name for p in out.glob("sub-*/anat/*_desc-harmonized_morph.tsv"))
    assert len(names) == len(main_run["rows"])
    assert not (out / "logs" / "failed").exists() or not list((out / "logs" / "failed").iterdir())


@pytest.mark.slow  # the end-to-end main_run fixture takes ~35 s
@pytest.mark.bids_validator
def test_bids_validator_accepts_output(main_run):
    assert validator_errors(main_run["out"]) == []


@pytest.mark.slow  # the end-to-end main_run fixture takes ~35 s
@pytest.mark.bids_validator
def test_raw_tables_hold_the_freesurfer_volumes(main_run):
    out, rows = main_run["out"], main_run["rows"]
    for _, row in rows.iterrows():
        raw = pd.read_csv(
            out / f"sub-{row['SUB_ID']}" / "anat" / f"sub-{row['SUB_ID']}_desc-raw_morph.tsv",
            sep="\t",
        )
        assert raw.loc[0, "participant_id"] == f"sub-{row['SUB_ID']}"
        for col in volume_columns(list(rows.columns)):
            canon = canonical_region(col)
            if canon in raw.columns:
                assert raw.loc[0, canon] == pytest.approx(float(row[col]), abs=0.051), col
        # FreeSurfer 6 spelling was written in the FreeSurfer 7 spelling
        assert "Left-Thalamus" in raw.columns and "Left-Thalamus-Proper" not in raw.columns


@pytest.mark.slow  # the end-to-end main_run fixture takes ~35 s
@pytest.mark.bids_validator
def test_harmonized_tables_equal_the_core_on_the_same_inputs(main_run):
    """The app feeds the core exactly the table's age, sex, IQMs and volumes."""
    out, rows = main_run["out"], main_run["rows"]
    table = pd.DataFrame(
        {
            "participant_id": "sub-" + rows["SUB_ID"].astype(str),
            "age": rows["AGE_AT_SCAN"],
            "sex": rows["sex"],
            **{name: rows[col] for col, name in iqm_columns(list(rows.columns)).items()},
            **{canonical_region(c): rows[c] for c in volume_columns(list(rows.columns))},
        }
    )
    expected = harmonize_table(table, load_model())
    for i, pid in enumerate(expected["participant_id"]):
        got = pd.read_csv(out / pid / "anat" / f"{pid}_desc-harmonized_morph.tsv", sep="\t")
        regions = [c for c in D.REGION_ORDER if c in got.columns and c != ETIV]
        np.testing.assert_allclose(
            got.loc[0, regions].astype(float),
            expected.loc[i, regions].astype(float),
            rtol=1e-8,
            atol=5e-4,  # written rounded to 3 decimals (tabular.HARMONIZED_DECIMALS)
        )
        assert got.loc[0, "nh_status"] == expected.loc[i, "nh_status"]
        assert got.loc[0, "nh_confidence"] == pytest.approx(expected.loc[i, "nh_confidence"])
        assert got.loc[0, "nh_n_regions"] == expected.loc[i, "nh_n_regions"]
        assert 0 <= got.loc[0, "nh_confidence"] <= 1
    raw0 = pd.read_csv(next(out.glob("sub-*/anat/*_desc-raw_morph.tsv")), sep="\t")
    harm0 = pd.read_csv(
        str(next(out.glob("sub-*/anat/*_desc-raw_morph.tsv"))).replace(
            "desc-raw", "desc-harmonized"
        ),
        sep="\t",
    )
    assert not np.allclose(raw0["Left-Hippocampus"], harm0["Left-Hippocampus"])


@pytest.mark.slow  # the end-to-end main_run fixture takes ~35 s
@pytest.mark.bids_validator
def test_dataset_description_names_the_model(main_run):
    desc = json.loads((main_run["out"] / "dataset_description.json").read_text())
    assert desc["NeuroharmonyModel"]["sha256"] == model_info()["sha256"]
    assert desc["DatasetType"] == "derivative"


@pytest.mark.slow  # the end-to-end main_run fixture takes ~35 s
@pytest.mark.bids_validator
def test_participant_reports_written(main_run):
    reports = list(main_run["out"].glob("sub-*/anat/*_report.html"))
    assert len(reports) == len(main_run["rows"])
    assert "<html" in reports[0].read_text()[:500].lower()


@pytest.mark.slow  # the end-to-end main_run fixture takes ~35 s
@pytest.mark.bids_validator
def test_rerun_is_a_noop_and_overwrite_is_byte_identical(main_run, capsys):
    bids, out = main_run["bids"], main_run["out"]
    before = snapshot(out)
    stats = {p: (out / p).stat().st_mtime_ns for p in before}
    argv = [
        str(bids),
        str(out),
        "participant",
        "--skip-bids-validation",
        "--no-participant-reports",
    ]
    assert run(argv) == 0
    assert "already have outputs and are skipped" in capsys.readouterr().err
    assert {p: (out / p).stat().st_mtime_ns for p in before} == stats
    assert run([*argv, "--overwrite"]) == 0
    after = snapshot(out)
    assert after == before
    assert any((out / p).stat().st_mtime_ns != stats[p] for p in before)
    # the per-scan HTML reports too: same inputs, same bytes (no run time in them)
    reports = {p: p.read_bytes() for p in sorted(out.glob("sub-*/**/*_report.html"))}
    assert len(reports) == len(main_run["rows"])
    assert run([*argv[:-1], "--overwrite"]) == 0
    assert {p: p.read_bytes() for p in reports} == reports


@pytest.mark.slow  # the end-to-end main_run fixture takes ~35 s
def test_files_written_by_forked_processes_are_the_threads_bytes(main_run, tmp_path, monkeypatch):
    """With --nprocs 2 and many scans, forked processes write the per-scan files (here from
    5 scans a task, so that both workers write): every file is the bytes the threads wrote,
    nothing is left half-written, and every scan is counted once."""
    import functools

    import neuroharmony_bids.workflows.participant as P

    forked = []
    in_processes = P._write_in_processes
    monkeypatch.setattr(P, "PROCESS_MIN_SCANS", 1)
    monkeypatch.setattr(P, "write_outputs", functools.partial(P.write_outputs, chunk=5))
    monkeypatch.setattr(
        P, "_write_in_processes", lambda *a, **k: forked.append(a[-2:]) or in_processes(*a, **k)
    )
    out = tmp_path / "out"
    argv = [str(main_run["bids"]), str(out), "participant", "--nprocs", "2"]
    assert run([*argv, "--skip-bids-validation", "--no-participant-reports"]) == 0
    assert forked == [(2, 5)]
    assert snapshot(out) == snapshot(main_run["out"])
    assert len(snapshot(out)) == 4 * len(main_run["rows"])
    assert not list(out.rglob(".nhtmp-*"))


@pytest.mark.slow  # the end-to-end main_run fixture takes ~35 s
@pytest.mark.bids_validator
def test_group_reads_per_scan_tables_of_the_previous_number_format(main_run, tmp_path):
    """A resumed run may meet per-scan TSVs written before the format change (``%.10g``
    floats, harmonized volumes not rounded to 3 decimals): the group level reads them
    alongside the new ones, and the values agree within that rounding."""
    from neuroharmony_bids.atomic import write_table

    out = tmp_path / "out"
    shutil.copytree(main_run["out"], out)
    read = dict(sep="\t", na_values="n/a", keep_default_na=False)
    old = sorted(out.glob("sub-*/anat/*_morph.tsv"))[::2]
    before = {p: p.read_bytes() for p in old}
    for path in old:  # atomic.write_table is the previous per-scan writer's reference
        table = pd.read_csv(path, **read)
        if "desc-harmonized" in path.name:  # unrounded, as earlier builds wrote them
            numbers = [c for c in table.columns if c.startswith(("Left-", "Right-"))]
            table[numbers] = table[numbers] + 1.234e-4
        write_table(path, table)
    assert sum(p.read_bytes() != before[p] for p in old) >= len(old) // 2  # 10 digits
    assert run([str(main_run["bids"]), str(out), "group", "--skip-bids-validation"]) == 0
    for name in ("raw", "harmonized"):
        new = pd.read_csv(main_run["out"] / f"group_desc-{name}_morph.tsv", **read)
        mixed = pd.read_csv(out / f"group_desc-{name}_morph.tsv", **read)
        pd.testing.assert_frame_equal(mixed, new, rtol=1e-9, atol=5e-4, check_dtype=False)


@pytest.mark.slow  # the end-to-end main_run fixture takes ~35 s
@pytest.mark.bids_validator
def test_group_tables(main_run):
    out, rows = main_run["out"], main_run["rows"]
    raw = pd.read_csv(out / "group_desc-raw_morph.tsv", sep="\t")
    harm = pd.read_csv(out / "group_desc-harmonized_morph.tsv", sep="\t")
    assert list(raw["bids_name"]) == sorted(f"sub-{s}_T1w" for s in rows["SUB_ID"])
    assert list(harm["bids_name"]) == list(raw["bids_name"])
    for col in ("age", "sex", "site", "Manufacturer", "cjv", "Left-Hippocampus", ETIV):
        assert col in raw.columns, col
    assert "nh_status" in harm.columns and "cjv" not in harm.columns
    # group rows equal the per-scan tables, spelled alike (one number format)
    for desc in ("raw", "harmonized"):
        lines = (out / f"group_desc-{desc}_morph.tsv").read_text().splitlines()
        head = lines[0].split("\t")
        for line in lines[1:]:
            cells = dict(zip(head, line.split("\t"), strict=True))
            pid = cells["participant_id"]
            one = (out / pid / "anat" / f"{pid}_desc-{desc}_morph.tsv").read_text().splitlines()
            mine = dict(zip(one[0].split("\t"), one[1].split("\t"), strict=True))
            assert len(mine) > 100 and {k: cells[k] for k in mine} == mine, pid
    ages = dict(zip("sub-" + rows["SUB_ID"].astype(str), rows["AGE_AT_SCAN"], strict=True))
    assert all(
        ages[p] == pytest.approx(a) for p, a in zip(raw["participant_id"], raw["age"], strict=True)
    )
    # without --site-column the site is the scanner from the sidecars
    assert raw["site"].nunique() == len(SITES)
    failed = pd.read_csv(out / "group_failed.tsv", sep="\t")
    assert failed.empty and list(failed.columns)[:2] == ["bids_name", "participant_id"]
    oor = pd.read_csv(out / "group_outofrange.tsv", sep="\t")
    assert set(oor["bids_name"]) == set(harm.loc[harm["nh_out_of_range"] == 1, "bids_name"])
    assert (out / "group_desc-harmonized_morph.json").is_file()
    assert (out / "group_report.html").is_file()


@pytest.mark.slow  # the end-to-end main_run fixture takes ~35 s
@pytest.mark.bids_validator
def test_group_with_another_model_is_refused(main_run, tmp_path, capsys):
    other = tmp_path / "other.json"
    other.write_bytes(Path(model_info()["path"]).read_bytes())
    doc = json.loads(other.read_text())
    # same arrays, different metadata → another file hash but a loadable model
    doc["metadata"]["name"] = "renamed"
    from neuroharmony_bids.harmonize.io import save_model

    save_model(load_model(), other, metadata=doc["metadata"])
    code = run([str(main_run["bids"]), str(main_run["out"]), "group", "--skip-bids-validation",
                "--model", str(other)])  # fmt: skip
    assert code == 64
    assert "pass the same --model" in capsys.readouterr().err


@pytest.mark.slow  # the end-to-end main_run fixture takes ~35 s
@pytest.mark.bids_validator
def test_failing_scans_do_not_stop_the_others(main_run, tmp_path, capsys):
    bids = tmp_path / "bids"
    shutil.copytree(main_run["bids"], bids)
    rows = main_run["rows"]
    s_age, s_aseg, s_iqm, s_zero = (f"sub-{s}" for s in rows["SUB_ID"].iloc[[0, 5, 9, 12]])
    ptsv = bids / "participants.tsv"
    ptable = pd.read_csv(ptsv, sep="\t", dtype=str)
    ptable.loc[ptable["participant_id"] == s_age, "age"] = "n/a"
    ptable.to_csv(ptsv, sep="\t", index=False)
    aseg = bids / "derivatives" / "freesurfer" / s_aseg / "stats" / "aseg.stats"
    text = aseg.read_text()
    aseg.write_text(text[: text.index("Left-Hippocampus") + 4])
    iqm = bids / "derivatives" / "mriqc" / f"{s_iqm}_T1w.json"
    data = json.loads(iqm.read_text())
    data["cjv"] = None
    iqm.write_text(json.dumps(data, indent=2))
    lh = bids / "derivatives" / "freesurfer" / s_zero / "stats" / "lh.aparc.stats"
    lines = lh.read_text().splitlines(keepends=True)
    pos = next(i for i, ln in enumerate(lines) if ln.startswith("cuneus "))
    lines[pos] = lines[pos][:54] + "    0" + lines[pos][59:]  # GrayVol column: 0 mm^3
    lh.write_text("".join(lines))
    out = tmp_path / "out"
    argv = [
        str(bids),
        str(out),
        "participant",
        "--skip-bids-validation",
        "--no-participant-reports",
    ]
    assert run(argv) == 1
    err = capsys.readouterr().err
    assert "2 of 16 scans failed" in err
    # one region FreeSurfer wrote as 0 mm³ costs a flag, not the scan
    assert f"{s_zero}_T1w: " not in err
    zero = pd.read_csv(
        out / s_zero / "anat" / f"{s_zero}_desc-harmonized_morph.tsv", sep="\t"
    ).iloc[0]
    assert zero["nh_status"] == "harmonized"
    assert zero["lh_cuneus_volume"] == 0
    assert "lh_cuneus_volume" in zero["nh_regions_flagged"].split(";")
    assert f"{s_age}_T1w: age is n/a" in err
    assert f"{aseg}, line " in err and "truncated" in err
    # an IQM MRIQC could not compute costs a flag, not the scan
    assert f"{iqm}: MRIQC could not compute cjv" in err
    stem = out / s_iqm / "anat" / f"{s_iqm}_desc-harmonized_morph"
    harm = pd.read_csv(stem.with_suffix(".tsv"), sep="\t")
    assert harm.loc[0, "nh_status"] == "harmonized"
    assert harm.loc[0, "nh_iqms_missing"] == "cjv"
    assert "cjv" not in harm.loc[0, "nh_features_used"].split(";")
    sidecar = json.loads(stem.with_suffix(".json").read_text())
    assert sidecar["ImageQualityMetrics"]["Unavailable"] == {"cjv": "null"}
    assert sidecar["ImageQualityMetrics"]["Values"]["cjv"] is None
    assert sidecar["Harmonization"]["IQMsMissing"] == ["cjv"]
    assert "could not compute" in sidecar["nh_iqms_missing"]["Description"]
    done = sorted(p.name for p in out.glob("sub-*/anat/*_desc-harmonized_morph.tsv"))
    assert len(done) == 14
    assert not (out / s_age).exists()
    assert run([str(bids), str(out), "group", "--skip-bids-validation"]) == 0
    failed = pd.read_csv(out / "group_failed.tsv", sep="\t")
    assert sorted(failed["participant_id"]) == sorted([s_age, s_aseg])
    assert failed["reason"].str.len().min() > 20
    # fixing the input and re-running processes only the failed scans, then clears them
    ptable.loc[ptable["participant_id"] == s_age, "age"] = "30"
    ptable.to_csv(ptsv, sep="\t", index=False)
    assert run(argv) == 1  # the broken file still fails
    assert "1 of 16 scans failed" in capsys.readouterr().err
    assert (out / s_age / "anat" / f"{s_age}_desc-harmonized_morph.tsv").is_file()
    assert sorted(F.read_failures(out)["participant_id"]) == [s_aseg]


@pytest.mark.slow  # the end-to-end main_run fixture takes ~35 s
@pytest.mark.bids_validator
def test_group_skips_scans_still_being_written(main_run, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(main_run["out"], out)
    for name in ("group_failed.tsv", "dataset_description.json"):
        assert (out / name).is_file()
    victim = sorted(out.glob("sub-*/anat"))[2]
    pid = victim.parent.name
    (victim / f"{pid}_desc-harmonized_morph.tsv").unlink()
    (victim / ".nhtmp-abc123.tsv").write_text("partial")
    assert run([str(main_run["bids"]), str(out), "group", "--skip-bids-validation"]) == 0
    assert f"{pid}_T1w skipped: being written" in capsys.readouterr().err
    raw = pd.read_csv(out / "group_desc-raw_morph.tsv", sep="\t")
    assert pid not in set(raw["participant_id"]) and len(raw) == len(main_run["rows"]) - 1
    failed = pd.read_csv(out / "group_failed.tsv", sep="\t")
    assert failed["participant_id"].tolist() == [pid]
    assert "harmonized_tsv" in failed["reason"].iloc[0]


@pytest.mark.slow  # the end-to-end main_run fixture takes ~35 s
@pytest.mark.bids_validator
def test_group_exit_codes(main_run, tmp_path):
    empty = tmp_path / "empty"
    assert run([str(main_run["bids"]), str(empty), "group", "--skip-bids-validation"]) == 66
    argv = [str(main_run["bids"]), str(main_run["out"]), "group", "--skip-bids-validation"]
    assert run([*argv, "--participant-label", "nobody"]) == 18


@pytest.mark.slow  # the end-to-end main_run fixture takes ~35 s
@pytest.mark.bids_validator
def test_train_then_use_the_trained_model(main_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(main_run["out"], out)
    bids = main_run["bids"]
    assert run([str(bids), str(out), "group", "--skip-bids-validation", "--train",
                "--site-column", "site"]) == 0  # fmt: skip
    models = sorted((out / "models").glob("*.nhmodel"))
    assert len(models) == 1
    trained = load_model(models[0])
    assert trained.training_summary_["n_scans"] == len(main_run["rows"])
    assert trained.training_summary_["n_sites"] == len(SITES)
    card = next((out / "models").glob("*_card.md"))
    assert models[0].name in card.read_text()
    new_out = tmp_path / "new"
    code = run([str(bids), str(new_out), "participant", "--skip-bids-validation",
                "--no-participant-reports", "--model", str(models[0])])  # fmt: skip
    assert code == 0
    desc = json.loads((new_out / "dataset_description.json").read_text())
    assert desc["NeuroharmonyModel"]["sha256"] == model_info(models[0])["sha256"]
    assert desc["NeuroharmonyModel"]["name"].startswith("neuroharmony-")
    assert model_info(models[0])["sha256"] in card.read_text()


@pytest.fixture(scope="module")
def sessions_run(abide_table, tmp_path_factory):
    """FreeSurfer 7 layout, MRIQC group TSV, two sessions per subject."""
    root = tmp_path_factory.mktemp("sessions")
    rows = pick_rows(abide_table, 2, offset=2)
    rows["ses"] = ["1", "2"] * (len(rows) // 2)
    rows["SUB_ID"] = [f"s{i // 2}" for i in range(len(rows))]
    bids = root / "bids"
    build_bids_dataset(bids, rows, session_column="ses", fs_version="7.3.2", mriqc_layout="group")
    out = root / "out"
    code = run([str(bids), str(out), "participant", "--skip-bids-validation", "--no-participant-reports",
                "--session-label", "2"])  # fmt: skip
    return {"bids": bids, "out": out, "rows": rows, "code": code}


@pytest.mark.bids_validator
def test_sessions_and_mriqc_group_tsv(sessions_run):
    assert sessions_run["code"] == 0
    out = sessions_run["out"]
    files = sorted(p.relative_to(out).as_posix() for p in out.glob("sub-*/**/*_desc-raw_morph.tsv"))
    assert files == [f"sub-s{i}/ses-2/anat/sub-s{i}_ses-2_desc-raw_morph.tsv" for i in range(4)]
    raw = pd.read_csv(out / files[0], sep="\t")
    assert raw.loc[0, "session_id"] == "ses-2"
    side = json.loads((out / files[0].replace(".tsv", ".json")).read_text())
    assert side["ImageQualityMetrics"]["Source"].endswith("group_T1w.tsv (sub-s0_ses-2_T1w)")
    assert side["FreeSurfer"]["Version"] == "7.3.2"
    assert validator_errors(out) == []


def test_forked_map_keeps_order_and_falls_back_without_a_process_pool(monkeypatch):
    """The forked map returns each span's results in order, from workers or, where no
    process pool can be made (no /dev/shm semaphores), from this process; a worker's
    error is raised here."""
    import concurrent.futures

    from neuroharmony_bids import forking as P

    items = list(range(23))
    expected = [[i * i for i in items[s : s + 5]] for s in range(0, 23, 5)]
    assert list(P.forked_map(lambda i: i * i, items, 2, 5)) == expected
    assert not P._FORKED
    with pytest.raises(ZeroDivisionError):
        list(P.forked_map(lambda i: 1 // (i - 7), items, 2, 5))

    def no_pool(*args, **kwargs):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", no_pool)
    assert list(P.forked_map(lambda i: i * i, items, 2, 5)) == expected
