"""MRIQC IQMs: reader (JSON of MRIQC 0.9-24, group TSV), writer (MRIQC 24 layout), mriqc node."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest

from neuroharmony_bids.errors import DataError, MissingInputError
from neuroharmony_bids.harmonize.features import ALL_IQMS, CORE_IQMS
from neuroharmony_bids.interfaces import mriqc as mq
from neuroharmony_bids.io import mriqc_json
from neuroharmony_bids.testing import iqm_columns, tiny_t1w_bytes
from neuroharmony_bids.testing import mriqc_outputs as mq_out


def abide_iqms(row: pd.Series) -> dict[str, float]:
    out = {}
    for col, name in iqm_columns(list(row.index)).items():
        value = float(row[col])
        out[name] = int(value) if name.startswith("size_") else value
    return out


def test_writer_is_byte_identical_to_mriqc_iqmfilesink(abide_table, tmp_path):
    """The JSON layout is MRIQC 24's own: run its IQMFileSink on the same values and compare."""
    pytest.importorskip(
        "mriqc",
        reason="mriqc is not installed (opt-in: pip install -r requirements-mriqc.lock); "
        "its IQMFileSink is the reference for this check",
    )
    from mriqc.interfaces.bids import IQMFileSink

    bids = tmp_path / "bids" / "sub-01" / "anat"
    bids.mkdir(parents=True)
    t1w = bids / "sub-01_T1w.nii.gz"
    t1w.write_bytes(tiny_t1w_bytes())
    iqms = abide_iqms(abide_table.iloc[7])
    provenance = {
        "md5sum": "0123456789abcdef",
        "version": "24.0.2",
        "software": "mriqc",
        "settings": {"testing": False},
        "warnings": {"small_air_mask": False, "large_rot_frame": True},
    }
    sink = IQMFileSink(
        in_file=str(t1w),
        modality="T1w",
        out_dir=str(tmp_path / "mriqc"),
        root=dict(iqms),
        metadata={"Manufacturer": "Siemens", "MagneticFieldStrength": 3},
        entities={"subject": "01"},
        provenance=provenance,
    )
    real_path = Path(sink.run().outputs.out_file)
    assert real_path == tmp_path / "mriqc" / "sub-01" / "anat" / "sub-01_T1w.json"
    ours = mq_out.write_iqm_json(
        tmp_path / "ours.json",
        iqms,
        bids_meta={"Manufacturer": "Siemens", "MagneticFieldStrength": 3, "subject": "01"},
        provenance={"md5sum": "0123456789abcdef", "warnings": provenance["warnings"]},
    )
    assert ours.read_bytes() == real_path.read_bytes()
    # and the reader gets the IQMs back from MRIQC's own file
    assert mriqc_json.read_iqm_json(real_path, CORE_IQMS) == pytest.approx(
        {k: float(v) for k, v in iqms.items()}
    )


def test_writer_defaults_and_prefix(tmp_path):
    path = mq_out.write_iqm_json(
        tmp_path / "sub-01_T1w.json", {"iqm_cjv": 0.4, "iqm_size_x": 176.0, "snr_total": 10.5}
    )
    data = json.loads(path.read_text())
    assert data["cjv"] == 0.4 and data["size_x"] == 176 and isinstance(data["size_x"], int)
    assert data["bids_meta"] == {"modality": "T1w"}
    assert data["provenance"]["software"] == "mriqc"
    assert data["provenance"]["version"] == "24.0.2"
    assert list(data) == sorted(data)
    assert path.read_text().endswith("}\n")


def test_md5sum_of_source_file(tmp_path):
    import hashlib

    t1w = tmp_path / "t1.nii.gz"
    t1w.write_bytes(tiny_t1w_bytes())
    path = mq_out.write_iqm_json(tmp_path / "x.json", {"cjv": 1.0}, source_file=t1w)
    md5 = json.loads(path.read_text())["provenance"]["md5sum"]
    assert md5 == hashlib.md5(t1w.read_bytes()).hexdigest()


def test_reader_drops_metadata_and_flattens_nested(tmp_path):
    path = tmp_path / "sub-01_T1w.json"
    path.write_text(
        json.dumps(
            {
                "cjv": 0.5,
                "summary": {"wm": {"k": 1.5}},
                "bids_meta": {"EchoTime": 0.003},
                "provenance": {"version": "0.9.6", "md5sum": "x"},
                "flag": True,
                "label": "text",
            }
        )
    )
    iqms = mriqc_json.read_iqm_json(path)
    assert iqms == {"cjv": 0.5, "summary_wm_k": 1.5}
    meta = mriqc_json.read_iqm_metadata(path)
    assert meta["provenance"]["version"] == "0.9.6"


def test_missing_and_nan_iqms_name_file_and_iqm(tmp_path):
    path = tmp_path / "sub-01_T1w.json"
    mq_out.write_iqm_json(path, {n: 1.0 for n in CORE_IQMS if n != "cjv"} | {"cnr": float("nan")})
    with pytest.raises(DataError) as err:
        mriqc_json.read_iqm_json(path, CORE_IQMS)
    assert str(path) in str(err.value)
    assert "'cnr' is empty/NaN" in str(err.value) or "'cjv' is missing" in str(err.value)
    mq_out.write_iqm_json(path, {n: 1.0 for n in CORE_IQMS} | {"cnr": float("nan")})
    with pytest.raises(DataError, match=r"IQM 'cnr' is empty/NaN"):
        mriqc_json.read_iqm_json(path, CORE_IQMS)
    mq_out.write_iqm_json(path, {n: 1.0 for n in CORE_IQMS if n != "efc"})
    with pytest.raises(DataError, match=r"IQM 'efc' is missing") as err:
        mriqc_json.read_iqm_json(path, CORE_IQMS)
    assert "--mriqc-dir" in str(err.value)


def test_truncated_json_names_line(tmp_path):
    path = tmp_path / "sub-01_T1w.json"
    text = mq_out.render_iqm_json({n: 1.0 for n in ALL_IQMS})
    path.write_text(text[: len(text) // 2])
    with pytest.raises(DataError, match=rf"{path}, line \d+: not valid JSON"):
        mriqc_json.read_iqm_json(path)
    with pytest.raises(MissingInputError, match="not found"):
        mriqc_json.read_iqm_json(tmp_path / "absent.json")


def test_group_tsv_rows(abide_table, tmp_path):
    rows = []
    for pos in (0, 1, 2):
        rows.append({"bids_name": f"sub-{pos}_T1w", **abide_iqms(abide_table.iloc[pos])})
    rows[2]["cjv"] = math.nan
    tsv = tmp_path / "group_T1w.tsv"
    pd.DataFrame(rows).to_csv(tsv, sep="\t", index=False, na_rep="n/a")
    table = mriqc_json.read_group_tsv(tsv)
    got = mriqc_json.iqms_from_group_row(table, "sub-1_T1w", tsv, CORE_IQMS)
    assert got["cjv"] == pytest.approx(float(abide_table.iloc[1]["iqm_cjv"]))
    with pytest.raises(DataError, match=r"line 4 \(sub-2_T1w\): IQM 'cjv' is empty/NaN"):
        mriqc_json.iqms_from_group_row(table, "sub-2_T1w", tsv, CORE_IQMS)
    with pytest.raises(MissingInputError, match="no row with bids_name 'sub-9_T1w'"):
        mriqc_json.iqms_from_group_row(table, "sub-9_T1w", tsv)
    bad = tmp_path / "bad.tsv"
    bad.write_text("subject\tcjv\nsub-1\t0.5\n")
    with pytest.raises(DataError, match="no 'bids_name' column"):
        mriqc_json.read_group_tsv(bad)


@pytest.mark.parametrize(
    "where",
    [
        "sub-01/ses-1/anat/sub-01_ses-1_T1w.json",  # MRIQC >= 0.15
        "sub-01_ses-1_T1w.json",  # flat
        "derivatives/sub-01_ses-1_T1w.json",  # MRIQC 0.9 - 0.14
    ],
)
def test_find_iqm_source_layouts(tmp_path, where):
    mq_out.write_iqm_json(tmp_path / "mriqc" / where, {"cjv": 1.0})
    src = mriqc_json.find_iqm_source([tmp_path / "mriqc"], "sub-01_ses-1_T1w", "sub-01/ses-1/anat")
    assert src is not None and src.kind == "json"
    assert src.path == tmp_path / "mriqc" / where


def test_find_iqm_source_group_tsv_and_absent(tmp_path):
    mdir = tmp_path / "mriqc"
    mdir.mkdir()
    pd.DataFrame({"bids_name": ["sub-01_T1w"], "cjv": [0.3]}).to_csv(
        mdir / "group_T1w.tsv", sep="\t", index=False
    )
    cache: dict = {}
    src = mriqc_json.find_iqm_source([mdir], "sub-01_T1w", "sub-01/anat", cache)
    assert src is not None and src.kind == "tsv" and (mdir / "group_T1w.tsv") in cache
    assert mriqc_json.find_iqm_source([mdir], "sub-02_T1w", "sub-02/anat", cache) is None


def test_mriqc_command_line_is_accepted_by_mriqc(tmp_path):
    (tmp_path / "bids").mkdir()
    node = mq.init_mriqc_node(
        "mriqc", tmp_path / "bids", tmp_path / "out", "01", tmp_path / "work",
        session_ids=["1"], nprocs=4, omp_nthreads=2, mem_gb=8,
    )  # fmt: skip
    cmd = node.interface.cmdline
    args = cmd.split()
    assert args[:4] == ["mriqc", str(tmp_path / "bids"), str(tmp_path / "out"), "participant"]
    for flag in ("--no-sub", "--notrack", "--no-datalad-get"):
        assert flag in args
    assert "--participant-label 01" in cmd and "--session-id 1" in cmd and "-m T1w" in cmd
    assert "--nprocs 4" in cmd and "--omp-nthreads 2" in cmd and "--mem-gb 8" in cmd
    assert f"-w {tmp_path / 'work'}" in cmd
    assert node.n_procs == 4
    pytest.importorskip(
        "mriqc",
        reason="mriqc is not installed (opt-in: pip install -r requirements-mriqc.lock); "
        "its parser checks the command line",
    )
    from mriqc.cli.parser import _build_parser

    parsed = _build_parser().parse_args(args[1:])
    assert parsed.participant_label == ["01"] and parsed.modalities == ["T1w"]
    assert parsed.nprocs == 4 and parsed.omp_nthreads == 2 and parsed.memory_gb == 8
    assert parsed.no_sub and parsed.notrack


def test_mriqc_status(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "not on PATH" in mq.mriqc_status()
    exe = tmp_path / "mriqc"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    why = mq.mriqc_status()
    assert why is not None and "antsRegistration" in why and "3dFWHMx" in why
    for dep in mq.MRIQC_DEPENDENCIES:
        (tmp_path / dep).write_text("#!/bin/sh\n")
        os.chmod(tmp_path / dep, 0o755)
    assert mq.mriqc_status() is None
