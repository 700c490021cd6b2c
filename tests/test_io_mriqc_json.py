"""MRIQC IQM readers on the real-format corpus (tests/data/real/mriqc).

Numbers are compared with the file's own text, read here independently (a regex over the
JSON's top-level lines, a plain tab split of the TSV), not with the parser under test.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from neuroharmony_bids.errors import DataError, MissingInputError
from neuroharmony_bids.harmonize.features import ALL_IQMS, CORE_IQMS
from neuroharmony_bids.io import mriqc_json
from neuroharmony_bids.testing import iqm_columns, tiny_t1w_bytes
from neuroharmony_bids.testing import mriqc_outputs as mq_out

REAL = Path(__file__).parent / "data" / "real" / "mriqc"
JSONS = sorted(REAL.rglob("*.json"))
TSVS = sorted(REAL.rglob("group_T1w.tsv"))
_TOP_LEVEL = re.compile(r'^  "(\w+)": ?(NaN|null|-?[0-9.eE+-]+),?$')


def _rel(path: Path) -> str:
    return str(path.relative_to(REAL))


def _text_iqms(text: str) -> dict[str, str]:
    """Top-level scalar entries of an MRIQC JSON (two-space indent), as written."""
    return {m.group(1): m.group(2) for m in map(_TOP_LEVEL.match, text.splitlines()) if m}


def test_the_corpus_covers_mriqc_versions_and_sentinels():
    versions = {p.relative_to(REAL).parts[0] for p in JSONS}
    assert {"21.0.0rc2", "22.0.0rc1", "22.0.6", "23.0.1", "24.1.0.dev0"} <= versions
    assert len(TSVS) >= 3
    texts = [p.read_text() for p in JSONS]
    assert any('"fber": -1.0' in t for t in texts)
    assert any('": NaN' in t for t in texts)
    assert any(len(t) > 100_000 for t in texts)  # MRIQC 24's huge bids_meta
    assert any(not t.endswith("\n") for t in texts)


@pytest.mark.parametrize("path", JSONS, ids=_rel)
def test_every_real_iqm_json_is_read_with_its_numbers(path):
    written = _text_iqms(path.read_text())
    reading = mriqc_json.read_iqms(path)
    assert set(CORE_IQMS) <= set(reading.values)
    assert set(written) == set(reading.values)
    for name, raw in written.items():
        value = reading.values[name]
        if raw in ("NaN", "null") or (raw in ("-1", "-1.0") and name in mriqc_json.SENTINEL_IQMS):
            assert math.isnan(value) and name in reading.unavailable
        else:
            assert value == float(raw) and name not in reading.unavailable
    assert str(path) in reading.where


@pytest.mark.parametrize("path", JSONS, ids=_rel)
def test_metadata_of_every_real_json(path):
    meta = mriqc_json.read_iqm_metadata(path)
    version = re.search(r'"version": "([^"]+)"', path.read_text()).group(1)
    assert meta["provenance"]["version"] == version
    assert mriqc_json.read_iqms(path).mriqc_version == version  # same pass as the IQMs
    assert meta["bids_meta"]["modality"] == "T1w"


def test_fber_sentinel_and_nan_token_are_named_not_errors():
    nan_file = REAL / "22.0.6/copy-nan-qi_1_sub-113_T1w.json"
    reading = mriqc_json.read_iqms(nan_file)
    assert reading.unavailable == {"qi_1": "NaN", "fber": "-1 (MRIQC's value for 'not computed')"}
    assert math.isnan(reading.values["qi_1"]) and math.isnan(reading.values["fber"])
    assert reading.values["cjv"] == float(_text_iqms(nan_file.read_text())["cjv"])
    # a caller that insists on qi_1 gets the file and the IQM named
    with pytest.raises(DataError, match=r"copy-nan-qi_1_sub-113_T1w.json: IQM 'qi_1' is empty/NaN"):
        mriqc_json.read_iqm_json(nan_file, required=["qi_1"])
    assert math.isnan(mriqc_json.read_iqm_json(nan_file, required=["cjv"])["fber"])


@pytest.mark.parametrize("path", TSVS, ids=_rel)
def test_every_real_group_tsv_row_is_read_with_its_numbers(path):
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    table = mriqc_json.read_group_tsv(path)
    assert len(table) == len(lines) - 1
    for line in lines[1:]:
        cells = dict(zip(header, line.split("\t"), strict=True))
        reading = mriqc_json.group_row_iqms(table, cells["bids_name"], path)
        for name, raw in cells.items():
            if name == "bids_name" or not re.fullmatch(r"n/a|NaN|-?[0-9.eE+-]+", raw):
                continue
            value = reading.values[name]
            if raw in ("n/a", "NaN") or (float(raw) == -1 and name in mriqc_json.SENTINEL_IQMS):
                assert math.isnan(value) and name in reading.unavailable, (name, raw)
            else:
                assert value == float(raw), (name, raw)


def test_hcph_group_table_names_the_fber_sentinel_rows():
    path = REAL / "group/hcph/group_T1w.tsv"
    table = mriqc_json.read_group_tsv(path)
    flagged = [
        name
        for name in table.index
        if "fber" in mriqc_json.group_row_iqms(table, name, path).unavailable
    ]
    written = [ln.split("\t")[0] for ln in path.read_text().splitlines()[1:]]
    fber_col = path.read_text().splitlines()[0].split("\t").index("fber")
    expected = [
        n
        for n, ln in zip(written, path.read_text().splitlines()[1:], strict=True)
        if ln.split("\t")[fber_col] in ("-1.0", "-1", "n/a")
    ]
    assert flagged == expected and len(flagged) > 0


def test_early_mriqc_group_table_without_bids_name_is_named_from_subject_id(shared_data):
    old_group = shared_data / "abide1" / "mriqc_iqms" / "abide_group_T1w.tsv"
    table = mriqc_json.read_group_tsv(old_group)
    lines = old_group.read_text().splitlines()
    header, first = lines[0].split("\t"), lines[1].split("\t")
    name = f"sub-{first[0]}_T1w"
    assert table.index[0] == name and table.index.is_unique and len(table) == len(lines) - 1
    reading = mriqc_json.group_row_iqms(table, name, old_group)
    assert reading.values["cjv"] == float(first[header.index("cjv")])


# --------------------------------------------------------------------------- writer (testing.mriqc_outputs)
# round trips, hand-made damage and where MRIQC versions put their files


def abide_iqms(row: pd.Series) -> dict[str, float]:
    out = {}
    for col, name in iqm_columns(list(row.index)).items():
        value = float(row[col])
        out[name] = int(value) if name.startswith("size_") else value
    return out


@pytest.mark.slow
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
