"""Reliability scenarios of the BIDS layer and the drivers (issues 13.5-13.6, 16.1, 16.4-16.5).

Each scenario builds a small dataset from ABIDE rows, runs the BIDS App as a user would and
returns the problems it found (empty: handled as documented). ``tests/test_reliability_bids.py``
runs them; ``bench/reliability.py`` counts them in its tally.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.reliability import (
    _wait_for,
    broken_outputs,
    make_dataset,
    popen,
    run_inprocess,
    run_subprocess,
    temp_leftovers,
)
from neuroharmony_bids.testing.fixtures import abide_rows, build_bids_dataset, volume_columns

FAST = ["--skip-bids-validation", "--no-participant-reports", "--nprocs", "1"]


@dataclass
class Scenario:
    name: str
    run: Callable[[pd.DataFrame, Path], list[str]]  # (ABIDE table, tmp) -> problems
    slow: bool = False


def _usable(table: pd.DataFrame) -> pd.DataFrame:
    """ABIDE rows without a failed parcellation (those fail by design)."""
    vols = table[volume_columns(list(table.columns))].fillna(1)
    usually_positive = vols.columns[(vols > 0).mean() > 0.9]
    return table[(vols[usually_positive] > 0).all(axis=1)]


def _rename_everywhere(root: Path, old: str, new: str) -> None:
    """Rename every file and folder under ``root`` whose name contains ``old``."""
    for path in sorted(root.rglob(f"*{old}*"), key=lambda p: -len(p.parts)):
        path.rename(path.with_name(path.name.replace(old, new)))


def _outputs_of(out: Path, bids_name: str) -> list[Path]:
    return sorted(out.rglob(f"{bids_name.removesuffix('_T1w')}_desc-*_morph.*"))


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        digest.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            digest.update(p.read_bytes())
    return digest.hexdigest()


def _failure_records(out: Path) -> dict[str, dict]:
    return {
        p.stem: json.loads(p.read_text()) for p in sorted((out / "logs" / "failed").glob("*.json"))
    }


# --------------------------------------------------------------------------- 16.1


def several_t1w_dataset(table: pd.DataFrame, root: Path):
    """sub-A: run-1/run-2; sub-B: acq-mprage/acq-spgr; sub-C: ses-1 run-1/run-2 with one
    FreeSurfer folder for the session (sub-C_ses-1); sub-D: a single T1w."""
    rows = abide_rows(_usable(table), 7, seed=5).reset_index(drop=True)
    rows["SUB_ID"] = ["A", "A", "B", "B", "C", "C", "D"]
    rows["run"] = ["1", "2", "1", "2", "1", "2", None]
    rows["ses"] = [None, None, None, None, "1", "1", None]
    ds = build_bids_dataset(root, rows, run_column="run", session_column="ses")
    _rename_everywhere(root, "sub-B_run-1", "sub-B_acq-mprage")
    _rename_everywhere(root, "sub-B_run-2", "sub-B_acq-spgr")
    fs = root / "derivatives" / "freesurfer"
    (fs / "sub-C_ses-1_run-1").rename(fs / "sub-C_ses-1")
    shutil.rmtree(fs / "sub-C_ses-1_run-2")
    return ds


SEVERAL = [
    "sub-A_run-1_T1w", "sub-A_run-2_T1w", "sub-B_acq-mprage_T1w", "sub-B_acq-spgr_T1w",
    "sub-C_ses-1_run-1_T1w", "sub-C_ses-1_run-2_T1w", "sub-D_T1w",
]  # fmt: skip


def several_t1w(table: pd.DataFrame, tmp: Path) -> list[str]:
    """Every T1w is a scan at both levels; entity columns; a shared FreeSurfer subject named."""
    several_t1w_dataset(table, tmp / "ds")
    out = tmp / "out"
    problems = []
    res = run_inprocess([tmp / "ds", out, "participant", *FAST])
    if res.code != 0:
        problems.append(f"participant exited {res.code}: {res.stderr[-800:]}")
    for name in SEVERAL:
        if len(_outputs_of(out, name)) != 4:
            problems.append(f"{name}: {len(_outputs_of(out, name))} of 4 per-scan files")
    side = out / "sub-C" / "ses-1" / "anat" / "sub-C_ses-1_run-2_desc-raw_morph.json"
    if side.is_file():
        stands = json.loads(side.read_text()).get("FreeSurfer", {}).get("StandsForScans")
        if stands != ["sub-C_ses-1_run-1_T1w", "sub-C_ses-1_run-2_T1w"]:
            problems.append(f"shared FreeSurfer subject not named in the sidecar: {stands}")
    res = run_inprocess([tmp / "ds", out, "group", "--skip-bids-validation"])
    if res.code != 0:
        problems.append(f"group exited {res.code}: {res.stderr[-800:]}")
        return problems
    for desc in ("raw", "harmonized", "jointharmonized"):
        path = out / f"group_desc-{desc}_morph.tsv"
        if not path.is_file():
            problems.append(f"{path.name} missing")
            continue
        group = pd.read_csv(path, sep="\t", dtype=str)
        if sorted(group["bids_name"]) != SEVERAL:
            problems.append(f"{path.name}: rows {sorted(group['bids_name'])}")
        for col in ("participant_id", "session_id", "acq_id", "run_id"):
            if col not in group:
                problems.append(f"{path.name}: no {col} column")
        if "run_id" in group and "acq_id" in group:
            a2 = group[group["bids_name"] == "sub-A_run-2_T1w"].iloc[0]
            b1 = group[group["bids_name"] == "sub-B_acq-mprage_T1w"].iloc[0]
            if (a2["run_id"], b1["acq_id"]) != ("run-2", "acq-mprage"):
                problems.append(f"{path.name}: entity values {a2['run_id']}, {b1['acq_id']}")
    return problems


# --------------------------------------------------------------------------- 13.6


def datatype_parent(table: pd.DataFrame, tmp: Path) -> list[str]:
    """A dataset under /.../func/... or /.../anat/... is found (pybids #1270 worked around)."""
    problems = []
    for parent in ("func", "anat"):
        root = tmp / parent / "study"
        ds = make_dataset(root, table, n=2, seed=4)
        out = tmp / f"out-{parent}"
        res = run_inprocess([root, out, "participant", *FAST])
        if res.code != 0:
            problems.append(f"under /{parent}/: exit {res.code}: {res.stderr[-500:]}")
        for name in ds.bids_names:
            if len(_outputs_of(out, name)) != 4:
                problems.append(f"under /{parent}/: {name} has no outputs")
    return problems


# --------------------------------------------------------------------------- 16.4


def overlapping_outputs(table: pd.DataFrame, tmp: Path) -> list[str]:
    """An output folder that is, contains or sits inside an input folder: 64, nothing touched."""
    ds = make_dataset(tmp / "ds", table, n=2, seed=6)
    external_fs = tmp / "external" / "freesurfer"
    shutil.copytree(ds.freesurfer_dir, external_fs)
    fmriprep = ds.root / "derivatives" / "fmriprep"
    fmriprep.mkdir()
    (fmriprep / "dataset_description.json").write_text(
        json.dumps(
            {"Name": "fMRIPrep", "DatasetType": "derivative", "GeneratedBy": [{"Name": "fMRIPrep"}]}
        )  # fmt: skip
    )
    first = ds.participants[0]
    cases = {
        "is the FreeSurfer derivatives": ([ds.freesurfer_dir], []),
        "inside the FreeSurfer derivatives": ([ds.freesurfer_dir / first / "nh"], []),
        "is the MRIQC derivatives": ([ds.mriqc_dir], []),
        "is another pipeline's derivatives": ([fmriprep], []),
        "inside another pipeline's derivatives": ([fmriprep / "neuroharmony"], []),
        "is --freesurfer-dir": ([external_fs], ["--freesurfer-dir", external_fs]),
        "contains --freesurfer-dir": ([tmp / "external"], ["--freesurfer-dir", external_fs]),
        "contains the dataset": ([tmp], []),
        "inside the dataset": ([ds.root / "sub-x"], []),
    }
    before = _tree_digest(ds.root), _tree_digest(tmp / "external")
    problems = []
    for what, (outs, extra) in cases.items():
        res = run_inprocess([ds.root, outs[0], "participant", *FAST, "--overwrite", *extra])
        if res.code != 64:
            problems.append(f"output {what}: exit {res.code}, expected 64: {res.stderr[-400:]}")
        elif "None with model None" in res.stderr or "output_dir" not in res.stderr:
            problems.append(f"output {what}: unclear message: {res.stderr[-400:]}")
    if (_tree_digest(ds.root), _tree_digest(tmp / "external")) != before:
        problems.append("an input folder was modified")
    good = ds.root / "derivatives" / "neuroharmony"
    (good / "logs").mkdir(parents=True)  # what a run stopped at validation leaves
    (good / "logs" / "earlier.log").write_text("stopped at validation\n")
    res = run_inprocess([ds.root, good, "participant", *FAST])
    if res.code != 0:
        problems.append(f"the conventional derivatives/neuroharmony was refused: {res.stderr}")
    own = good / "sourcedata" / "freesurfer"  # tool outputs this app wrote itself
    shutil.copytree(ds.freesurfer_dir, own)
    res = run_inprocess([ds.root, good, "participant", *FAST, "--freesurfer-dir", own])
    if res.code != 0:
        problems.append(f"--freesurfer-dir under output_dir/sourcedata was refused: {res.stderr}")
    return problems


def nested_json(table: pd.DataFrame, tmp: Path) -> list[str]:
    """A 5,000-level JSON in one T1w sidecar or one MRIQC JSON fails that scan (65) only."""
    deep = "[" * 5000 + "]" * 5000
    problems = []
    for kind in ("sidecar", "mriqc"):
        ds = make_dataset(tmp / kind / "ds", table, n=3, seed=8)
        bad = ds.bids_names[1]
        sub = bad.split("_")[0]
        path = (
            ds.root / sub / "anat" / f"{bad}.json" if kind == "sidecar" else
            ds.mriqc_dir / f"{bad}.json"
        )  # fmt: skip
        path.write_text('{"a": ' + deep + "}")
        out = tmp / kind / "out"
        res = run_inprocess([ds.root, out, "participant", *FAST])
        if res.code != 1 or "unexpected error" in res.stderr or "Traceback" in res.stderr:
            problems.append(f"{kind}: exit {res.code}: {res.stderr[-500:]}")
        records = _failure_records(out)
        if list(records) != [bad] or records[bad]["exit_code"] != 65:
            problems.append(f"{kind}: failure records {records}")
        elif "nested too deeply" not in records[bad]["reason"]:
            problems.append(f"{kind}: reason {records[bad]['reason']!r}")
        for name in ds.bids_names:
            if name != bad and len(_outputs_of(out, name)) != 4:
                problems.append(f"{kind}: {name} did not complete")
    return problems


def odd_labels(table: pd.DataFrame, tmp: Path) -> list[str]:
    """Non-alphanumeric labels (possible with --skip-bids-validation) are refused by name at
    participant level and listed in group_failed.tsv; never silently dropped."""
    ds = make_dataset(tmp / "ds", table, n=3, seed=9)
    odd = {ds.participants[0]: ds.participants[0] + ".x", ds.participants[1]: "sub-1+2"}
    for old, new in odd.items():
        _rename_everywhere(ds.root, old, new)
    out = tmp / "out"
    problems = []
    res = run_inprocess([ds.root, out, "participant", *FAST])
    if res.code != 1:
        problems.append(f"participant exit {res.code}, expected 1: {res.stderr[-500:]}")
    records = _failure_records(out)
    for new in odd.values():
        rec = records.get(f"{new}_T1w")
        if rec is None or rec["exit_code"] != 65 or "not a BIDS file name" not in rec["reason"]:
            problems.append(f"{new}: failure record {rec}")
        if new not in res.stderr:
            problems.append(f"{new} not named on stderr")
    if len(_outputs_of(out, ds.bids_names[2])) != 4:
        problems.append("the well-named scan did not complete")
    res = run_inprocess([ds.root, out, "group", "--skip-bids-validation"])
    failed = out / "group_failed.tsv"
    listed = pd.read_csv(failed, sep="\t")["bids_name"].tolist() if failed.is_file() else []
    for new in odd.values():
        if f"{new}_T1w" not in listed:
            problems.append(f"{new} missing from group_failed.tsv ({listed})")
    return problems


# --------------------------------------------------------------------------- 16.5


def missing_reports(table: pd.DataFrame, tmp: Path) -> list[str]:
    """Scans whose report is missing (a run stopped while writing reports) are completed."""
    ds = make_dataset(tmp / "ds", table, n=3, seed=10)
    out = tmp / "out"
    argv = [ds.root, out, "participant", "--skip-bids-validation", "--nprocs", "1"]
    problems = []
    if (res := run_inprocess(argv)).code != 0:
        return [f"first run exit {res.code}: {res.stderr[-500:]}"]
    reports = sorted(out.rglob("*_report.html"))
    if len(reports) != 3:
        return [f"{len(reports)} reports after the first run"]
    for report in reports[:2]:
        report.unlink()
    res = run_inprocess([*argv, "--verbose"])
    if res.code != 0:
        problems.append(f"re-run exit {res.code}: {res.stderr[-500:]}")
    if len(sorted(out.rglob("*_report.html"))) != 3:
        problems.append("the re-run did not write the missing reports")
    if "no report" not in res.stderr or "completing" not in res.stderr:
        problems.append(f"the re-run does not say it completes reports: {res.stderr[-500:]}")
    return problems


def sigterm_then_rerun(table: pd.DataFrame, tmp: Path) -> list[str]:
    """SIGTERM while reports are being written, then a re-run: every scan complete."""
    ds = make_dataset(tmp / "ds", table, n=6, seed=11)
    out = tmp / "out"
    argv = [ds.root, out, "participant", "--skip-bids-validation", "--nprocs", "1"]
    problems = []
    for point in ("first report", "first data file"):
        shutil.rmtree(out, ignore_errors=True)
        proc = popen(argv)
        pattern = "*_report.html" if point == "first report" else "*_morph.*"
        reached = _wait_for(lambda pattern=pattern: any(out.rglob(pattern)), proc)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait()
        proc.stderr.close()
        if not reached:
            problems.append(f"{point}: the SIGTERM point was never reached")
        time.sleep(0.05)
        res = run_subprocess(argv)
        if res.code != 0:
            problems.append(f"{point}: re-run exit {res.code}: {res.stderr[-500:]}")
        for name in ds.bids_names:
            files = _outputs_of(out, name)
            report = out / name.split("_")[0] / "anat" / f"{name.removesuffix('_T1w')}_report.html"
            if len(files) != 4 or not report.is_file():
                problems.append(f"{point}: {name} incomplete after the re-run ({len(files)} files, "
                                f"report {report.is_file()})")  # fmt: skip
        problems += [f"{point}: temporary file left {p}" for p in temp_leftovers(out)]
        problems += [f"{point}: half-written {b}" for b in broken_outputs(out)]
    return problems


# --------------------------------------------------------------------------- 13.5


def large_dataset_validates(table: pd.DataFrame, tmp: Path, n: int = 5000) -> list[str]:
    """5,000 participants pass bids-validator-deno (all rows read), once per dataset state."""
    from neuroharmony_bids.bids.validate import validate_once
    from neuroharmony_bids.testing.fixtures import tiny_t1w_bytes

    if shutil.which("bids-validator-deno") is None:
        return ["bids-validator-deno is not on PATH"]
    root = tmp / "big"
    ds = make_dataset(root, table, n=2, seed=12)  # description, README, participants.json
    nifti = tiny_t1w_bytes()
    ids = [f"sub-{i:05d}" for i in range(n)]
    for sub in ids:
        anat = root / sub / "anat"
        anat.mkdir(parents=True)
        (anat / f"{sub}_T1w.nii.gz").write_bytes(nifti)
    for sub in ds.participants:
        shutil.rmtree(root / sub)
    pd.DataFrame({"participant_id": ids, "age": 30.0, "sex": "F", "site": "X"}).to_csv(
        root / "participants.tsv", sep="\t", index=False
    )
    stamp = tmp / "logs" / "bids_validation.json"
    problems = []
    try:
        warnings, seconds = validate_once(root, stamp)
    except Exception as exc:  # the report names what failed
        return [f"{n} participants: {type(exc).__name__}: {str(exc)[:600]}"]
    if warnings is None:
        problems.append("the first validation was skipped")
    again, _ = validate_once(root, stamp)
    if again is not None:
        problems.append("an unchanged dataset was validated twice")
    (root / "README").write_text("changed\n")
    changed, _ = validate_once(root, stamp)
    if changed is None:
        problems.append("a changed dataset was not validated again")
    return problems


SCENARIOS: list[Scenario] = [
    Scenario(
        "several T1w per subject (runs, acquisitions, shared FreeSurfer)", several_t1w, slow=True
    ),
    Scenario("dataset under a folder named func/ or anat/", datatype_parent),
    Scenario("output folder overlapping an input folder", overlapping_outputs),
    Scenario("deeply nested JSON in one sidecar / MRIQC file", nested_json),
    Scenario("non-alphanumeric labels listed, not lost", odd_labels, slow=True),
    Scenario("missing reports completed on re-run", missing_reports),
    Scenario("SIGTERM then re-run leaves every scan complete", sigterm_then_rerun, slow=True),
    Scenario("5,000 participants validate once", large_dataset_validates, slow=True),
]
