"""BIDS querying on real and fixture datasets: scans, covariates, metadata, labels, validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from neuroharmony_bids import bids as B
from neuroharmony_bids.bids import layout as BL
from neuroharmony_bids.cli.labels import clean_labels, parse_sex_mapping
from neuroharmony_bids.errors import (
    InvalidBIDSError,
    MissingInputError,
    NothingSelectedError,
    UsageError,
)
from neuroharmony_bids.testing import abide_rows, build_bids_dataset


@pytest.fixture(scope="module")
def real(shared_data) -> Path:
    return shared_data / "bids_real"


def test_real_dataset_scans_and_sidecar_metadata(real):
    scans = B.find_scans(real)
    expected = sorted(p.name[: -len("_T1w.nii.gz")] for p in real.glob("sub-*/anat/*_T1w.nii.gz"))
    assert [s.prefix for s in scans] == expected
    for scan in scans:
        sidecar = json.loads(scan.path.with_name(scan.bids_name + ".json").read_text())
        want = {k: sidecar[k] for k in B.SCANNER_FIELDS if k in sidecar}
        assert dict(scan.metadata) == want
        assert scan.rel_dir == f"sub-{scan.subject}/anat"
        assert scan.relpath(real) == f"sub-{scan.subject}/anat/{scan.bids_name}.nii.gz"
    trio = next(s for s in scans if s.subject == "trio01")
    # the full Siemens sidecar carries all five scanner fields
    assert set(trio.metadata) == set(B.SCANNER_FIELDS)


def test_real_dataset_covariates_and_na_ages(real):
    scans = B.find_scans(real)
    covs = B.read_covariates(real, scans, extra_columns=["site"])
    ptable = pd.read_csv(real / "participants.tsv", sep="\t", na_values="n/a")
    for _, row in ptable.iterrows():
        name = f"{row['participant_id']}_T1w"
        if pd.isna(row["age"]):
            assert name in covs.errors and "age is n/a" in covs.errors[name]
            assert "--age-column" in covs.errors[name]
        else:
            assert covs.table.at[name, "age"] == pytest.approx(row["age"])
            assert covs.table.at[name, "sex"] == row["sex"]
            assert covs.table.at[name, "site"] == row["site"]
            assert name not in covs.errors


@pytest.mark.bids_validator
def test_real_dataset_passes_validation(real):
    warnings = B.validate_dataset(real)
    assert all(w["severity"] == "warning" for w in warnings)


@pytest.mark.bids_validator
def test_invalid_dataset_is_exit_16(real, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(real / "sub-IXI013HH", bad / "sub-IXI013HH")
    shutil.copy(real / "dataset_description.json", bad)
    (bad / "sub-IXI013HH" / "anat" / "not_bids_name.nii.gz").write_bytes(b"x")
    with pytest.raises(InvalidBIDSError) as err:
        B.validate_dataset(bad)
    assert err.value.exit_code == 16
    assert "not_bids_name" in str(err.value) and "--skip-bids-validation" in str(err.value)
    with pytest.raises(InvalidBIDSError, match="no dataset_description.json"):
        B.load_layout(tmp_path / "bad" / "sub-IXI013HH")


@pytest.mark.parametrize("label", ["../etc", "a/b", "sub-01;rm", "*", "$(id)", "01 02", "", "sub-"])
def test_labels_refuse_paths_and_shell(label):
    with pytest.raises(UsageError) as err:
        clean_labels([label])
    assert err.value.exit_code == 64


def test_labels_accept_prefix_or_not():
    assert clean_labels(["sub-01", "02", "01"]) == ("01", "02")
    assert clean_labels(["ses-pre"], "ses") == ("pre",)
    assert clean_labels(None) == ()


def test_parse_scan_name_keeps_entity_order():
    sub, ents = BL.parse_scan_name("sub-01_ses-2_acq-mprage_rec-norm_run-3_T1w.nii.gz")
    assert sub == "01"
    assert ents == (("ses", "2"), ("acq", "mprage"), ("rec", "norm"), ("run", "3"))
    scan = B.Scan(sub, Path("/x"), ents)
    assert scan.prefix == "sub-01_ses-2_acq-mprage_rec-norm_run-3"
    assert scan.rel_dir == "sub-01/ses-2/anat" and scan.session_id == "ses-2"


@pytest.fixture(scope="module")
def sessions_ds(abide_table, tmp_path_factory) -> Path:
    rows = abide_rows(abide_table, 6, seed=3).reset_index(drop=True)
    rows["SUB_ID"] = ["1", "1", "2", "2", "3", "3"]
    rows["ses"] = ["a", "b", "a", "b", "a", "b"]
    rows["run"] = [None, None, None, None, "1", None]
    root = tmp_path_factory.mktemp("sessions") / "bids"
    build_bids_dataset(root, rows, session_column="ses", run_column="run")
    return root


def test_session_filter_and_session_age_wins(sessions_ds):
    scans = B.find_scans(sessions_ds, ["1", "3"], ["b"])
    assert [s.prefix for s in scans] == ["sub-1_ses-b", "sub-3_ses-b"]
    covs = B.read_covariates(sessions_ds, scans)
    for scan in scans:
        stsv = pd.read_csv(
            sessions_ds / scan.participant_id / f"{scan.participant_id}_sessions.tsv", sep="\t"
        )
        session_age = float(stsv.loc[stsv.session_id == scan.session_id, "age"].iloc[0])
        assert covs.table.at[scan.bids_name, "age"] == pytest.approx(session_age)
    runs = B.find_scans(sessions_ds, ["3"], ["a"])
    assert [s.prefix for s in runs] == ["sub-3_ses-a_run-1"]


def test_covariates_per_scan_problems_and_session_values(sessions_ds, tmp_path):
    """Each scan's age/sex comes from its session row when present, else its participant
    row; every unreadable or n/a value costs that scan only, with the same message for every
    scan that has the same spelling."""
    root = tmp_path / "mixed"
    shutil.copytree(sessions_ds, root)
    ptsv = root / "participants.tsv"
    table = pd.read_csv(ptsv, sep="\t", dtype=str)
    table["sex"] = ["x", " female ", None]
    table.to_csv(ptsv, sep="\t", index=False, na_rep="n/a")
    stsv = root / "sub-3" / "sub-3_sessions.tsv"
    sessions = pd.read_csv(stsv, sep="\t", dtype=str)
    sessions["sex"] = ["M", None]  # ses-a names the sex, ses-b falls back to the participant
    sessions.loc[1, "age"] = "old"
    sessions.to_csv(stsv, sep="\t", index=False, na_rep="n/a")
    scans = B.find_scans(root)
    covs = B.read_covariates(root, scans)
    assert list(covs.table.index) == [s.bids_name for s in scans]
    sub1 = [s.bids_name for s in scans if s.subject == "1"]
    assert sorted(covs.errors) == sorted([*sub1, "sub-3_ses-b_T1w"])
    assert covs.errors[sub1[0]] == covs.errors[sub1[1]]
    assert "cannot read 'x' as a sex" in covs.errors[sub1[0]]
    assert "age 'old' is not a number; sex is n/a" in covs.errors["sub-3_ses-b_T1w"]
    assert set(covs.table.loc[[s.bids_name for s in scans if s.subject == "2"], "sex"]) == {"F"}
    assert covs.table.at["sub-3_ses-a_run-1_T1w", "sex"] == "M"
    assert covs.table["age"].dtype == float


def test_layout_indexes_t1w_files_only(sessions_ds, tmp_path):
    """pybids indexes T1w images and sidecars only (and the selected subjects only): the
    scans, their entities and inherited metadata are those of a full index."""
    root = tmp_path / "big"
    shutil.copytree(sessions_ds, root)
    (root / "T1w.json").write_text(json.dumps({"Manufacturer": "Top"}))
    (root / "sub-1" / "sub-1_T1w.json").write_text(json.dumps({"SoftwareVersions": "sub"}))
    extra = [
        "sub-1/ses-a/func/sub-1_ses-a_task-rest_bold.nii.gz",
        "sub-1/ses-a/func/sub-1_ses-a_task-rest_bold.json",
        "sub-2/ses-b/dwi/sub-2_ses-b_dwi.nii.gz",
        "sub-1/ses-a/anat/sub-1_ses-a_T2w.nii.gz",
        "sub-1/ses-a/anat/sub-1_ses-a_FLAIR.json",
        "derivatives/other/sub-1/anat/sub-1_T1w.nii.gz",
        "sourcedata/sub-1/anat/sub-1_T1w.nii.gz",
    ]
    for rel in extra:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"{}" if rel.endswith(".json") else b"x")
    layout = B.load_layout(root)
    indexed = {Path(f).relative_to(root).as_posix() for f in layout.get(return_type="filename")}
    assert not indexed & set(extra)
    assert {"T1w.json", "sub-1/sub-1_T1w.json"} <= indexed
    assert len(BL.t1w_images(layout)) == 6
    scans = B.find_scans(root, layout=layout)
    assert [s.prefix for s in scans] == [s.prefix for s in B.find_scans(sessions_ds)]
    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    full = BIDSLayout(str(root), validate=False, indexer=BIDSLayoutIndexer(validate=False))
    for f in full.get(suffix="T1w", extension=".nii.gz"):
        assert B.sidecar_metadata(root, f.path) == f.get_metadata(), f.filename
    only = B.load_layout(root, participant_label=["2"])
    assert {s.subject for s in B.find_scans(root, ["2"], layout=only)} == {"2"}
    assert BL.scans_per_subject(only) == {"2": 2}
    with pytest.raises(NothingSelectedError, match="1, 2, 3"):
        B.find_scans(root, ["99"], layout=B.load_layout(root, participant_label=["99"]))


def test_cached_layout_follows_the_dataset_state(sessions_ds, tmp_path):
    """The pybids index kept in the work folder is reused only for the same dataset state."""
    root = tmp_path / "ds"
    shutil.copytree(sessions_ds, root)
    cache = tmp_path / "work" / "pybids"
    first = BL.t1w_images(BL.cached_layout(root, cache))
    (key,) = [p.name for p in cache.iterdir()]
    db = cache / key / "layout_index.sqlite"
    stamp = db.stat().st_mtime_ns
    assert BL.t1w_images(BL.cached_layout(root, cache)) == first
    assert db.stat().st_mtime_ns == stamp  # loaded, not rebuilt
    # a new scan changes the dataset state: a new index, the old one removed
    new = root / "sub-4" / "anat" / "sub-4_T1w.nii.gz"
    new.parent.mkdir(parents=True)
    shutil.copy(root / "sub-1" / "ses-a" / "anat" / "sub-1_ses-a_T1w.nii.gz", new)
    assert BL.t1w_images(BL.cached_layout(root, cache)) == sorted(
        [*first, "sub-4/anat/sub-4_T1w.nii.gz"]
    )
    assert [p.name for p in cache.iterdir()] != [key] and len(list(cache.iterdir())) == 1
    # an index without its completion mark (a killed run) is rebuilt; a broken one too
    (only,) = cache.iterdir()
    (only / "complete").unlink()
    assert len(BL.t1w_images(BL.cached_layout(root, cache))) == 7
    (only / "layout_index.sqlite").write_bytes(b"not sqlite")
    assert len(BL.t1w_images(BL.cached_layout(root, cache))) == 7
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp-")]


def test_nothing_selected_is_exit_18(sessions_ds):
    with pytest.raises(NothingSelectedError) as err:
        B.find_scans(sessions_ds, ["99"])
    assert err.value.exit_code == 18 and "1, 2, 3" in str(err.value)
    with pytest.raises(NothingSelectedError, match="sessions in the dataset: a, b"):
        B.find_scans(sessions_ds, session_label=["c"])


def test_sidecar_inheritance_matches_pybids(sessions_ds, tmp_path):
    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    root = tmp_path / "inh"
    shutil.copytree(sessions_ds, root)
    (root / "T1w.json").write_text(json.dumps({"Manufacturer": "Top", "SoftwareVersions": "v1"}))
    (root / "sub-1" / "sub-1_T1w.json").write_text(json.dumps({"SoftwareVersions": "subject"}))
    (root / "sub-1" / "ses-b" / "sub-1_ses-b_T1w.json").write_text(
        json.dumps({"DeviceSerialNumber": "ses-level"})
    )
    (root / "sub-2" / "ses-a" / "anat" / "sub-2_ses-a_acq-x_T1w.json").write_text(
        json.dumps({"DeviceSerialNumber": "other acquisition: must not apply"})
    )
    layout = BIDSLayout(
        str(root), validate=False, indexer=BIDSLayoutIndexer(validate=False, index_metadata=True)
    )
    files = layout.get(suffix="T1w", extension=".nii.gz")
    assert len(files) == 6
    scans = {s.relpath(root): s for s in B.find_scans(root)}
    for f in files:
        assert B.sidecar_metadata(root, f.path) == f.get_metadata(), f.filename
        want = B.scanner_metadata(f.get_metadata())
        assert dict(scans[Path(f.path).relative_to(root).as_posix()].metadata) == want
    assert all("must not apply" not in str(s.metadata) for s in scans.values())


@pytest.mark.parametrize(
    ("where", "text", "why"),
    [
        ("T1w.json", "{not json", "unreadable JSON sidecar"),
        ("sub-1/sub-1_T1w.json", '["a list"]', "not a mapping"),
        ("sub-1/ses-b/anat/sub-1_ses-b_T1w.json", '{"a": ' + "[" * 5000 + "]" * 5000 + "}",
         "nested too deeply"),
    ],
)  # fmt: skip
def test_unreadable_sidecar_fails_the_scans_that_inherit_it(
    sessions_ds, tmp_path, where, text, why
):
    """pybids stops its whole index on a sidecar it cannot read: that sidecar is left out, the
    scans that inherit it fail with its name, the others keep pybids' metadata."""
    root = tmp_path / "bad"
    shutil.copytree(sessions_ds, root)
    (root / where).write_text(text)
    scans = B.find_scans(root)
    failed = {s.relpath(root) for s in scans if s.problem}
    inherits = {
        "T1w.json": {s.relpath(root) for s in scans},
        "sub-1/sub-1_T1w.json": {s.relpath(root) for s in scans if s.subject == "1"},
        "sub-1/ses-b/anat/sub-1_ses-b_T1w.json": {"sub-1/ses-b/anat/sub-1_ses-b_T1w.nii.gz"},
    }[where]
    assert failed == inherits
    for scan in scans:
        if scan.problem:
            assert why in scan.problem and str(root / where) in scan.problem
        else:
            assert scan.metadata, scan.prefix
    # never cached: the next run names the sidecar again
    cache = tmp_path / "work" / "pybids"
    again = BL.find_scans(root, layout=BL.cached_layout(root, cache))
    assert {s.relpath(root) for s in again if s.problem} == inherits
    assert not [p for p in cache.iterdir() if (p / "complete").exists()]


def test_sex_codes_need_a_mapping(sessions_ds, tmp_path):
    root = tmp_path / "codes"
    shutil.copytree(sessions_ds, root)
    ptsv = root / "participants.tsv"
    table = pd.read_csv(ptsv, sep="\t")
    table["sex"] = ["1", "2", "1"]
    table["years"] = table["age"]
    table.to_csv(ptsv, sep="\t", index=False)
    scans = B.find_scans(root)
    covs = B.read_covariates(root, scans)
    assert len(covs.errors) == len(scans)
    assert all("--sex-mapping" in e or "mapping" in e for e in covs.errors.values())
    mapping = parse_sex_mapping(["1=M", "2=f"])
    assert mapping == {"1": "M", "2": "F"}
    covs = B.read_covariates(root, scans, sex_mapping=mapping)
    assert not covs.errors
    assert set(covs.table["sex"]) == {"M", "F"}
    with pytest.raises(MissingInputError, match="--age-column"):
        B.read_covariates(root, scans, age_column="age_years")
    with pytest.raises(UsageError, match="CODE=SEX"):
        parse_sex_mapping(["1M"])
    with pytest.raises(UsageError, match="must be M or F"):
        parse_sex_mapping(["1=X"])


def test_missing_participants_tsv_is_exit_66(sessions_ds, tmp_path):
    root = tmp_path / "nop"
    shutil.copytree(sessions_ds, root)
    (root / "participants.tsv").unlink()
    with pytest.raises(MissingInputError, match="participants.tsv"):
        B.read_covariates(root, B.find_scans(root))


def test_freesurfer_subject_candidates():
    scan = B.Scan("01", Path("/x"), (("ses", "a"), ("run", "2")))
    assert B.freesurfer_subject_candidates(scan, False) == ["sub-01_ses-a_run-2", "sub-01_ses-a"]
    assert B.freesurfer_subject_candidates(scan, True)[-1] == "sub-01"
    plain = B.Scan("01", Path("/x"))
    assert B.freesurfer_subject_candidates(plain, True) == ["sub-01"]


@pytest.mark.parametrize("parent", ["func", "anat", "dwi"])
def test_dataset_under_a_datatype_named_folder(sessions_ds, tmp_path, parent):
    """pybids 0.22 reads the datatype from the absolute path (#1270): entities come from the
    path relative to the root instead."""
    root = tmp_path / parent / "study"
    shutil.copytree(sessions_ds, root)
    scans = B.find_scans(root)
    assert [s.prefix for s in scans] == [s.prefix for s in B.find_scans(sessions_ds)]
    assert all(s.problem is None and s.metadata for s in scans)


def test_non_bids_names_are_kept_with_a_problem(sessions_ds, tmp_path):
    root = tmp_path / "odd"
    shutil.copytree(sessions_ds, root)
    anat = root / "sub-1" / "ses-a" / "anat"
    for path in anat.iterdir():
        path.rename(path.with_name(path.name.replace("sub-1_ses-a", "sub-1_ses-a_acq-x.y")))
    scans = {s.bids_name: s for s in B.find_scans(root)}
    odd = scans["sub-1_ses-a_acq-x.y_T1w"]
    assert odd.problem and "not a BIDS file name" in odd.problem
    assert scans["sub-1_ses-b_T1w"].problem is None


def test_deeply_nested_sidecar_fails_only_its_scan(sessions_ds, tmp_path):
    root = tmp_path / "deep"
    shutil.copytree(sessions_ds, root)
    side = root / "sub-2" / "ses-a" / "anat" / "sub-2_ses-a_T1w.json"
    side.write_text('{"a": ' + "[" * 5000 + "]" * 5000 + "}")
    scans = {s.bids_name: s for s in B.find_scans(root)}
    assert "nested too deeply" in scans["sub-2_ses-a_T1w"].problem
    assert [n for n, s in scans.items() if s.problem] == ["sub-2_ses-a_T1w"]


def test_fingerprint_follows_the_dataset_not_its_derivatives(sessions_ds, tmp_path):
    from neuroharmony_bids.bids.validate import dataset_fingerprint

    root = tmp_path / "fp"
    shutil.copytree(sessions_ds, root)
    first = dataset_fingerprint(root)
    (root / "derivatives" / "neuroharmony").mkdir(parents=True)
    (root / "derivatives" / "neuroharmony" / "x.tsv").write_text("a\n")
    assert dataset_fingerprint(root) == first
    (root / "participants.tsv").write_text((root / "participants.tsv").read_text() + "\n")
    assert dataset_fingerprint(root) != first


@pytest.mark.bids_validator
def test_validation_runs_once_per_dataset_state(real, tmp_path):
    from neuroharmony_bids.bids.validate import validate_once

    root = tmp_path / "ds"
    shutil.copytree(real, root)
    stamp = tmp_path / "logs" / "bids_validation.json"
    warnings, _ = validate_once(root, stamp)
    assert warnings is not None and json.loads(stamp.read_text())["dataset"] == str(root)
    assert validate_once(root, stamp)[0] is None
    (root / "README").write_text("changed\n")
    assert validate_once(root, stamp)[0] is not None
