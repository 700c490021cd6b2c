"""FreeSurfer/FastSurfer stats parsers on the real-format corpus (tests/data/real).

Every number the parser returns is compared with the file's own text, read here independently
with a few regexes (not with the parser under test).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from neuroharmony_bids.errors import DataError, MissingInputError
from neuroharmony_bids.harmonize.features import DK_REGIONS, ETIV
from neuroharmony_bids.io import freesurfer_stats as fs_stats

REAL = Path(__file__).parent / "data" / "real"
STATS_FILES = sorted(REAL.rglob("*.stats"))
SUBJECTS = sorted({p.parent.parent for p in REAL.rglob("aseg.stats")})
TABLES = sorted(REAL.rglob("*stats2table.txt"))


def _rel(path: Path) -> str:
    return str(path.relative_to(REAL))


def _text_measures(text: str) -> dict[str, float]:
    """``# Measure`` lines read the simple way: field name = second field up to a comma or a
    space, value = second-to-last comma field."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^# Measure [^,]+, ([\w-]+)[, ]", line)
        if m:
            name = {"eTIV": ETIV, "ICV": "IntraCranialVol"}.get(m.group(1), m.group(1))
            out[name] = float(line.rsplit(",", 2)[1])
    return out


def _text_rows(text: str) -> list[list[str]]:
    return [ln.split() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def test_the_corpus_covers_the_versions_it_claims():
    versions = {p.relative_to(REAL).parts[1] for p in STATS_FILES if p.parts[-4] != "fastsurfer"}
    assert {"5.3", "6.0", "7.0", "7.4.1"} <= versions
    assert any("fastsurfer" in p.parts for p in STATS_FILES)
    assert len(STATS_FILES) >= 25 and len(SUBJECTS) >= 6


@pytest.mark.parametrize("path", STATS_FILES, ids=_rel)
def test_every_real_stats_file_is_read_with_the_numbers_it_holds(path):
    text = path.read_text()
    stats = fs_stats.parse_stats_file(path)
    expected = _text_measures(text)
    assert expected, "every real stats file has # Measure lines"
    assert stats.measures == pytest.approx(expected, rel=0, abs=0)
    rows = _text_rows(text)
    assert [r for r in stats.rows] == rows
    nrows = re.search(r"^# NRows (\d+)", text, flags=re.M)
    if nrows:
        assert len(stats.rows) == int(nrows.group(1))
    if path.name == "aseg.stats":
        vols = fs_stats.parse_aseg_stats(path)
        for row in rows:  # Index SegId NVoxels Volume_mm3 StructName ...
            assert vols[row[4]] == float(row[3])
        assert vols[ETIV] == expected[ETIV]
    else:
        hemi = path.name[:2]
        vols = fs_stats.parse_aparc_stats(path, require_dk="DKT" not in path.name)
        assert vols == {
            f"{hemi}_{r[0]}_volume": float(r[3]) for r in rows
        }  # StructName ... GrayVol


@pytest.mark.parametrize("subject", SUBJECTS, ids=_rel)
def test_every_real_subject_is_read(subject):
    result = fs_stats.read_subject(subject)
    assert fs_stats.read_subject_volumes(subject) == result.volumes
    if result.cortical_atlas == "DK":
        assert set(DK_REGIONS) <= set(result.volumes)
        assert not result.dkt_volumes
    else:  # FastSurfer: aseg only, DKT kept apart
        assert result.pipeline == "FastSurfer" and result.cortical_atlas == "DKT"
        assert not set(DK_REGIONS) & set(result.volumes)
        assert len(result.dkt_volumes) == 62
        assert any("not the 68 Desikan-Killiany regions" in n for n in result.notes)
    assert result.volumes[ETIV] > 0


def test_freesurfer_6_missing_comma_is_read_and_noted():
    path = REAL / "freesurfer/6.0/nfmrix-sub-01/stats/lh.aparc.stats"
    line = next(ln for ln in path.read_text().splitlines() if "CortexVol Total" in ln)
    assert line == (
        "# Measure Cortex, CortexVol Total cortical gray matter volume, 555332.582446, mm^3"
    )
    stats = fs_stats.parse_stats_file(path)
    assert stats.measures["CortexVol"] == 555332.582446
    assert stats.measure_units["CortexVol"] == "mm^3"
    assert any("no comma after 'CortexVol'" in n for n in stats.notes)
    subject = fs_stats.read_subject(path.parent.parent)
    assert any("lh.aparc.stats, line" in n for n in subject.notes)


@pytest.mark.parametrize(
    ("subject", "release"),
    [
        ("freesurfer/5.3/copy-hcp", "5.3"),
        ("freesurfer/6.0/nfmrix-sub-01", "6.0"),
        ("freesurfer/7.0/soichi", "7.0.0"),
        ("freesurfer/7.4.1/nimh-dasb-sub-01", "7.4.1"),
        ("freesurfer/7.4.1/copy-fs741", "7.4.1"),
    ],
)
def test_release_is_named_for_cvs_ids_and_plain_versions(subject, release):
    assert fs_stats.read_subject(REAL / subject).release == release
    assert fs_stats.unknown_version_warning(REAL / subject) is None


def test_freesurfer_741_extra_header_and_voxel_size_are_kept():
    stats = fs_stats.parse_stats_file(REAL / "freesurfer/7.4.1/copy-fs741/stats/aseg.stats")
    assert stats.header["BrainVolStatsFixed"].startswith("see surfer.nmr.mgh.harvard.edu")
    assert stats.header["VoxelVolume_mm3"] == "0.343"


@pytest.mark.parametrize("path", TABLES, ids=_rel)
def test_stats2table_tables_are_read_with_their_numbers(path):
    table = fs_stats.read_stats_table(path)
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    assert table.shape == (len(lines) - 1, len(header) - 1)
    for line in lines[1:]:
        cells = line.split("\t")
        for name, cell in zip(header[1:], cells[1:], strict=True):
            assert table.at[cells[0], ETIV if name == "eTIV" else name] == float(cell)


# --------------------------------------------------------------------------- broken real files


@pytest.fixture
def subject_copy(tmp_path) -> Path:
    dst = tmp_path / "sub-01"
    shutil.copytree(REAL / "freesurfer/7.4.1/nimh-dasb-sub-01", dst)
    return dst


def test_table_cut_mid_row_names_file_line_and_fix(subject_copy):
    aseg = subject_copy / "stats/aseg.stats"
    text = aseg.read_text()
    cut = text[: text.index("Left-Hippocampus") + 4]
    aseg.write_text(cut)
    with pytest.raises(DataError) as err:
        fs_stats.read_subject_volumes(subject_copy)
    msg = str(err.value)
    assert f"{aseg}, line {len(cut.splitlines())}" in msg
    assert "truncated" in msg and "recon-all" in msg


def test_missing_etiv_line_is_refused(subject_copy):
    aseg = subject_copy / "stats/aseg.stats"
    lines = aseg.read_text().splitlines(keepends=True)
    aseg.write_text("".join(ln for ln in lines if "EstimatedTotalIntraCranialVol" not in ln))
    with pytest.raises(DataError, match=r"aseg.stats, line \d+: no '# Measure EstimatedTotal"):
        fs_stats.read_subject_volumes(subject_copy)


def test_binary_junk_names_the_line(subject_copy):
    lh = subject_copy / "stats/lh.aparc.stats"
    lh.write_bytes(lh.read_bytes()[:300] + b"\x00\x9f\x00junk")
    with pytest.raises(DataError, match=r"lh.aparc.stats, line \d+: binary data"):
        fs_stats.read_subject_volumes(subject_copy)


def test_aparc_without_dk_regions_is_refused_for_a_dk_subject(subject_copy):
    lh = subject_copy / "stats/lh.aparc.stats"
    shutil.copy(subject_copy / "stats/lh.aparc.DKTatlas.stats", lh)
    with pytest.raises(DataError, match="3 of the 34 Desikan-Killiany regions are missing"):
        fs_stats.read_subject_volumes(subject_copy)


def test_subject_without_cortical_stats_is_incomplete_and_says_fastsurfer(subject_copy):
    (subject_copy / "stats/rh.aparc.stats").unlink()
    with pytest.raises(MissingInputError, match=r"rh.aparc.stats \(a FastSurfer subject"):
        fs_stats.read_subject(subject_copy)


def test_stats_table_cut_mid_row_names_line(tmp_path):
    src = REAL / "freesurfer/7.x/copy-ect-asegstats2table.txt"
    text = src.read_text()
    cut = tmp_path / "aseg.txt"
    cut.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 40])
    with pytest.raises(DataError, match=r"aseg.txt, line 4, column '[^']+': no value"):
        fs_stats.read_stats_table(cut)


@pytest.mark.parametrize("name", ["aseg_table.tsv", "lh.aparc_table_volume.tsv"])
def test_abide_freesurfer6_tables_are_read_with_their_numbers(shared_data, name):
    path = shared_data / "abide1" / "freesurfer6_tables" / name
    table = fs_stats.read_stats_table(path)
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    assert table.shape == (len(lines) - 1, len(header) - 1)
    for line in lines[1::97]:
        cells = line.split("\t")
        assert [table.at[cells[0], c] for c in header[1:]] == [float(x) for x in cells[1:]]
