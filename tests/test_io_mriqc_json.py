"""MRIQC IQM readers on the real-format corpus (tests/data/real/mriqc).

Numbers are compared with the file's own text, read here independently (a regex over the
JSON's top-level lines, a plain tab split of the TSV), not with the parser under test.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from neuroharmony_bids.errors import DataError
from neuroharmony_bids.harmonize.features import CORE_IQMS
from neuroharmony_bids.io import mriqc_json

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
