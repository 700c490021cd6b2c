"""Reliability scenarios (bad inputs, SIGKILL, parallel jobs, disk full, fuzz) and their tally.

The tests in ``tests/test_reliability_*.py`` and ``tests/test_fuzz_parsers.py`` import the
scenario helpers from here; ``python bench/reliability.py`` runs them with more iterations and
prints how many were tried and handled, as percentages.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from neuroharmony_bids.atomic import TMP_PREFIX  # noqa: E402
from neuroharmony_bids.testing.fixtures import (  # noqa: E402
    abide_rows,
    build_bids_dataset,
    volume_columns,
)
from neuroharmony_bids.testing.hostile import MODEL_VARIANTS, model_variant  # noqa: E402

RUN_PY = REPO / "run.py"
FAST = ["--skip-bids-validation", "--no-participant-reports"]


def shared_table() -> pd.DataFrame | None:
    env = os.environ.get("NEUROHARMONY_SHARED_DATA")
    for base in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        csv = base / "abide1" / "abide1_fs6_mriqc_pheno.csv"
        if csv.is_file():
            return pd.read_csv(csv)
    return None


def make_dataset(root: Path, table: pd.DataFrame, n: int = 3, seed: int = 0):
    """A BIDS dataset with FreeSurfer/MRIQC derivatives from ``n`` ABIDE rows.

    Rows with a zero/negative volume (partly failed segmentations in ABIDE, harmonized with
    that region flagged) are left out so that every flag comes from a scenario on purpose.
    """
    return build_bids_dataset(root, abide_rows(usable_rows(table), n, seed=seed))


def usable_rows(table: pd.DataFrame) -> pd.DataFrame:
    """ABIDE rows without a failed segmentation (a zero volume where most scans have one)."""
    vols = table[volume_columns(list(table.columns))].fillna(1)
    usually_positive = vols.columns[(vols > 0).mean() > 0.9]  # not e.g. 5th-Ventricle
    return table[(vols[usually_positive] > 0).all(axis=1)]


# --------------------------------------------------------------------------- running the app


@dataclass
class Outcome:
    code: int
    stderr: str


def run_inprocess(argv: list[str]) -> Outcome:
    """``neuroharmony_bids.cli.run.main`` in this process; exit code from SystemExit."""
    from neuroharmony_bids.cli.run import main

    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main([str(a) for a in argv])
        except SystemExit as exc:
            code = int(exc.code or 0)
    return Outcome(code, err.getvalue())


def run_subprocess(
    argv: list[str], prefix: tuple[str, ...] = (), preexec_fn: Callable | None = None
) -> Outcome:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [*prefix, sys.executable, str(RUN_PY), *map(str, argv)],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=preexec_fn,
        timeout=300,
    )
    return Outcome(proc.returncode, proc.stderr)


def popen(argv: list[str], preexec_fn: Callable | None = None, code: str | None = None):
    """Start ``run.py`` (or ``python -c code`` with argv in sys.argv) without waiting."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", code, *map(str, argv)] if code else [
        sys.executable, str(RUN_PY), *map(str, argv)
    ]  # fmt: skip
    return subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=preexec_fn,
        text=True,
    )


# --------------------------------------------------------------------------- output checks


def temp_leftovers(out: Path) -> list[Path]:
    """Temporary files of atomic writes left anywhere under ``out``."""
    if not out.exists():
        return []
    return sorted(p for p in out.rglob("*") if p.name.startswith(TMP_PREFIX))


def broken_outputs(out: Path) -> list[str]:
    """TSV/JSON files under ``out`` (logs excluded) that are not complete and parseable."""
    bad = []
    if not out.exists():
        return bad
    for p in sorted(out.rglob("*")):
        if not p.is_file() or p.name.startswith(TMP_PREFIX):
            continue
        try:
            if p.suffix == ".json":
                json.loads(p.read_text(encoding="utf-8"))
            elif p.suffix == ".tsv":
                text = p.read_text(encoding="utf-8")
                lines = text.split("\n")
                if not text.endswith("\n") or len(lines) < 2:
                    raise ValueError("not even a complete header line")
                width = len(lines[0].split("\t"))
                for i, line in enumerate(lines[1:-1], start=2):
                    if len(line.split("\t")) != width:
                        raise ValueError(f"line {i} has a different number of columns")
        except (ValueError, UnicodeDecodeError) as exc:
            bad.append(f"{p}: {exc}")
    return bad


def scan_files(out: Path, name: str) -> list[Path]:
    anat = out / name / "anat"
    return sorted(anat.glob(f"{name}_desc-*_morph.*")) if anat.is_dir() else []


def complete_scans(out: Path, participants: list[str]) -> list[str]:
    """Participants whose four per-scan files exist and parse."""
    done = []
    for sub in participants:
        files = scan_files(out, sub)
        if len(files) == 4 and not any(broken_outputs(f.parent) for f in files[:1]):
            done.append(sub)
    return done


# --------------------------------------------------------------------------- bad inputs


def _replace_line(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def _participants(ds) -> pd.DataFrame:
    return pd.read_csv(ds.root / "participants.tsv", sep="\t", dtype=str, keep_default_na=False)


def _write_participants(ds, table: pd.DataFrame) -> None:
    table.to_csv(ds.root / "participants.tsv", sep="\t", index=False)


def _set_cell(ds, row: int, col: str, value: str) -> None:
    t = _participants(ds)
    t.loc[row, col] = value
    _write_participants(ds, t)


def _t1w(ds, i: int = 0) -> Path:
    sub = ds.participants[i]
    return ds.root / sub / "anat" / f"{sub}_T1w.nii.gz"


def _nifti_bytes(shape, broken_header: bool = False) -> bytes:
    import nibabel as nb
    import numpy as np

    img = nb.Nifti1Image(np.ones(shape, dtype=np.uint8), np.eye(4))
    raw = bytearray(img.to_bytes())
    if broken_header:
        raw[0:4] = (12345).to_bytes(4, "little")  # sizeof_hdr must be 348
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        gz.write(bytes(raw))
    return buf.getvalue()


def _stats(ds, i: int = 0) -> Path:
    return ds.freesurfer_dir / ds.participants[i] / "stats"


def _iqm_json(ds, i: int = 0) -> Path:
    return ds.mriqc_dir / f"{ds.participants[i]}_T1w.json"


class _Pickled:
    """Unpickling this would create the marker file (it must never be unpickled)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@dataclass
class BadInput:
    """One bad-input scenario: mutate a fresh dataset, expect an exit code and message parts."""

    name: str
    mutate: Callable  # (ds, tmp: Path) -> list[str] extra argv, or (argv override, ...)
    code: int
    says: tuple[str, ...]
    validate: bool = False  # run the BIDS validator (slower) instead of --skip-bids-validation
    failed_code: int | None = None  # per-scan failure record's exit code (logs/failed)
    bids_dir: Callable | None = None  # (ds, tmp) -> the folder given as bids_dir
    out_dir: Callable | None = None  # (ds, tmp) -> the output folder


def _model_doc_bytes() -> bytes:
    from neuroharmony_bids.harmonize.io import DEFAULT_MODEL

    return Path(DEFAULT_MODEL).read_bytes()


def _model_file(tmp: Path, data: bytes) -> list[str]:
    path = tmp / "model.json"
    path.write_bytes(data)
    return ["--model", str(path)]


def _schema_model(tmp: Path) -> list[str]:
    doc = json.loads(_model_doc_bytes())
    doc["schema_version"] = 999
    return _model_file(tmp, json.dumps(doc).encode())


def _tampered_model(tmp: Path) -> list[str]:
    doc = json.loads(_model_doc_bytes())
    doc.setdefault("metadata", {})["name"] = "tampered"
    return _model_file(tmp, json.dumps(doc).encode())


def _pickle_model(tmp: Path, protocol: int) -> list[str]:
    import pickle

    marker = tmp / "PWNED"
    return _model_file(tmp, pickle.dumps(_Pickled(str(marker)), protocol=protocol))


def _fifo_model(tmp: Path) -> list[str]:
    os.mkfifo(tmp / "model.json")  # reading it would block until a writer appears
    return ["--model", str(tmp / "model.json")]


def _hostile_model(tmp: Path, name: str) -> list[str]:
    return _model_file(tmp, model_variant(name))


def _unwritable_out(ds, tmp: Path) -> Path:
    if os.geteuid() == 0:  # root ignores permission bits: /proc refuses new folders
        return Path("/proc/neuroharmony-out")
    ro = tmp / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    return ro / "out"


def _not_bids(ds, tmp: Path) -> Path:
    folder = tmp / "notbids"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a dataset\n")
    return folder


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


BAD_INPUTS: list[BadInput] = [
    BadInput("not a BIDS folder (validator)", lambda ds, t: [], 16,
             ("notbids",), validate=True, bids_dir=_not_bids),
    BadInput("not a BIDS folder", lambda ds, t: [], 16, ("dataset_description.json",),
             bids_dir=_not_bids),
    BadInput("dataset_description.json missing",
             lambda ds, t: (ds.root / "dataset_description.json").unlink() or [], 16,
             ("dataset_description.json",)),
    BadInput("dataset_description.json malformed (validator)",
             lambda ds, t: (ds.root / "dataset_description.json").write_text('{"Name": ') or [],
             16, ("dataset_description.json",), validate=True),
    BadInput("T1w not gzip (validator)",
             lambda ds, t: _t1w(ds).write_bytes(b"hello, not a NIfTI\n") or [], 16,
             ("NIFTI_HEADER_UNREADABLE", "_T1w.nii.gz"), validate=True),
    BadInput("T1w broken header (validator)",
             lambda ds, t: _t1w(ds).write_bytes(_nifti_bytes((8, 8, 8), True)) or [], 16,
             ("_T1w.nii.gz",), validate=True),
    # The app never opens the images when FreeSurfer/MRIQC outputs exist (volumes come from
    # the stats files), so without the validator these succeed and the outputs are complete.
    BadInput("T1w truncated (image not read)", lambda ds, t: _truncate(_t1w(ds)) or [], 0, ()),
    BadInput("T1w 4-D (image not read)",
             lambda ds, t: _t1w(ds).write_bytes(_nifti_bytes((8, 8, 8, 3))) or [], 0, ()),
    BadInput("participants.tsv missing",
             lambda ds, t: (ds.root / "participants.tsv").unlink() or [], 66,
             ("participants.tsv", "age", "sex")),
    BadInput("age column missing",
             lambda ds, t: _write_participants(ds, _participants(ds).drop(columns=["age"]))
             or [], 66, ("'age'", "participants.tsv", "--age-column")),
    BadInput("age n/a", lambda ds, t: _set_cell(ds, 0, "age", "n/a") or [], 1,
             ("age is n/a",), failed_code=65),
    BadInput("age not numeric", lambda ds, t: _set_cell(ds, 0, "age", "twelve") or [], 1,
             ("'twelve'", "not a number"), failed_code=65),
    BadInput("sex unknown code", lambda ds, t: _set_cell(ds, 0, "sex", "X") or [], 1,
             ("'X'", "M/F"), failed_code=65),
    BadInput("sex numeric without mapping", lambda ds, t: _set_cell(ds, 0, "sex", "3") or [], 1,
             ("--sex-mapping",), failed_code=65),
    BadInput("participant label matches nothing",
             lambda ds, t: ["--participant-label", "99999"], 18, ("99999", "participant")),
    BadInput("participant label ../", lambda ds, t: ["--participant-label", "../etc"], 64,
             ("--participant-label", "'../etc'")),
    BadInput("participant label /", lambda ds, t: ["--participant-label", "/tmp"], 64,
             ("--participant-label", "'/tmp'")),
    BadInput("participant label shell", lambda ds, t: ["--participant-label", "01;rm -rf"], 64,
             ("--participant-label", "shell characters")),
    BadInput("aseg.stats truncated", lambda ds, t: _truncate(_stats(ds) / "aseg.stats") or [], 1,
             ("aseg.stats", "line", "truncated"), failed_code=65),
    BadInput("lh.aparc.stats truncated",
             lambda ds, t: _truncate(_stats(ds) / "lh.aparc.stats", 0.8) or [], 1,
             ("lh.aparc.stats",), failed_code=65),
    BadInput("aparc missing (failed recon)",
             lambda ds, t: (_stats(ds) / "rh.aparc.stats").unlink() or [], 1,
             ("rh.aparc.stats", "recon-all"), failed_code=66),
    BadInput("unexpected FreeSurfer table format",
             lambda ds, t: _replace_line(_stats(ds) / "aseg.stats", "Volume_mm3", "Volume_cm3")
             or [], 1, ("aseg.stats", "Volume_mm3"), failed_code=65),
    # FreeSurfer 6/7 headers are known; any other version is read like them and merely
    # recorded, so a user should at least be warned, naming the file and the version.
    BadInput("unexpected FreeSurfer version header",
             lambda ds, t: _replace_line(
                 _stats(ds) / "aseg.stats",
                 "$Id: mri_segstats.c,v 1.121 2016/05/31 17:27:11 greve Exp $", "9.9.9-beta")
             or [], 0, ("aseg.stats", "9.9.9-beta")),
    # an IQM absent or not computed costs a flag (nh_iqms_missing), not the scan (issue 13)
    BadInput("MRIQC IQM missing",
             lambda ds, t: _replace_line(_iqm_json(ds), '"cjv"', '"cjv_renamed"') or [], 0,
             ("_T1w.json", "no IQM 'cjv'", "nh_iqms_missing")),
    BadInput("MRIQC IQM NaN",
             lambda ds, t: _iqm_json(ds).write_text(
                 json.dumps({**json.loads(_iqm_json(ds).read_text()), "cjv": None})) or [], 0,
             ("_T1w.json", "could not compute cjv", "nh_iqms_missing")),
    BadInput("MRIQC JSON truncated", lambda ds, t: _truncate(_iqm_json(ds)) or [], 1,
             ("_T1w.json", "line", "not valid JSON"), failed_code=65),
    BadInput("output folder not writable", lambda ds, t: [], 64, ("not writable",),
             out_dir=_unwritable_out),
    BadInput("output folder inside the input dataset", lambda ds, t: [], 64,
             ("inside the input dataset",), out_dir=lambda ds, t: ds.root / "sub-out"),
    BadInput("output folder is the dataset root", lambda ds, t: [], 64, ("is the input dataset",),
             out_dir=lambda ds, t: ds.root),
    BadInput("model file corrupt", lambda ds, t: _model_file(t, os.urandom(200)), 65,
             ("model.json",)),
    BadInput("model file truncated",
             lambda ds, t: _model_file(t, _model_doc_bytes()[:500]), 65, ("model.json",
                                                                           "truncated")),
    BadInput("model file incompatible schema", lambda ds, t: _schema_model(t), 65,
             ("model.json", "schema", "Retrain")),
    BadInput("model file tampered", lambda ds, t: _tampered_model(t), 65,
             ("model.json", "hash")),
    BadInput("model file crafted pickle (protocol 4)", lambda ds, t: _pickle_model(t, 4), 65,
             ("model.json", "pickle")),
    BadInput("model file crafted pickle (protocol 0)", lambda ds, t: _pickle_model(t, 0), 65,
             ("model.json",)),
    BadInput("model file is a FIFO", lambda ds, t: _fifo_model(t), 65, ("model.json", "FIFO")),
    BadInput("model file is /dev/zero", lambda ds, t: ["--model", "/dev/zero"], 65,
             ("/dev/zero", "not a regular file")),
    *[BadInput(f"model file: {name}", lambda ds, t, name=name: _hostile_model(t, name), 65,
               ("model.json", says)) for name, (_, says) in MODEL_VARIANTS.items()],
]  # fmt: skip


def run_bad_input(case: BadInput, table: pd.DataFrame, tmp: Path) -> list[str]:
    """Run one bad-input case; return the problems found (empty: handled as specified)."""
    tmp.mkdir(parents=True, exist_ok=True)
    ds = make_dataset(tmp / "ds", table, n=2, seed=3)
    extra = case.mutate(ds, tmp)
    extra = extra if isinstance(extra, list) else []
    bids_dir = case.bids_dir(ds, tmp) if case.bids_dir else ds.root
    out = case.out_dir(ds, tmp) if case.out_dir else tmp / "out"
    flags = ["--no-participant-reports"] + ([] if case.validate else ["--skip-bids-validation"])
    res = run_inprocess([bids_dir, out, "participant", *flags, *extra])
    problems = []
    if res.code != case.code:
        problems.append(f"exit code {res.code}, expected {case.code}; stderr: {res.stderr[-600:]}")
    for part in case.says:
        if part not in res.stderr:
            problems.append(f"message does not say {part!r}: {res.stderr[-600:]}")
    if case.code not in (0, 1) and "unexpected error" in res.stderr:
        problems.append("reported as an unexpected error (a bug) instead of a clear message")
    if os.path.exists(out) and out.is_dir():
        problems += [f"temporary file left: {p}" for p in temp_leftovers(out)]
        problems += [f"half-written output: {b}" for b in broken_outputs(out)]
        if case.failed_code is not None:
            recs = [json.loads(p.read_text()) for p in (out / "logs" / "failed").glob("*.json")]
            if [r["exit_code"] for r in recs] != [case.failed_code]:
                problems.append(f"failure records {recs}, expected one with {case.failed_code}")
        if case.code == 1:  # the other scan still completes
            if len(complete_scans(out, ds.participants)) != len(ds.participants) - 1:
                problems.append("the scans without a problem were not all completed")
        if case.code == 0 and len(complete_scans(out, ds.participants)) != len(ds.participants):
            problems.append("not every scan completed")
    marker = tmp / "PWNED"
    if marker.exists():
        problems.append("the crafted pickle was executed (marker file created)")
    return problems


# --------------------------------------------------------------------------- table CLI


def abide_scan_table(table: pd.DataFrame, n: int = 40, seed: int = 0) -> pd.DataFrame:
    """``n`` ABIDE rows as a user hands them to ``neuroharmony harmonize`` (ids, age, sex, IQMs
    with their ``iqm_`` prefix, FreeSurfer 6 volumes), failed segmentations left out."""
    rows = usable_rows(table).sample(n=n, random_state=seed).reset_index(drop=True)
    rows.insert(0, "participant_id", "sub-" + rows["SUB_ID"].astype(str))
    return rows.rename(columns={"AGE_AT_SCAN": "age"})


@dataclass
class TableCase:
    """One ``neuroharmony`` (table CLI) scenario: build files in ``tmp``, return the argv."""

    name: str
    build: Callable  # (table, tmp: Path) -> argv for neuroharmony_bids.cli.table.main
    code: int
    says: tuple[str, ...]
    check: Callable | None = None  # (tmp) -> list of problems, for cases that succeed


def _csv(table: pd.DataFrame, tmp: Path, name: str = "scans.csv") -> Path:
    path = tmp / name
    table.to_csv(path, index=False, sep="\t" if name.endswith(".tsv") else ",")
    return path


def _harm(inp: Path, tmp: Path, *extra: str) -> list[str]:
    return ["harmonize", str(inp), str(tmp / "out.csv"), *extra]


def _dup_columns(t: pd.DataFrame, tmp: Path) -> list[str]:
    path = _csv(t, tmp)
    header, rest = path.read_text().split("\n", 1)
    path.write_text(header.replace("Left-Hippocampus", "age", 1) + "\n" + rest)
    return _harm(path, tmp)


def _wide_header(t: pd.DataFrame, tmp: Path) -> list[str]:
    path = tmp / "wide.csv"
    path.write_text(",".join(["a"] * 1_000_000) + "\n")
    return _harm(path, tmp)


def _unwritable_table_out(t: pd.DataFrame, tmp: Path) -> list[str]:
    out = "/proc/neuroharmony-out/out.csv" if os.geteuid() == 0 else "/nonexistent-nh/out.csv"
    return ["harmonize", str(_csv(t, tmp)), out]


def _same_file(t: pd.DataFrame, tmp: Path) -> list[str]:
    path = _csv(t, tmp)
    return ["harmonize", str(path), str(path)]


_FORMULAS = ['=HYPERLINK("http://x","y")', "+cmd|' /C calc'!A0", "@SUM(1+1)", "-2+3"]


def _formulas(t: pd.DataFrame, tmp: Path) -> list[str]:
    t = t.copy()
    t.loc[: len(_FORMULAS) - 1, "participant_id"] = _FORMULAS
    t["SITE_ID"] = t["SITE_ID"].astype(object)
    t.loc[5, "SITE_ID"] = "=1+2"
    return _harm(_csv(t, tmp), tmp)


def _formulas_check(tmp: Path) -> list[str]:
    got = pd.read_csv(tmp / "out.csv", dtype={"participant_id": str, "SITE_ID": str})
    problems = []
    if list(got["participant_id"][: len(_FORMULAS)]) != ["'" + f for f in _FORMULAS]:
        problems.append(f"formula cells not neutralised: {list(got['participant_id'][:4])}")
    if got["SITE_ID"][5] != "'=1+2":
        problems.append(f"site formula not neutralised: {got['SITE_ID'][5]!r}")
    src = pd.read_csv(tmp / "scans.csv")
    if not (got["age"] == src["AGE_AT_SCAN" if "AGE_AT_SCAN" in src else "age"]).all():
        problems.append("numbers changed")
    return problems


def _late_text_cell(t: pd.DataFrame, tmp: Path) -> list[str]:
    import neuroharmony_bids.tabular as tabular

    tabular.BLOCK_BYTES = 16 * 1024  # several blocks: the bad cell is past the first one
    t = t.astype({"age": object})
    t.loc[30, "age"] = "thirty"
    return _harm(_csv(t, tmp), tmp)


def _table_model(name: str):
    def build(t: pd.DataFrame, tmp: Path) -> list[str]:
        path = tmp / "model.json"
        if name == "FIFO":
            os.mkfifo(path)
        else:
            path.write_bytes(model_variant(name))
        return _harm(_csv(t, tmp), tmp, "--model", str(path))

    return build


def _info_minimal(t: pd.DataFrame, tmp: Path) -> list[str]:
    (tmp / "model.json").write_bytes(model_variant("minimal document"))
    return ["info", str(tmp / "model.json")]


def _compare_noise(t: pd.DataFrame, tmp: Path) -> list[str]:
    from neuroharmony_bids.harmonize.io import DEFAULT_MODEL
    from neuroharmony_bids.testing.hostile import reseal

    doc = json.loads(Path(DEFAULT_MODEL).read_bytes())
    doc["state"]["combat_"]["alpha"]["data"][0] *= 1 + 3e-15  # BLAS-level noise
    (tmp / "rebuilt.json").write_bytes(reseal(doc))
    return ["info", "--compare", str(DEFAULT_MODEL), str(tmp / "rebuilt.json")]


TABLE_INPUTS: list[TableCase] = [
    TableCase("repeated column names", _dup_columns, 65, ("repeated column name", "'age'")),
    TableCase("million-column header", _wide_header, 65, ("line 1", "1,000,000 columns")),
    TableCase("missing input", lambda t, tmp: _harm(tmp / "nope.csv", tmp), 66,
              ("nope.csv", "does not exist")),
    TableCase("unwritable output", _unwritable_table_out, 64, ("cannot write the output",)),
    TableCase("input given as output", _same_file, 64, ("input table itself",)),
    TableCase("formula cells (CSV injection)", _formulas, 0, (), check=_formulas_check),
    TableCase("text cell in a later block", _late_text_cell, 65, ("column 'age', row 31",)),
    TableCase("model FIFO", _table_model("FIFO"), 65, ("FIFO",)),
    TableCase("model with null in ComBat", _table_model("null in a ComBat array"), 65,
              ("gamma",)),
    TableCase("model array too large", _table_model("array larger than the regions imply"), 65,
              ("within_cov_",)),
    TableCase("model 1e999", _table_model("out-of-range float 1e999"), 65, ("1e999",)),
    TableCase("info on a minimal document", _info_minimal, 65, ("model.json",)),
    TableCase("info --compare of a rebuild", _compare_noise, 0, ()),
]  # fmt: skip


def run_table_case(case: TableCase, table: pd.DataFrame, tmp: Path) -> list[str]:
    """Run one table-CLI case in this process; return the problems (empty: handled)."""
    import neuroharmony_bids.tabular as tabular
    from neuroharmony_bids.cli.table import main

    tmp.mkdir(parents=True, exist_ok=True)
    block = tabular.BLOCK_BYTES
    err = io.StringIO()
    code = 0
    try:
        argv = case.build(abide_scan_table(table), tmp)
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                main(argv)
            except SystemExit as exc:
                code = int(exc.code or 0)
    finally:
        tabular.BLOCK_BYTES = block
    stderr = err.getvalue()
    problems = []
    if code != case.code:
        problems.append(f"exit code {code}, expected {case.code}; stderr: {stderr[-600:]}")
    problems += [
        f"message does not say {p!r}: {stderr[-400:]}" for p in case.says if p not in stderr
    ]
    if "Traceback" in stderr or len(stderr.strip().splitlines()) > 1:
        problems.append(f"not one clear line: {stderr[-600:]}")
    if case.code != 0 and (tmp / "out.csv").exists():
        problems.append("an output was written although the command failed")
    problems += [f"temporary file left: {p}" for p in temp_leftovers(tmp)]
    if case.check is not None and code == 0:
        problems += case.check(tmp)
    return problems


MARKDOWN_OUTPUTS = ("CITATION.md", "models/*_card.md")


def markdown_escaped() -> list[str]:
    """Hostile version strings (CITATION.md) and site names and paths (the model card of
    ``--train``) render as literal text: no link, HTML, heading or broken table."""
    from types import SimpleNamespace

    import pandas as pd
    from markdown_it import MarkdownIt

    from neuroharmony_bids.reports.citation import citation_markdown
    from neuroharmony_bids.reports.model_card import model_card_text

    hostile = "7 | x |\n# H [a](javascript:alert(1)) <script>alert(1)</script>"
    texts = {
        "CITATION.md": citation_markdown({
            "freesurfer": hostile, "mriqc": "<img src=x onerror=alert(1)>", "model": "m` <b>x</b>",
        }),
        "models/*_card.md": model_card_text(
            Path("m` <b>x</b>.json"), "ab|`cd",
            SimpleNamespace(profile_weight=1.0, regions_=["Left-Hippocampus"], iqms_=["cjv"]),
            pd.DataFrame({"site": [hostile, "<img src=x onerror=alert(1)>"], "age": [20.0, 30.0],
                          "sex": ["M", "F"]}),
            hostile, "Manufacturer",
        ),
    }  # fmt: skip
    render = MarkdownIt("commonmark").enable("table").render
    return [f"{name} renders {bad!r}" for name, md in texts.items() for bad in
            ("<script", "<img", "<b>", 'href="javascript', "<h1>H") if bad in render(md)]  # fmt: skip


# --------------------------------------------------------------------------- kills

# A participant run that stops forever inside an atomic write (after the temporary file is
# written, before the rename), touching argv[1] first: a deterministic SIGKILL point.
PAUSE_IN_WRITE = """
import os, sys, time
import neuroharmony_bids.atomic as atomic
flag, nth = sys.argv[1], int(sys.argv[2])
_replace, count = os.replace, [0]
def replace(src, dst):
    # the nth per-scan output file (other renames, e.g. the pybids index, do not count)
    if os.path.basename(str(dst)).endswith(("_morph.tsv", "_morph.json")):
        count[0] += 1
        if count[0] == nth:
            open(flag, "w").close()
            time.sleep(3600)
    return _replace(src, dst)
atomic.os.replace = replace
from neuroharmony_bids.cli.run import main
main(sys.argv[3:])
"""


def _wait_for(pred: Callable[[], bool], proc, limit: float = 120.0) -> bool:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if pred():
            return True
        if proc.poll() is not None:
            return pred()
        time.sleep(0.02)
    return False


def kill_and_rerun(ds, out: Path, mode: str, rng: random.Random) -> tuple[list[str], list[Path]]:
    """SIGKILL a participant run at a point chosen by ``mode``; re-run.

    Returns (problems, temporary files left in the output after the re-run).

    Modes: ``delay`` (random delay), ``first-output`` (as soon as a per-scan file appears),
    ``mid-write`` (inside an atomic write, temporary file written but not renamed).
    """
    argv = [ds.root, out, "participant", *FAST]
    flag = out.parent / f"{out.name}.paused"
    if mode == "mid-write":
        nth = rng.randint(1, 4 * len(ds.participants))
        proc = popen([flag, nth, *argv], code=PAUSE_IN_WRITE)
        reached = _wait_for(flag.exists, proc)
    elif mode == "first-output":
        proc = popen(argv)
        reached = _wait_for(lambda: any(out.glob("sub-*/anat/*_morph.*")), proc)
    else:
        proc = popen(argv)
        time.sleep(rng.uniform(0.2, 4.0))
        reached = True
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    proc.stderr.close()
    problems = [] if reached else [f"{mode}: the kill point was never reached"]
    # Right after the kill: whatever exists must be complete (temporary names aside).
    problems += [f"after kill ({mode}): half-written {b}" for b in broken_outputs(out)]
    res = run_subprocess(argv)
    if res.code != 0:
        problems.append(f"re-run after kill ({mode}) exited {res.code}: {res.stderr[-500:]}")
    done = complete_scans(out, ds.participants)
    if done != ds.participants:
        problems.append(f"after re-run ({mode}) only {done} of {ds.participants} are complete")
    problems += [f"after re-run ({mode}): half-written {b}" for b in broken_outputs(out)]
    return problems, temp_leftovers(out)


# --------------------------------------------------------------------------- parallel jobs


def parallel_array(ds, out: Path) -> tuple[int, int, list[str]]:
    """One participant process per label, all at once into ``out``: (jobs, verified, problems)."""
    procs = [popen([ds.root, out, "participant", "--participant-label", sub, *FAST,
                    "--nprocs", "1"]) for sub in ds.participants]  # fmt: skip
    problems = []
    for sub, proc in zip(ds.participants, procs, strict=True):
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            problems.append(f"{sub}: exit {proc.returncode}: {err[-400:]}")
    done = complete_scans(out, ds.participants)
    problems += [f"{sub}: outputs incomplete" for sub in ds.participants if sub not in done]
    for sub in ds.participants:
        for f in scan_files(out, sub):
            text = f.read_text()
            if any(other in text for other in ds.participants if other != sub):
                problems.append(f"{f}: mentions another participant (interleaved)")
    try:
        desc = json.loads((out / "dataset_description.json").read_text())
        if desc.get("DatasetType") != "derivative":
            problems.append("dataset_description.json: DatasetType is not derivative")
    except (OSError, ValueError) as exc:
        problems.append(f"dataset_description.json invalid: {exc}")
    problems += [f"temporary file left: {p}" for p in temp_leftovers(out)]
    problems += [f"half-written: {b}" for b in broken_outputs(out)]
    return len(procs), len(done), problems


# --------------------------------------------------------------------------- disk full


def _limit_file_size(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def disk_full(ds, out: Path, limit: int = 3000) -> tuple[Outcome, list[str]]:
    """Participant run whose files may not grow beyond ``limit`` bytes (RLIMIT_FSIZE)."""
    res = run_subprocess([ds.root, out, "participant", *FAST], preexec_fn=_limit_file_size(limit))
    problems = []
    if res.code == 0:
        problems.append("the run succeeded although files could not be written")
    problems += [f"temporary file left: {p}" for p in temp_leftovers(out)]
    problems += [f"half-written: {b}" for b in broken_outputs(out)]
    return res, problems


# --------------------------------------------------------------------------- tally


def _pct(ok: int, n: int) -> str:
    return f"{ok}/{n} ({100.0 * ok / n:.1f} %)" if n else "0/0 (n/a)"


def _run_cases(label, cases, runner, table, tmp: Path, tally: dict, failures: list) -> None:
    """Run ``runner(case, table, folder)`` for each case; count and record the problems."""
    ok = 0
    for i, case in enumerate(cases):
        probs = runner(case, table, tmp / f"{label.split()[0]}{i}")
        ok += not probs
        failures += [f"{label} {case.name!r}: {x}" for x in probs]
    tally[f"{label}s handled"] = (ok, len(cases))


def main() -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kills", type=int, default=9, help="SIGKILL points to try")
    p.add_argument("--jobs", type=int, default=16, help="parallel participant jobs")
    p.add_argument("--fuzz", type=int, default=1000, help="hypothesis examples per parser")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    table = shared_table()
    if table is None:
        print("shared data not found (set NEUROHARMONY_SHARED_DATA)", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    tally: dict[str, tuple[int, int]] = {}
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="nh-reliability-") as tmpdir:
        tmp = Path(tmpdir)
        _run_cases("bad input", BAD_INPUTS, run_bad_input, table, tmp, tally, failures)
        _run_cases("table input", TABLE_INPUTS, run_table_case, table, tmp, tally, failures)
        probs = markdown_escaped()
        failures += probs
        bad = {p.split(" renders ")[0] for p in probs}
        tally["Markdown outputs escaped"] = (
            len(MARKDOWN_OUTPUTS) - len(bad),
            len(MARKDOWN_OUTPUTS),
        )

        ok = 0
        modes = ["delay", "first-output", "mid-write"]
        for k in range(args.kills):
            mode = modes[k % len(modes)]
            ds = make_dataset(tmp / f"kill{k}" / "ds", table, n=4, seed=k)
            probs, left = kill_and_rerun(ds, tmp / f"kill{k}" / "out", mode, rng)
            probs += [f"{mode}: temporary file left after the re-run: {p}" for p in left]
            ok += not probs
            failures += [f"kill point {k}: {x}" for x in probs]
        tally["kill points recovered"] = (ok, args.kills)

        ds = make_dataset(tmp / "par" / "ds", table, n=args.jobs, seed=7)
        jobs, verified, probs = parallel_array(ds, tmp / "par" / "out")
        failures += [f"parallel: {x}" for x in probs]
        tally["parallel outputs verified"] = (verified if not probs else 0, jobs)

        ds = make_dataset(tmp / "full" / "ds", table, n=2, seed=1)
        res, probs = disk_full(ds, tmp / "full" / "out")
        failures += [f"disk full: {x}" for x in probs]
        tally["disk full handled"] = (int(not probs), 1)

        from bench._reliability_bids import SCENARIOS  # the BIDS layer's own cases

        _run_cases("BIDS layer case", SCENARIOS, lambda c, t, p: c.run(t, p), table, tmp,
                   tally, failures)  # fmt: skip

    fuzz = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(REPO / "tests" / "test_fuzz_parsers.py")],
        capture_output=True, text=True, cwd=REPO,
        env={**os.environ, "NH_FUZZ_EXAMPLES": str(args.fuzz)},
    )  # fmt: skip
    summary = fuzz.stdout.strip().splitlines()[-1] if fuzz.stdout.strip() else fuzz.stderr[-300:]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|xfailed|errors?)", summary)}
    n_tests, passed = sum(counts.values()), counts.get("passed", 0)
    tally["fuzz properties passed"] = (passed, n_tests)
    print(f"fuzz: {n_tests} properties x up to {args.fuzz} examples each: {summary}")

    print("\nneuroharmony-bids reliability tally")
    for name, (ok, n) in tally.items():
        print(f"  {name:28s} {_pct(ok, n)}")
    if failures:
        print("\nproblems:")
        for f in failures:
            print("  -", f.replace("\n", " ")[:400])
    return 0 if all(ok == n for ok, n in tally.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
