"""FreeSurfer/FastSurfer stats parsers on the real-format corpus (tests/data/real).

Every number the parser returns is compared with the file's own text, read here independently
with a few regexes (not with the parser under test).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neuroharmony_bids.errors import DataError, MissingInputError
from neuroharmony_bids.harmonize.features import (
    ASEG_REGIONS,
    DK_LABELS,
    DK_REGIONS,
    ETIV,
    canonical_region,
)
from neuroharmony_bids.io import freesurfer_stats as fs_stats
from neuroharmony_bids.testing import freesurfer_outputs as fs_out
from neuroharmony_bids.testing import volume_columns

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
    if result.cortical_atlas == "DK":
        assert fs_stats.read_subject_volumes(subject) == result.volumes
        assert set(DK_REGIONS) <= set(result.volumes)
        assert not result.dkt_volumes
    else:  # FastSurfer: aseg only, DKT kept apart
        assert result.pipeline == "FastSurfer" and result.cortical_atlas == "DKT"
        assert not set(DK_REGIONS) & set(result.volumes)
        assert len(result.dkt_volumes) == 62
        assert any("not the 68 Desikan-Killiany regions" in n for n in result.notes)
        # a caller that needs DK regions is told why and how to get them
        with pytest.raises(MissingInputError, match=r"FastSurfer subject .* --fsaparc"):
            fs_stats.read_subject_volumes(subject)
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


def test_unknown_version_is_named_with_the_file():
    """One rule for the participant level and the subject-folder helper: 5.x-8.x releases and
    the CVS ids of 5.x/6.0 are known; anything else is read but named in a warning."""
    aseg = Path("s/stats/aseg.stats")
    for known in ("7.4.1", "v7.3.2", "8.0.0", "$Id: mri_segstats.c,v 1.121 2016/05/31", None, ""):
        assert fs_stats.unknown_version_message(aseg, known) is None, known
    for odd in ("9.0.0", "dev-build"):
        message = fs_stats.unknown_version_message(aseg, odd)
        assert message.startswith(f"{aseg}: FreeSurfer version {odd!r} is not one this app knows")


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


# --------------------------------------------------------------------------- writer round trips and
# hand-made damage (testing.freesurfer_outputs renders the layout of the real files above)


# A FreeSurfer 7-style aseg.stats typed for these tests (values invented, layout as mri_segstats
# prints it: '# Measure' lines, TableCol block, '# ColHeaders', fixed-width rows).
HANDWRITTEN_ASEG = """\
# Title Segmentation Statistics 
# 
# generating_program mri_segstats
# cvs_version 7.4.1
# subjectname bert
# BrainVolStatsFixed see surfer.nmr.mgh.harvard.edu/fswiki/BrainVolStatsFixed
# Measure BrainSeg, BrainSegVol, Brain Segmentation Volume, 1100000.500000, mm^3
# Measure lhCortex, lhCortexVol, Left hemisphere cortical gray matter volume, 240000.250000, mm^3
# Measure BrainSegVol-to-eTIV, BrainSegVol-to-eTIV, Ratio of BrainSegVol to eTIV, 0.750000, unitless
# Measure EstimatedTotalIntraCranialVol, eTIV, Estimated Total Intracranial Volume, 1466666.000000, mm^3
# VoxelVolume_mm3 1 
# TableCol  1 ColHeader Index 
# NRows 2 
# NTableCols 10 
# ColHeaders  Index SegId NVoxels Volume_mm3 StructName normMean normStdDev normMin normMax normRange  
  1  10      7300     7300.7  Left-Thalamus                     92.1238     8.3680    32.0000   115.0000    83.0000 
  2  17      4100     4100.9  Left-Hippocampus                  66.8489     7.4816    28.0000    95.0000    67.0000 
"""  # noqa: W291


def abide_volumes(row: pd.Series) -> dict[str, float]:
    return {c: float(row[c]) for c in volume_columns(list(row.index)) if pd.notna(row[c])}


def test_handwritten_fs7_aseg_is_read_like_asegstats2table(tmp_path):
    path = tmp_path / "aseg.stats"
    path.write_text(HANDWRITTEN_ASEG)
    vols = fs_stats.parse_aseg_stats(path)
    assert vols["Left-Thalamus"] == pytest.approx(7300.7)
    assert vols["Left-Hippocampus"] == pytest.approx(4100.9)
    # header measures: second field, except eTIV spelled with the first
    assert vols["BrainSegVol"] == pytest.approx(1100000.5)
    assert vols["lhCortexVol"] == pytest.approx(240000.25)
    assert vols[ETIV] == pytest.approx(1466666.0)
    assert "eTIV" not in vols
    # unitless ratios are not volumes
    assert "BrainSegVol-to-eTIV" not in vols
    stats = fs_stats.parse_stats_file(path)
    assert stats.header["cvs_version"] == "7.4.1"
    assert stats.measure_units["BrainSegVol-to-eTIV"] == "unitless"


@pytest.mark.parametrize("version", ["6.0.0", "7.3.2", "7.4.1"])
def test_writer_then_parser_round_trips_abide_rows(abide_table, tmp_path, version):
    """Rendered ABIDE rows read back as the values asegstats2table/aparcstats2table gave."""
    for pos in (0, 400, 898):
        row = abide_table.iloc[pos]
        volumes = abide_volumes(row)
        subject = tmp_path / version / f"sub-{pos}"
        fs_out.write_subject_stats(subject, volumes, fs_version=version)
        back = fs_stats.read_subject_volumes(subject)
        canon_back = {canonical_region(k): v for k, v in back.items()}
        checked = 0
        for name, value in volumes.items():
            if canonical_region(name) in canon_back:
                # aseg volumes are printed with one decimal, aparc GrayVol as an integer
                assert canon_back[canonical_region(name)] == pytest.approx(value, abs=0.51)
                checked += 1
        # every one of the 101 Neuroharmony regions and eTIV survive the round trip
        for region in ASEG_REGIONS + DK_REGIONS + [ETIV]:
            assert region in canon_back, region
        assert checked >= 101 + 1


def test_fs6_and_fs7_layouts_differ_where_freesurfer_did(abide_table, tmp_path):
    volumes = abide_volumes(abide_table.iloc[0])
    fs_out.write_subject_stats(tmp_path / "fs6", volumes, fs_version="6.0.0")
    fs_out.write_subject_stats(tmp_path / "fs7", volumes, fs_version="7.3.2")
    aseg6 = (tmp_path / "fs6" / "stats" / "aseg.stats").read_text()
    aseg7 = (tmp_path / "fs7" / "stats" / "aseg.stats").read_text()
    assert "Left-Thalamus-Proper" in aseg6 and "Left-Thalamus-Proper" not in aseg7
    assert re.search(r"^\s+\d+\s+10\s+\d+\s+[\d.]+\s+Left-Thalamus\s", aseg7, re.M)
    for aseg in (aseg6, aseg7):  # 6.0 and 7 both say "cerebral" (5.3 said "cortical")
        assert "# Measure lhCerebralWhiteMatter, lhCerebralWhiteMatterVol," in aseg
    assert "$Id: mri_segstats.c,v 1.121" in aseg6
    assert "# cvs_version 7.3.2" in aseg7
    assert "# BrainVolStatsFixed-NotNeeded because voxelvolume=1mm3" in aseg7
    assert "BrainVolStatsFixed" not in aseg6
    # parsed names follow asegstats2table of each version
    assert "Left-Thalamus-Proper" in fs_stats.read_subject_volumes(tmp_path / "fs6")
    assert "Left-Thalamus" in fs_stats.read_subject_volumes(tmp_path / "fs7")


def test_aseg_layout_matches_mri_segstats(abide_table, tmp_path):
    full = abide_volumes(abide_table.iloc[3])
    full.update({"BrainSegVol": 1.2e6, "BrainSegVolNotVent": 1.18e6, "MaskVol": 1.6e6})
    text = fs_out.render_aseg_stats(full, "sub-01", fs_version="7.4.1")
    lines = text.splitlines()
    assert lines[0] == "# Title Segmentation Statistics "
    assert lines[2] == "# generating_program mri_segstats"
    measures = [ln.split(",")[0] for ln in lines if ln.startswith("# Measure")]
    # mri_segstats order: BrainSeg first, eTIV last
    assert measures[0] == "# Measure BrainSeg"
    assert measures[-1] == "# Measure EstimatedTotalIntraCranialVol"
    etiv = next(ln for ln in lines if ln.startswith("# Measure EstimatedTotalIntraCranialVol"))
    assert re.fullmatch(
        r"# Measure EstimatedTotalIntraCranialVol, eTIV, Estimated Total Intracranial Volume, "
        r"\d+\.\d{6}, mm\^3",
        etiv,
    )
    header = next(ln for ln in lines if ln.startswith("# ColHeaders"))
    assert header.split()[2:] == [
        "Index", "SegId", "NVoxels", "Volume_mm3", "StructName", "normMean", "normStdDev",
        "normMin", "normMax", "normRange",
    ]  # fmt: skip
    rows = lines[lines.index(header) + 1 :]
    nrows = int(next(ln for ln in lines if ln.startswith("# NRows")).split()[2])
    assert len(rows) == nrows
    row_re = re.compile(r"^[ \d]{3} [ \d]{3}  [ \d]{8} [ \d.]{10}  \S+\s+( +-?\d+\.\d{4}){5} $")
    for row in rows:
        assert row_re.match(row), row
    # SegIds ascend as in the ASegStatsLUT order FreeSurfer writes
    seg_ids = [int(r.split()[1]) for r in rows]
    assert seg_ids == sorted(seg_ids)
    assert "synthetic" in text  # honest about not being FreeSurfer output


def test_aparc_layout_matches_mris_anatomical_stats(abide_table, tmp_path):
    vols = abide_volumes(abide_table.iloc[5])
    text = fs_out.render_aparc_stats(vols, "rh", "sub-01", fs_version="7.3.2")
    lines = text.splitlines()
    assert lines[0] == "# Table of FreeSurfer cortical parcellation anatomical statistics "
    assert "# hemi rh" in lines
    header = next(ln for ln in lines if ln.startswith("# ColHeaders"))
    assert header == (
        "# ColHeaders StructName NumVert SurfArea GrayVol ThickAvg ThickStd MeanCurv GausCurv "
        "FoldInd CurvInd"
    )
    rows = lines[lines.index(header) + 1 :]
    assert [r.split()[0] for r in rows] == DK_LABELS
    for row, label in zip(rows, DK_LABELS, strict=True):
        # mris_anatomical_stats: name left-justified in 40 characters, numbers right-aligned
        assert len(row) == 109 and row.startswith(f"{label:<40s}")
        assert int(row.split()[3]) == round(vols[f"rh_{label}_volume"])


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(MissingInputError, match=r"aseg\.stats") as err:
        fs_stats.read_subject_volumes(tmp_path / "sub-01")
    assert "--freesurfer-dir" in str(err.value)
    assert err.value.exit_code == 66


def _write_fixture_subject(abide_table, tmp_path) -> Path:
    subject = tmp_path / "sub-01"
    fs_out.write_subject_stats(subject, abide_volumes(abide_table.iloc[0]))
    return subject


def test_truncated_mid_row_names_file_and_line(abide_table, tmp_path):
    subject = _write_fixture_subject(abide_table, tmp_path)
    aseg = subject / "stats" / "aseg.stats"
    text = aseg.read_text()
    cut = text[: text.rindex("Right-Hippocampus") + 5]
    aseg.write_text(cut)
    n_lines = len(cut.splitlines())
    with pytest.raises(DataError) as err:
        fs_stats.read_subject_volumes(subject)
    assert str(aseg) in str(err.value)
    assert f"line {n_lines}" in str(err.value)
    assert "truncated" in str(err.value)


def test_truncated_at_a_line_boundary_is_caught_by_nrows(abide_table, tmp_path):
    subject = _write_fixture_subject(abide_table, tmp_path)
    aseg = subject / "stats" / "aseg.stats"
    lines = aseg.read_text().splitlines(keepends=True)
    aseg.write_text("".join(lines[:-10]))
    with pytest.raises(DataError, match="NRows 45 but the table has 35 rows"):
        fs_stats.parse_aseg_stats(aseg)


def test_header_only_file_is_truncated(abide_table, tmp_path):
    subject = _write_fixture_subject(abide_table, tmp_path)
    aseg = subject / "stats" / "aseg.stats"
    text = aseg.read_text()
    aseg.write_text(text[: text.index("# TableCol")])
    with pytest.raises(DataError, match="no '# ColHeaders' line"):
        fs_stats.parse_aseg_stats(aseg)
    aseg.write_text("")
    with pytest.raises(DataError, match="empty"):
        fs_stats.parse_aseg_stats(aseg)


def test_aparc_cut_between_rows_lists_missing_regions(abide_table, tmp_path):
    subject = _write_fixture_subject(abide_table, tmp_path)
    lh = subject / "stats" / "lh.aparc.stats"
    lines = lh.read_text().splitlines(keepends=True)
    lh.write_text("".join(lines[:-3]))
    with pytest.raises(DataError) as err:
        fs_stats.read_subject_volumes(subject)
    msg = str(err.value)
    assert str(lh) in msg and "3 of the 34 Desikan-Killiany" in msg
    assert "temporalpole" in msg and "insula" in msg


def test_non_numeric_value_names_line_and_column(abide_table, tmp_path):
    subject = _write_fixture_subject(abide_table, tmp_path)
    rh = subject / "stats" / "rh.aparc.stats"
    lines = rh.read_text().splitlines(keepends=True)
    idx = next(i for i, ln in enumerate(lines) if ln.startswith("insula"))
    fields = lines[idx].split()
    fields[3] = "NaNx"
    lines[idx] = " ".join(fields) + "\n"
    rh.write_text("".join(lines))
    with pytest.raises(DataError, match=rf"line {idx + 1}: column 'GrayVol'"):
        fs_stats.parse_aparc_stats(rh)


def test_canonical_volumes_agree_with_table_values(abide_table, tmp_path):
    """Volumes parsed from rendered files equal the table's (asegstats2table) values."""
    row = abide_table.iloc[10]
    fs_out.write_subject_stats(tmp_path / "s", abide_volumes(row), fs_version="6.0.0")
    parsed = fs_stats.read_subject_volumes(tmp_path / "s")
    for col in ("Left-Hippocampus", "lh_superiorfrontal_volume", ETIV, "Left-Thalamus-Proper"):
        assert np.isclose(parsed[col], float(row[col]), atol=0.051)


def _layout(text: str) -> tuple[list[str], list[str]]:
    """What a FreeSurfer file looks like apart from its numbers: the ``# Measure`` lines in
    mm^3 (the volumes the writer is given) without their value, and the column headers."""
    measures = [re.sub(r", [-\d.]+, (\S+)$", r", <v>, \1", ln) for ln in text.splitlines()
                if ln.startswith("# Measure ") and ln.endswith("mm^3")]  # fmt: skip
    columns = next(ln for ln in text.splitlines() if ln.startswith("# ColHeaders")).split()[2:]
    return measures, columns


@pytest.mark.parametrize(
    ("subject", "version"),
    [("freesurfer/6.0/nfmrix-sub-01", "6.0.0"), ("freesurfer/7.4.1/nimh-dasb-sub-01", "7.4.1")],
)
def test_writer_renders_the_layout_of_the_real_files(subject, version, tmp_path):
    """Fed a real subject's own volumes, the fake-file writer prints that version's header
    measures (names, descriptions, units, order), table columns and structure names."""
    real = REAL / subject / "stats"
    volumes = fs_stats.read_subject_volumes(real.parent)
    fs_out.write_subject_stats(tmp_path / "s", volumes, fs_version=version)
    for name in ("aseg.stats", "lh.aparc.stats"):
        real_text = (real / name).read_text()
        fake_text = (tmp_path / "s" / "stats" / name).read_text()
        real_measures, real_columns = _layout(real_text)
        fake_measures, fake_columns = _layout(fake_text)
        if "-noglobal" in real_text:  # recon-all run with -noglobal: no whole-brain measures
            real_measures = fake_measures = []
        if name == "lh.aparc.stats":  # FreeSurfer 6's missing comma is not reproduced
            real_measures = [
                m.replace("CortexVol Total", "CortexVol, Total") for m in real_measures
            ]
            real_measures = [m for m in real_measures if not m.startswith("# Measure Cortex, ")
                             or "CortexVol" in m]  # fmt: skip
            fake_measures = [m for m in fake_measures if not m.startswith("# Measure Cortex, ")
                             or "CortexVol" in m]  # fmt: skip
        assert fake_measures == real_measures, name
        assert fake_columns == real_columns, name
    real_rows = [r[4] for r in _text_rows((real / "aseg.stats").read_text())]
    fake_rows = [r[4] for r in _text_rows((tmp_path / "s/stats/aseg.stats").read_text())]
    assert fake_rows == real_rows


def test_fastsurfer_with_fsaparc_is_read_on_its_desikan_files(tmp_path):
    subject = tmp_path / "sub-01"
    shutil.copytree(REAL / "fastsurfer/2.x/copy-assembled", subject)
    for hemi in ("lh", "rh"):  # what --fsaparc adds: FreeSurfer's own DK parcellation stats
        src = REAL / f"freesurfer/7.4.1/nimh-dasb-sub-01/stats/{hemi}.aparc.stats"
        shutil.copy(src, subject / "stats" / src.name)
    result = fs_stats.read_subject(subject)
    assert (result.pipeline, result.cortical_atlas) == ("FastSurfer", "DK")
    assert set(DK_REGIONS) <= set(fs_stats.read_subject_volumes(subject))
