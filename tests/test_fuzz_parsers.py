"""Property-based tests: arbitrary input to every parser raises nothing but NeuroharmonyError.

Parsers: FreeSurfer stats (generic, aseg, aparc, whole subject), MRIQC JSON and group TSV,
participants.tsv (bids.read_covariates), harmonize.table.prepare and features.parse_sex.
``NH_FUZZ_EXAMPLES`` (default 200) sets max_examples; bench/reliability.py raises it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuroharmony_bids.bids import Scan, read_covariates
from neuroharmony_bids.errors import DataError, NeuroharmonyError
from neuroharmony_bids.harmonize.features import CORE_IQMS, parse_sex
from neuroharmony_bids.harmonize.table import prepare
from neuroharmony_bids.io import freesurfer_stats as fs_stats
from neuroharmony_bids.io import mriqc_json

N = int(os.environ.get("NH_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=N,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

# Text that looks like the real files: FreeSurfer/TSV tokens mixed with arbitrary characters.
TOKENS = [
    "# ColHeaders Index SegId NVoxels Volume_mm3 StructName normMean\n",
    "# ColHeaders StructName NumVert SurfArea GrayVol ThickAvg\n",
    "# Measure BrainSeg, BrainSegVol, Brain Segmentation Volume, 1234.5, mm^3\n",
    "# Measure EstimatedTotalIntraCranialVol, eTIV, Estimated, 1.5e6, mm^3\n",
    "# NRows 2\n", "# NRows x\n", "# hemi lh\n", "# cvs_version 7.4.1\n", "# Measure a\n",
    "1 17 100 4000.0 Left-Hippocampus 80\n", "bankssts 10 20 2500 2.5\n", "\t", " ", "\n",
    "n/a", "nan", "inf", "-1", "0", "1e309", "participant_id", "age", "sex", "bids_name",
    "sub-01", "M", "F", "\x00", "\ufeff", '"', "#",
]  # fmt: skip
fuzzy_text = st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=20)), max_size=30).map(
    "".join
)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    return path


def _only_ours(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except NeuroharmonyError as exc:
        assert str(exc).strip(), "an error must say what is wrong"
        return None


@FUZZ
@given(text=fuzzy_text)
def test_freesurfer_stats_parsers(text):
    with tempfile.TemporaryDirectory() as d:
        path = _write(Path(d), "lh.aparc.stats", text)
        _only_ours(fs_stats.parse_stats_file, path)
        _only_ours(fs_stats.parse_aseg_stats, path)
        _only_ours(fs_stats.parse_aparc_stats, path)
        _only_ours(fs_stats.parse_aparc_stats, path, "rh", False)


@FUZZ
@given(aseg=fuzzy_text, lh=fuzzy_text, raw=st.binary(max_size=200))
def test_freesurfer_subject(aseg, lh, raw):
    with tempfile.TemporaryDirectory() as d:
        _write(Path(d), "stats/aseg.stats", aseg)
        _write(Path(d), "stats/lh.aparc.stats", lh)
        _write(Path(d), "stats/rh.aparc.stats", raw)
        _only_ours(fs_stats.read_subject_volumes, d)
        assert fs_stats.freesurfer_version(d) is None or isinstance(
            fs_stats.freesurfer_version(d), str
        )


meta_values = st.one_of(st.none(), st.dictionaries(st.text(max_size=8), json_values, max_size=3))


@FUZZ
@given(
    doc=json_values,
    text=fuzzy_text,
    meta=st.fixed_dictionaries({}, optional={"bids_meta": meta_values, "provenance": meta_values}),
)
def test_mriqc_json(doc, text, meta):
    with tempfile.TemporaryDirectory() as d:
        docs = [json.dumps(doc), text]
        if isinstance(doc, dict):
            docs.append(json.dumps({**doc, **meta}))
        for i, content in enumerate(docs):
            path = _write(Path(d), f"sub-{i}_T1w.json", content)
            iqms = _only_ours(mriqc_json.read_iqm_json, path, CORE_IQMS[:3])
            if iqms is not None:
                assert all(isinstance(v, float) for v in iqms.values())
                assert all(not math.isnan(iqms[k]) for k in CORE_IQMS[:3])
                # metadata of a file read_iqm_json accepted (as parse_scan does)
                assert set(mriqc_json.read_iqm_metadata(path)) == {"bids_meta", "provenance"}


def test_mriqc_json_binary_is_a_data_error(tmp_path):
    path = _write(tmp_path, "sub-01_T1w.json", b"\xff\xfe\x00 not json")
    with pytest.raises(DataError, match="sub-01_T1w.json"):
        mriqc_json.read_iqm_json(path, CORE_IQMS[:3])


@pytest.mark.parametrize(
    "doc", [{"cjv": 1.0, "bids_meta": "abc"}, {"cjv": 1.0, "provenance": [1, 2]}, None]
)
def test_mriqc_metadata_not_an_object(doc, tmp_path):
    path = _write(tmp_path, "sub-01_T1w.json", json.dumps(doc))
    assert set(_only_ours(mriqc_json.read_iqm_metadata, path) or {}) <= {"bids_meta", "provenance"}


@FUZZ
@given(text=fuzzy_text, name=st.sampled_from(["sub-01_T1w", "n/a", "", "sub-01"]))
def test_mriqc_group_tsv(text, name):
    with tempfile.TemporaryDirectory() as d:
        path = _write(Path(d), "group_T1w.tsv", text)
        table = _only_ours(mriqc_json.read_group_tsv, path)
        if table is not None:
            _only_ours(mriqc_json.iqms_from_group_row, table, name, path, CORE_IQMS[:2])
        _only_ours(mriqc_json.find_iqm_source, [Path(d)], name, "sub-01/anat", {})


@FUZZ
@given(
    text=fuzzy_text,
    rows=st.lists(
        st.tuples(
            st.sampled_from(["sub-01", "sub-02", "", "n/a"]),
            st.text(max_size=6),
            st.text(max_size=6),
        ),
        max_size=4,
    ),  # fmt: skip
    mapping=st.sampled_from([None, {"1": "M", "2": "F"}]),
)
def test_participants_tsv(text, rows, mapping):
    scans = [Scan("01", Path("/x/sub-01/anat/sub-01_T1w.nii.gz")),
             Scan("02", Path("/x/sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz"), (("ses", "1"),))]  # fmt: skip
    structured = "participant_id\tage\tsex\n" + "".join(
        "\t".join(r).replace("\n", " ") + "\n" for r in rows
    )
    for content in (text, structured):
        with tempfile.TemporaryDirectory() as d:
            _write(Path(d), "participants.tsv", content)
            _write(Path(d), "sub-02/sub-02_sessions.tsv", text)
            covs = _only_ours(read_covariates, d, scans, sex_mapping=mapping)
            if covs is not None:
                assert set(covs.errors) <= {s.bids_name for s in scans}
                ok = [n for n in covs.table.index if n not in covs.errors]
                assert all(covs.table.at[n, "sex"] in ("M", "F") for n in ok)


cells = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 200),
    st.text(max_size=6), st.none(), st.sampled_from(["M", "F", "male", "1", "n/a"]),
)  # fmt: skip
columns = st.lists(
    st.sampled_from(["age", "sex", "Left-Hippocampus", "Left-Hippocampus ", "lh_insula_volume",
                     "EstimatedTotalIntraCranialVol", "eTIV", "cjv", "iqm_cjv", "snr_total",
                     "site", "bids_name", "participant_id", "other"]),
    min_size=0, max_size=8, unique=True,
)  # fmt: skip


@FUZZ
@given(cols=columns, data=st.data(), mapping=st.sampled_from([None, {"1": "M", "2": "F"}]))
def test_table_prepare(cols, data, mapping):
    n = data.draw(st.integers(0, 4))
    table = pd.DataFrame({c: data.draw(st.lists(cells, min_size=n, max_size=n)) for c in cols})
    if not cols:
        table = pd.DataFrame(index=range(n))
    prepared = _only_ours(prepare, table, sex_mapping=mapping, covariates=("site",))
    if prepared is not None:
        assert len(prepared.age) == n
        assert ((prepared.age > 0) & (prepared.age <= 120)).all()
        assert set(prepared.sex) <= {"M", "F"}


@FUZZ
@given(values=st.lists(cells, max_size=6),
       mapping=st.one_of(st.none(), st.dictionaries(st.text(max_size=3), st.text(max_size=3),
                                                    max_size=3)))  # fmt: skip
def test_parse_sex(values, mapping):
    out = _only_ours(parse_sex, pd.Series(values, dtype=object), mapping)
    if out is not None:
        assert list(out.index) == list(range(len(values)))
        assert set(out) <= {"M", "F"}
