"""FreeSurfer stats: parser, writer (layout of real FreeSurfer 6 / 7 files), license, recon-all."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neuroharmony_bids.errors import DataError, MissingInputError, UsageError
from neuroharmony_bids.harmonize.features import (
    ASEG_REGIONS,
    DK_LABELS,
    DK_REGIONS,
    ETIV,
    canonical_region,
)
from neuroharmony_bids.interfaces import freesurfer as fs
from neuroharmony_bids.io import freesurfer_stats as fs_stats
from neuroharmony_bids.testing import freesurfer_outputs as fs_out
from neuroharmony_bids.testing import tiny_t1w_bytes, volume_columns

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
    assert "# Measure lhCorticalWhiteMatter, lhCorticalWhiteMatterVol," in aseg6
    assert "# Measure lhCerebralWhiteMatter, lhCerebralWhiteMatterVol," in aseg7
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


def test_license_lookup_order(tmp_path):
    note = "placeholder used to test the lookup order; not a FreeSurfer license\n"
    flag = tmp_path / "given.txt"
    env_file = tmp_path / "from_env.txt"
    home = tmp_path / "fshome"
    home.mkdir()
    for p in (flag, env_file, home / "license.txt"):
        p.write_text(note)
    env = {"FS_LICENSE": str(env_file), "FREESURFER_HOME": str(home)}
    assert fs.find_fs_license(flag, env) == flag.resolve()
    assert fs.find_fs_license(None, env) == env_file.resolve()
    assert (
        fs.find_fs_license(None, {"FREESURFER_HOME": str(home)}) == (home / "license.txt").resolve()
    )
    assert fs.find_fs_license(None, {}) is None
    with pytest.raises(UsageError, match="--fs-license-file"):
        fs.find_fs_license(tmp_path / "absent.txt", env)
    with pytest.raises(UsageError, match="FS_LICENSE"):
        fs.find_fs_license(None, {"FS_LICENSE": str(tmp_path / "absent.txt")})


def test_recon_all_status_explains_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "recon-all is not on PATH" in fs.recon_all_status(None)
    exe = tmp_path / "recon-all"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    assert "no FreeSurfer license" in fs.recon_all_status(None)
    assert fs.recon_all_status(tmp_path / "license-path-only") is None


def test_recon_all_node_command_line(tmp_path):
    t1w = tmp_path / "sub-01_T1w.nii.gz"
    t1w.write_bytes(tiny_t1w_bytes())
    node = fs.init_recon_all_node(
        "recon", t1w, "sub-01", tmp_path / "subjects", tmp_path / "license.txt", omp_nthreads=3
    )
    cmd = node.interface.cmdline
    assert cmd.startswith("recon-all -all")
    assert f"-i {t1w}" in cmd and "-subjid sub-01" in cmd
    assert f"-sd {tmp_path / 'subjects'}" in cmd and "-openmp 3" in cmd
    assert node.interface.inputs.environ["FS_LICENSE"] == str(tmp_path / "license.txt")
    assert node.n_procs == 3


def test_canonical_volumes_agree_with_table_values(abide_table, tmp_path):
    """Volumes parsed from rendered files equal the table's (asegstats2table) values."""
    row = abide_table.iloc[10]
    fs_out.write_subject_stats(tmp_path / "s", abide_volumes(row), fs_version="6.0.0")
    parsed = fs_stats.read_subject_volumes(tmp_path / "s")
    for col in ("Left-Hippocampus", "lh_superiorfrontal_volume", ETIV, "Left-Thalamus-Proper"):
        assert np.isclose(parsed[col], float(row[col]), atol=0.051)
