"""Fake FreeSurfer stats files for tests, benchmarks and the example (never for real data).

Renders ``aseg.stats`` and ``?h.aparc.stats`` in recon-all's layout (checked against real
FreeSurfer 6 and 7.4.1 files) so tests and benchmarks can run end to end without FreeSurfer;
every file written says it is synthetic in a comment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from neuroharmony_bids.atomic import write_text
from neuroharmony_bids.harmonize.features import DK_LABELS, canonical_region
from neuroharmony_bids.io.freesurfer_stats import (
    APARC_BRAIN_MEASURES,
    APARC_COLUMNS,
    ASEG_TABLE,
    MEASURE_FIRST_FIELD,
    stats_paths,
)

# (first field, second field = column name, description, units) of aseg.stats header measures.
ASEG_MEASURES_FS7: list[tuple[str, str, str, str]] = [
    ("BrainSeg", "BrainSegVol", "Brain Segmentation Volume", "mm^3"),
    ("BrainSegNotVent", "BrainSegVolNotVent", "Brain Segmentation Volume Without Ventricles", "mm^3"),
    ("VentricleChoroidVol", "VentricleChoroidVol", "Volume of ventricles and choroid plexus", "mm^3"),
    ("lhCortex", "lhCortexVol", "Left hemisphere cortical gray matter volume", "mm^3"),
    ("rhCortex", "rhCortexVol", "Right hemisphere cortical gray matter volume", "mm^3"),
    ("Cortex", "CortexVol", "Total cortical gray matter volume", "mm^3"),
    ("lhCerebralWhiteMatter", "lhCerebralWhiteMatterVol", "Left hemisphere cerebral white matter volume", "mm^3"),
    ("rhCerebralWhiteMatter", "rhCerebralWhiteMatterVol", "Right hemisphere cerebral white matter volume", "mm^3"),
    ("CerebralWhiteMatter", "CerebralWhiteMatterVol", "Total cerebral white matter volume", "mm^3"),
    ("SubCortGray", "SubCortGrayVol", "Subcortical gray matter volume", "mm^3"),
    ("TotalGray", "TotalGrayVol", "Total gray matter volume", "mm^3"),
    ("SupraTentorial", "SupraTentorialVol", "Supratentorial volume", "mm^3"),
    ("SupraTentorialNotVent", "SupraTentorialVolNotVent", "Supratentorial volume", "mm^3"),
    ("Mask", "MaskVol", "Mask Volume", "mm^3"),
    ("BrainSegVol-to-eTIV", "BrainSegVol-to-eTIV", "Ratio of BrainSegVol to eTIV", "unitless"),
    ("MaskVol-to-eTIV", "MaskVol-to-eTIV", "Ratio of MaskVol to eTIV", "unitless"),
    ("lhSurfaceHoles", "lhSurfaceHoles", "Number of defect holes in lh surfaces prior to fixing", "unitless"),
    ("rhSurfaceHoles", "rhSurfaceHoles", "Number of defect holes in rh surfaces prior to fixing", "unitless"),
    ("SurfaceHoles", "SurfaceHoles", "Total number of defect holes in surfaces prior to fixing", "unitless"),
    ("EstimatedTotalIntraCranialVol", "eTIV", "Estimated Total Intracranial Volume", "mm^3"),
]  # fmt: skip

# FreeSurfer 6 (mri_segstats v1.121): FreeSurfer 7's measures plus two (BrainSegNotVentSurf,
# SupraTentorialNotVentVox); white matter is "cerebral" as in 7 (5.3 wrote "cortical").
_FS6_EXTRA_AFTER: dict[str, tuple[str, str, str, str]] = {
    "BrainSegNotVent": ("BrainSegNotVentSurf", "BrainSegVolNotVentSurf", "Brain Segmentation Volume Without Ventricles from Surf", "mm^3"),
    "SupraTentorialNotVent": ("SupraTentorialNotVentVox", "SupraTentorialVolNotVentVox", "Supratentorial volume voxel count", "mm^3"),
}  # fmt: skip
ASEG_MEASURES_FS6: list[tuple[str, str, str, str]] = [
    m
    for measure in ASEG_MEASURES_FS7
    for m in (measure, _FS6_EXTRA_AFTER.get(measure[0]))
    if m is not None
]

#: FreeSurfer 7 → 6 spelling of the aseg rows that changed.
_FS6_ROW_NAMES = {
    "Left-Thalamus": "Left-Thalamus-Proper",
    "Right-Thalamus": "Right-Thalamus-Proper",
}

SYNTHETIC_NOTE = (
    "# synthetic_data written by neuroharmony_bids.testing.freesurfer_outputs.write_subject_stats "
    "in the FreeSurfer {version} layout; not FreeSurfer output"
)


def _is_fs6(fs_version: str) -> bool:
    return fs_version.split(".")[0] in ("5", "6")


def _cvs_versions(fs_version: str) -> tuple[str, str, str]:
    """(mri_segstats, mris_anatomical_stats, mrisurf.c) version strings as FreeSurfer prints them."""
    if _is_fs6(fs_version):
        return (
            "$Id: mri_segstats.c,v 1.121 2016/05/31 17:27:11 greve Exp $",
            "$Id: mris_anatomical_stats.c,v 1.79 2016/03/14 15:15:34 greve Exp $",
            "$Id: mrisurf.c,v 1.781.2.6 2016/12/27 16:47:14 zkaufman Exp $",
        )
    return fs_version, fs_version, fs_version


def _canonical_volumes(volumes: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in volumes.items():
        out[canonical_region(str(key))] = float(value)
    return out


def _measure_lookup(vols: Mapping[str, float], column: str) -> float | None:
    name = MEASURE_FIRST_FIELD.get(column, column)
    for candidate in (name, canonical_region(name)):
        if candidate in vols:
            return vols[candidate]
    return None


def _measure_lines(
    spec: Sequence[tuple[str, str, str, str]], vols: Mapping[str, float]
) -> list[str]:
    lines = []
    for first, second, desc, units in spec:
        value = _measure_lookup(vols, second)
        if value is None:
            continue
        if "Holes" in first:
            shown = str(int(round(value)))
        else:
            shown = f"{value:f}"
        lines.append(f"# Measure {first}, {second}, {desc}, {shown}, {units}")
    return lines


def render_aseg_stats(
    volumes: Mapping[str, float],
    subject: str,
    fs_version: str = "7.3.2",
    subjects_dir: str = "/output/sourcedata/freesurfer",
    intensities: Mapping[str, Sequence[float]] | None = None,
) -> str:
    """``aseg.stats`` text in recon-all's layout for ``fs_version`` (6.x or 7.x).

    Only structures and measures present in ``volumes`` are written (nothing is invented);
    intensity columns default to 0 unless ``intensities`` gives (mean, std, min, max, range).
    """
    vols = _canonical_volumes(volumes)
    fs6 = _is_fs6(fs_version)
    segstats_v, _, _ = _cvs_versions(fs_version)
    home = "/opt/freesurfer"
    head = [
        "# Title Segmentation Statistics ",
        "# ",
        "# generating_program mri_segstats",
        f"# cvs_version {segstats_v}",
        "# cmdline mri_segstats --seed 1234 --seg mri/aseg.mgz --sum stats/aseg.stats "
        "--pv mri/norm.mgz --empty --brainmask mri/brainmask.mgz --brain-vol-from-seg "
        "--excludeid 0 --excl-ctxgmwm --supratent --subcortgray --in mri/norm.mgz "
        "--in-intensity-name norm --in-intensity-units MR --etiv --surf-wm-vol --surf-ctx-vol "
        f"--totalgray --euler --ctab {home}/ASegStatsLUT.txt --subject {subject} ",
        "# sysname  Linux",
        "# hostname neuroharmony",
        "# machine  x86_64",
        "# user     neuroharmony",
        SYNTHETIC_NOTE.format(version=fs_version),
        "# anatomy_type volume",
        "# ",
        f"# SUBJECTS_DIR {subjects_dir}",
        f"# subjectname {subject}",
    ]
    if not fs6:
        head.append("# BrainVolStatsFixed-NotNeeded because voxelvolume=1mm3")
    head += _measure_lines(ASEG_MEASURES_FS6 if fs6 else ASEG_MEASURES_FS7, vols)
    stamp = "2020/01/01 00:00:00"
    head += [
        "# SegVolFile mri/aseg.mgz ",
        f"# SegVolFileTimeStamp  {stamp} ",
        f"# ColorTable {home}/ASegStatsLUT.txt ",
        f"# ColorTableTimeStamp {stamp} ",
        "# InVolFile  mri/norm.mgz ",
        f"# InVolFileTimeStamp  {stamp} ",
        "# InVolFrame 0 ",
        "# PVVolFile  mri/norm.mgz ",
        f"# PVVolFileTimeStamp  {stamp} ",
        "# Excluding Cortical Gray and White Matter",
        "# ExcludeSegId 0 2 3 41 42 ",
        "# VoxelVolume_mm3 1 ",
    ]
    cols = [
        ("Index ", "Index ", "NA "), ("SegId ", "Segmentation Id", "NA"),
        ("NVoxels ", "Number of Voxels", "unitless"), ("Volume_mm3", "Volume", "mm^3"),
        ("StructName", "Structure Name", "NA"), ("normMean ", "Intensity normMean", "MR"),
        ("normStdDev", "Intensity normStdDev", "MR"), ("normMin", "Intensity normMin", "MR"),
        ("normMax", "Intensity normMax", "MR"), ("normRange", "Intensity normRange", "MR"),
    ]  # fmt: skip
    for i, (hdr, fname, units) in enumerate(cols, start=1):
        head += [
            f"# TableCol {i:2d} ColHeader {hdr}",
            f"# TableCol {i:2d} FieldName {fname}",
            f"# TableCol {i:2d} Units     {units}",
        ]
    rows = []
    for seg_id, name in ASEG_TABLE:
        if name not in vols:
            continue
        vol = vols[name]
        shown_name = _FS6_ROW_NAMES.get(name, name) if fs6 else name
        inten = list((intensities or {}).get(name, (0.0, 0.0, 0.0, 0.0, 0.0)))
        rows.append(
            f"{len(rows) + 1:3d} {seg_id:3d}  {int(round(vol)):8d} {vol:10.1f}  "
            f"{shown_name:<30s} {inten[0]:10.4f} {inten[1]:10.4f} {inten[2]:10.4f} "
            f"{inten[3]:10.4f} {inten[4]:10.4f} "
        )
    head += [
        f"# NRows {len(rows)} ",
        f"# NTableCols {len(cols)} ",
        "# ColHeaders  Index SegId NVoxels Volume_mm3 StructName normMean normStdDev normMin "
        "normMax normRange  ",
    ]
    return "\n".join(head + rows) + "\n"


def render_aparc_stats(
    volumes: Mapping[str, float],
    hemi: str,
    subject: str,
    fs_version: str = "7.3.2",
    subjects_dir: str = "/output/sourcedata/freesurfer",
    surface: Mapping[str, Sequence[float]] | None = None,
) -> str:
    """``{hemi}.aparc.stats`` text in mris_anatomical_stats' layout (GrayVol from ``volumes``).

    ``surface`` optionally gives per label (NumVert, SurfArea, ThickAvg, ThickStd, MeanCurv,
    GausCurv, FoldInd, CurvInd); otherwise those columns are 0.
    """
    vols = _canonical_volumes(volumes)
    fs6 = _is_fs6(fs_version)
    _, anat_v, surf_v = _cvs_versions(fs_version)
    head = [
        "# Table of FreeSurfer cortical parcellation anatomical statistics ",
        "# ",
        "# CreationTime 2020/01/01-00:00:00-GMT",
        "# generating_program mris_anatomical_stats",
        f"# cvs_version {anat_v}",
        f"# mrisurf.c-cvs_version {surf_v}",
        f"# cmdline mris_anatomical_stats -th3 -mgz -cortex ../label/{hemi}.cortex.label "
        f"-f ../stats/{hemi}.aparc.stats -b -a ../label/{hemi}.aparc.annot "
        f"-c ../label/aparc.annot.ctab {subject} {hemi} white ",
        "# sysname  Linux",
        "# hostname neuroharmony",
        "# machine  x86_64",
        "# user     neuroharmony",
        SYNTHETIC_NOTE.format(version=fs_version),
        "# ",
        f"# SUBJECTS_DIR {subjects_dir}",
        "# anatomy_type surface",
        f"# subjectname {subject}",
        f"# hemi {hemi}",
        f"# AnnotationFile ../label/{hemi}.aparc.annot",
        "# AnnotationFileTimeStamp 2020/01/01 00:00:00",
    ]
    labels = [lab for lab in DK_LABELS if f"{hemi}_{lab}_volume" in vols]
    surf = surface or {}
    numvert = sum(int(surf.get(lab, (0,))[0]) for lab in labels)
    area = sum(float(surf.get(lab, (0, 0))[1]) for lab in labels)
    head += [
        f"# Measure Cortex, NumVert, Number of Vertices, {numvert}, unitless",
        f"# Measure Cortex, WhiteSurfArea, White Surface Total Area, {area:g}, mm^2",
        f"# Measure Cortex, MeanThickness, Mean Thickness, {_mean_thickness(surf, labels):g}, mm",
    ]
    if not fs6:
        head.append("# BrainVolStatsFixed-NotNeeded because voxelvolume=1mm3")
    head += _measure_lines(APARC_BRAIN_MEASURES, vols)
    head.append(f"# NTableCols {len(APARC_COLUMNS)}")
    for i, (hdr, fname, units) in enumerate(APARC_COLUMNS, start=1):
        head += [
            f"# TableCol {i:2d} ColHeader {hdr}",
            f"# TableCol {i:2d} FieldName {fname}",
            f"# TableCol {i:2d} Units     {units}",
        ]
    head.append("# ColHeaders " + " ".join(c[0] for c in APARC_COLUMNS))
    rows = []
    for lab in labels:
        nv, sa, ta, ts, mc, gc, fi, ci = (list(surf.get(lab, ())) + [0] * 8)[:8]
        rows.append(
            f"{lab:<40s}{int(nv):5d}  {int(round(float(sa))):5d}  "
            f"{int(round(vols[f'{hemi}_{lab}_volume'])):5d}  {float(ta):5.3f} {float(ts):5.3f}  "
            f"{float(mc):8.3f}  {float(gc):8.3f}  {int(fi):7d}  {float(ci):6.1f}"
        )
    return "\n".join(head + rows) + "\n"


def _mean_thickness(surf: Mapping[str, Sequence[float]], labels: Sequence[str]) -> float:
    vals = [float(surf[lab][2]) for lab in labels if lab in surf and len(surf[lab]) > 2]
    return sum(vals) / len(vals) if vals else 0.0


def write_subject_stats(
    subject_dir: str | os.PathLike,
    volumes: Mapping[str, float],
    fs_version: str = "7.3.2",
    subject: str | None = None,
    intensities: Mapping[str, Sequence[float]] | None = None,
    surface: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
) -> dict[str, Path]:
    """Write ``stats/aseg.stats``, ``lh.aparc.stats`` and ``rh.aparc.stats`` for one subject.

    ``volumes`` uses asegstats2table names (FreeSurfer 6 or 7 spelling; the files get the
    spelling of ``fs_version``). For tests, benchmarks and example data: the files carry a
    comment saying they are synthetic. Files are written atomically.
    """
    subject_dir = Path(subject_dir)
    subject = subject or subject_dir.name
    sdir = str(subject_dir.parent)
    paths = stats_paths(subject_dir)
    write_text(
        paths["aseg"],
        render_aseg_stats(volumes, subject, fs_version, sdir, intensities=intensities),
    )
    for hemi in ("lh", "rh"):
        write_text(
            paths[hemi],
            render_aparc_stats(
                volumes, hemi, subject, fs_version, sdir, surface=(surface or {}).get(hemi)
            ),
        )
    return paths


__all__ = ["SYNTHETIC_NOTE", "render_aparc_stats", "render_aseg_stats", "write_subject_stats"]
