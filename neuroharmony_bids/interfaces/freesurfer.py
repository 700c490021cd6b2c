"""FreeSurfer: read ``stats/aseg.stats`` and ``stats/?h.aparc.stats``, write them, run recon-all.

Why our own parser: the ``freesurfer-stats`` package (1.2.1, the best-kept one on PyPI) pins
``pandas<2``, which conflicts with pybids 0.22 (``pandas>=2``), and it only reads cortical
parcellation files, not ``aseg.stats``. The format is simple and stable (FreeSurfer 5.3 to 7.4):
``# Measure`` header lines, a ``# ColHeaders`` line, then whitespace-separated rows.

Names follow ``asegstats2table`` / ``aparcstats2table`` so that tables made by FreeSurfer's own
tools and by this module line up: aseg structures by ``StructName`` (``Left-Hippocampus``),
header measures by their second field (``BrainSegVol``, ``lhCortexVol``) except that ``eTIV`` and
``ICV`` are spelled ``EstimatedTotalIntraCranialVol`` and ``IntraCranialVol``, and cortical
volumes as ``lh_superiorfrontal_volume``.

The writer renders the same layout (checked against real FreeSurfer 6 and 7.4.1 files) so tests
and benchmarks can run end to end without FreeSurfer; every file it writes says so in a comment.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from neuroharmony_bids._version import __version__
from neuroharmony_bids.atomic import write_text
from neuroharmony_bids.errors import DataError, MissingInputError, UsageError
from neuroharmony_bids.harmonize.features import DK_LABELS, ETIV, canonical_region

#: The container image that has FreeSurfer (and MRIQC) installed.
CONTAINER_IMAGE = f"ghcr.io/neuroharmony-bids/neuroharmony-bids:{__version__}"

#: aseg.stats rows written by recon-all (SegId, FreeSurfer 7 name), in file order.
ASEG_TABLE: list[tuple[int, str]] = [
    (4, "Left-Lateral-Ventricle"), (5, "Left-Inf-Lat-Vent"),
    (7, "Left-Cerebellum-White-Matter"), (8, "Left-Cerebellum-Cortex"), (10, "Left-Thalamus"),
    (11, "Left-Caudate"), (12, "Left-Putamen"), (13, "Left-Pallidum"), (14, "3rd-Ventricle"),
    (15, "4th-Ventricle"), (16, "Brain-Stem"), (17, "Left-Hippocampus"), (18, "Left-Amygdala"),
    (24, "CSF"), (26, "Left-Accumbens-area"), (28, "Left-VentralDC"), (30, "Left-vessel"),
    (31, "Left-choroid-plexus"), (43, "Right-Lateral-Ventricle"), (44, "Right-Inf-Lat-Vent"),
    (46, "Right-Cerebellum-White-Matter"), (47, "Right-Cerebellum-Cortex"),
    (49, "Right-Thalamus"), (50, "Right-Caudate"), (51, "Right-Putamen"),
    (52, "Right-Pallidum"), (53, "Right-Hippocampus"), (54, "Right-Amygdala"),
    (58, "Right-Accumbens-area"), (60, "Right-VentralDC"), (62, "Right-vessel"),
    (63, "Right-choroid-plexus"), (72, "5th-Ventricle"), (77, "WM-hypointensities"),
    (78, "Left-WM-hypointensities"), (79, "Right-WM-hypointensities"),
    (80, "non-WM-hypointensities"), (81, "Left-non-WM-hypointensities"),
    (82, "Right-non-WM-hypointensities"), (85, "Optic-Chiasm"), (251, "CC_Posterior"),
    (252, "CC_Mid_Posterior"), (253, "CC_Central"), (254, "CC_Mid_Anterior"),
    (255, "CC_Anterior"),
]  # fmt: skip

#: FreeSurfer 7 → 6 spelling of the aseg rows that changed.
_FS6_ROW_NAMES = {
    "Left-Thalamus": "Left-Thalamus-Proper",
    "Right-Thalamus": "Right-Thalamus-Proper",
}

# (first field, second field = column name, description, units) of aseg.stats header measures.
_ASEG_MEASURES_FS7: list[tuple[str, str, str, str]] = [
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

# FreeSurfer 6 (mri_segstats v1.121): "cortical" white matter, two extra measures.
_ASEG_MEASURES_FS6: list[tuple[str, str, str, str]] = [
    ("BrainSeg", "BrainSegVol", "Brain Segmentation Volume", "mm^3"),
    ("BrainSegNotVent", "BrainSegVolNotVent", "Brain Segmentation Volume Without Ventricles", "mm^3"),
    ("BrainSegNotVentSurf", "BrainSegVolNotVentSurf", "Brain Segmentation Volume Without Ventricles from Surf", "mm^3"),
    ("VentricleChoroidVol", "VentricleChoroidVol", "Volume of ventricles and choroid plexus", "mm^3"),
    ("lhCortex", "lhCortexVol", "Left hemisphere cortical gray matter volume", "mm^3"),
    ("rhCortex", "rhCortexVol", "Right hemisphere cortical gray matter volume", "mm^3"),
    ("Cortex", "CortexVol", "Total cortical gray matter volume", "mm^3"),
    ("lhCorticalWhiteMatter", "lhCorticalWhiteMatterVol", "Left hemisphere cortical white matter volume", "mm^3"),
    ("rhCorticalWhiteMatter", "rhCorticalWhiteMatterVol", "Right hemisphere cortical white matter volume", "mm^3"),
    ("CorticalWhiteMatter", "CorticalWhiteMatterVol", "Total cortical white matter volume", "mm^3"),
    ("SubCortGray", "SubCortGrayVol", "Subcortical gray matter volume", "mm^3"),
    ("TotalGray", "TotalGrayVol", "Total gray matter volume", "mm^3"),
    ("SupraTentorial", "SupraTentorialVol", "Supratentorial volume", "mm^3"),
    ("SupraTentorialNotVent", "SupraTentorialVolNotVent", "Supratentorial volume", "mm^3"),
    ("SupraTentorialNotVentVox", "SupraTentorialVolNotVentVox", "Supratentorial volume voxel count", "mm^3"),
    ("Mask", "MaskVol", "Mask Volume", "mm^3"),
    ("BrainSegVol-to-eTIV", "BrainSegVol-to-eTIV", "Ratio of BrainSegVol to eTIV", "unitless"),
    ("MaskVol-to-eTIV", "MaskVol-to-eTIV", "Ratio of MaskVol to eTIV", "unitless"),
    ("lhSurfaceHoles", "lhSurfaceHoles", "Number of defect holes in lh surfaces prior to fixing", "unitless"),
    ("rhSurfaceHoles", "rhSurfaceHoles", "Number of defect holes in rh surfaces prior to fixing", "unitless"),
    ("SurfaceHoles", "SurfaceHoles", "Total number of defect holes in surfaces prior to fixing", "unitless"),
    ("EstimatedTotalIntraCranialVol", "eTIV", "Estimated Total Intracranial Volume", "mm^3"),
]  # fmt: skip

# Whole-brain measures repeated in the header of ?h.aparc.stats.
_APARC_BRAIN_MEASURES = [
    ("BrainSeg", "BrainSegVol", "Brain Segmentation Volume", "mm^3"),
    ("BrainSegNotVent", "BrainSegVolNotVent", "Brain Segmentation Volume Without Ventricles", "mm^3"),
    ("BrainSegNotVentSurf", "BrainSegVolNotVentSurf", "Brain Segmentation Volume Without Ventricles from Surf", "mm^3"),
    ("Cortex", "CortexVol", "Total cortical gray matter volume", "mm^3"),
    ("SupraTentorial", "SupraTentorialVol", "Supratentorial volume", "mm^3"),
    ("SupraTentorialNotVent", "SupraTentorialVolNotVent", "Supratentorial volume", "mm^3"),
    ("EstimatedTotalIntraCranialVol", "eTIV", "Estimated Total Intracranial Volume", "mm^3"),
]  # fmt: skip

_APARC_COLUMNS = [
    ("StructName", "Structure Name", "NA"),
    ("NumVert", "Number of Vertices", "unitless"),
    ("SurfArea", "Surface Area", "mm^2"),
    ("GrayVol", "Gray Matter Volume", "mm^3"),
    ("ThickAvg", "Average Thickness", "mm"),
    ("ThickStd", "Thickness StdDev", "mm"),
    ("MeanCurv", "Integrated Rectified Mean Curvature", "mm^-1"),
    ("GausCurv", "Integrated Rectified Gaussian Curvature", "mm^-2"),
    ("FoldInd", "Folding Index", "unitless"),
    ("CurvInd", "Intrinsic Curvature Index", "unitless"),
]

#: Header measure names that asegstats2table spells with the first field instead of the second.
_MEASURE_FIRST_FIELD = {"eTIV": ETIV, "ICV": "IntraCranialVol"}

SYNTHETIC_NOTE = (
    "# synthetic_data written by neuroharmony_bids.interfaces.freesurfer.write_subject_stats "
    "in the FreeSurfer {version} layout; not FreeSurfer output"
)

_FIX_HINT = (
    "Re-run FreeSurfer for this subject (recon-all -autorecon3 recreates the stats files), "
    "or point --freesurfer-dir at a complete FreeSurfer SUBJECTS_DIR."
)


@dataclass
class StatsFile:
    """A parsed FreeSurfer ``.stats`` file: header fields, measures and the table."""

    path: Path
    header: dict[str, str] = field(default_factory=dict)
    measures: dict[str, float] = field(default_factory=dict)
    measure_units: dict[str, str] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    row_lines: list[int] = field(default_factory=list)

    def column(self, name: str) -> int:
        """Index of a table column, or a DataError naming the file."""
        try:
            return self.columns.index(name)
        except ValueError:
            raise DataError(
                f"{self.path}: the table has no {name!r} column (ColHeaders: "
                f"{' '.join(self.columns)}). Is this a FreeSurfer {self.path.name} file? "
                f"{_FIX_HINT}"
            ) from None


def _measure_name(first: str, second: str) -> str:
    return _MEASURE_FIRST_FIELD.get(second, second) if second else first


def parse_stats_file(path: str | os.PathLike) -> StatsFile:
    """Parse any FreeSurfer ``.stats`` table (aseg, aparc, wmparc): header, measures, rows."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise MissingInputError(f"FreeSurfer stats file not found: {path}. {_FIX_HINT}") from None
    except OSError as exc:
        raise MissingInputError(f"cannot read FreeSurfer stats file {path}: {exc}") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty (truncated while being written?). {_FIX_HINT}")
    out = StatsFile(path=path)
    declared_rows: int | None = None
    lines = text.splitlines()
    for lineno, line in enumerate(lines, start=1):
        if line.startswith("#"):
            body = line[1:].strip()
            if not body:
                continue
            key, _, rest = body.partition(" ")
            rest = rest.strip()
            if key == "Measure":
                parts = [p.strip() for p in rest.split(",")]
                if len(parts) < 5:
                    raise DataError(
                        f"{path}, line {lineno}: malformed '# Measure' line {line!r} "
                        f"(expected 'name, field, description, value, units'). {_FIX_HINT}"
                    )
                name = _measure_name(parts[0], parts[1])
                try:
                    value = float(parts[-2])
                except ValueError:
                    raise DataError(
                        f"{path}, line {lineno}: measure {name!r} has a non-numeric value "
                        f"{parts[-2]!r}. {_FIX_HINT}"
                    ) from None
                out.measures[name] = value
                out.measure_units[name] = parts[-1]
            elif key == "ColHeaders":
                out.columns = rest.split()
            elif key == "NRows":
                try:
                    declared_rows = int(rest.split()[0])
                except (ValueError, IndexError):
                    raise DataError(
                        f"{path}, line {lineno}: malformed NRows line {line!r}"
                    ) from None
            elif key and key not in out.header and key not in ("TableCol",):
                out.header[key] = rest
            continue
        if not line.strip():
            continue
        if not out.columns:
            raise DataError(
                f"{path}, line {lineno}: table row before any '# ColHeaders' line; "
                f"this is not a FreeSurfer stats table. {_FIX_HINT}"
            )
        fields = line.split()
        if len(fields) != len(out.columns):
            raise DataError(
                f"{path}, line {lineno}: expected {len(out.columns)} columns "
                f"({' '.join(out.columns)}), found {len(fields)}; the file is truncated or "
                f"corrupt. {_FIX_HINT}"
            )
        out.rows.append(fields)
        out.row_lines.append(lineno)
    if not out.columns:
        raise DataError(
            f"{path}: no '# ColHeaders' line after {len(lines)} lines; the file is truncated "
            f"(still being written?) or not a FreeSurfer stats table. {_FIX_HINT}"
        )
    if not out.rows:
        raise DataError(
            f"{path}, line {len(lines)}: the table has a header but no rows; the file is "
            f"truncated. {_FIX_HINT}"
        )
    if declared_rows is not None and declared_rows != len(out.rows):
        raise DataError(
            f"{path}, line {len(lines)}: header declares NRows {declared_rows} but the table has "
            f"{len(out.rows)} rows; the file is truncated. {_FIX_HINT}"
        )
    return out


def _float_cell(stats: StatsFile, row: int, col: int) -> float:
    raw = stats.rows[row][col]
    try:
        return float(raw)
    except ValueError:
        raise DataError(
            f"{stats.path}, line {stats.row_lines[row]}: column {stats.columns[col]!r} has "
            f"non-numeric value {raw!r}. {_FIX_HINT}"
        ) from None


def parse_aseg_stats(path: str | os.PathLike) -> dict[str, float]:
    """Volumes (mm^3) from ``aseg.stats``: header measures in mm^3, then one per structure."""
    stats = parse_stats_file(path)
    vol_col = stats.column("Volume_mm3")
    name_col = stats.column("StructName")
    volumes = {k: v for k, v in stats.measures.items() if stats.measure_units[k] == "mm^3"}
    for i, row in enumerate(stats.rows):
        volumes[row[name_col]] = _float_cell(stats, i, vol_col)
    return volumes


def parse_aparc_stats(
    path: str | os.PathLike, hemi: str | None = None, require_dk: bool = True
) -> dict[str, float]:
    """Grey-matter volumes from ``?h.aparc.stats`` named ``{hemi}_{label}_volume``.

    ``require_dk`` checks that all 34 Desikan-Killiany labels are present: a file cut at a
    line boundary is otherwise indistinguishable from a complete one.
    """
    stats = parse_stats_file(path)
    hemi = hemi or stats.header.get("hemi", "").split(" ")[0] or Path(path).name[:2]
    if hemi not in ("lh", "rh"):
        raise DataError(
            f"{path}: cannot tell the hemisphere (no '# hemi' line and the name does not "
            f"start with lh. or rh.)"
        )
    vol_col = stats.column("GrayVol")
    name_col = stats.column("StructName")
    volumes = {
        f"{hemi}_{row[name_col]}_volume": _float_cell(stats, i, vol_col)
        for i, row in enumerate(stats.rows)
    }
    if require_dk:
        missing = [lab for lab in DK_LABELS if f"{hemi}_{lab}_volume" not in volumes]
        if missing:
            raise DataError(
                f"{path}, line {stats.row_lines[-1]}: {len(missing)} of the 34 Desikan-Killiany "
                f"regions are missing ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); "
                f"the file is truncated or not a DK (aparc) parcellation. {_FIX_HINT}"
            )
    return volumes


def stats_paths(subject_dir: str | os.PathLike) -> dict[str, Path]:
    """The three stats files read per subject."""
    stats = Path(subject_dir) / "stats"
    return {
        "aseg": stats / "aseg.stats",
        "lh": stats / "lh.aparc.stats",
        "rh": stats / "rh.aparc.stats",
    }


def read_subject_volumes(subject_dir: str | os.PathLike) -> dict[str, float]:
    """All volumes of one FreeSurfer subject: aseg measures and structures, lh and rh DK."""
    paths = stats_paths(subject_dir)
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise MissingInputError(
            f"FreeSurfer subject {subject_dir} is incomplete: missing {', '.join(missing)}. "
            f"{_FIX_HINT}"
        )
    volumes = parse_aseg_stats(paths["aseg"])
    volumes.update(parse_aparc_stats(paths["lh"], "lh"))
    volumes.update(parse_aparc_stats(paths["rh"], "rh"))
    return volumes


_KNOWN_VERSION = re.compile(r"^(\$Id: mri_segstats\.c,v |[5-8]\.\d+(\.\d+)?([-+][\w.]+)?$)")


def unknown_version_warning(subject_dir: str | os.PathLike) -> str | None:
    """A warning naming ``aseg.stats`` when its FreeSurfer version is not 5.x-8.x.

    Other versions are read the same way (the format has been stable since 5.3), but region
    names or definitions may have changed, so the user should know.
    """
    version = freesurfer_version(subject_dir)
    if version is None or _KNOWN_VERSION.match(version.strip()):
        return None
    return (
        f"{stats_paths(subject_dir)['aseg']}: FreeSurfer version {version!r} is not one this "
        f"app knows (5.x-8.x); its volumes were read the same way, but check that region names "
        f"and definitions did not change"
    )


def freesurfer_version(subject_dir: str | os.PathLike) -> str | None:
    """FreeSurfer version recorded in ``aseg.stats`` (``7.4.1``, or ``$Id...`` for FS 6)."""
    try:
        return parse_stats_file(stats_paths(subject_dir)["aseg"]).header.get("cvs_version")
    except (DataError, MissingInputError):
        return None


# --------------------------------------------------------------------------- writer


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
    name = _MEASURE_FIRST_FIELD.get(column, column)
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
    head += _measure_lines(_ASEG_MEASURES_FS6 if fs6 else _ASEG_MEASURES_FS7, vols)
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
    head += _measure_lines(_APARC_BRAIN_MEASURES, vols)
    head.append(f"# NTableCols {len(_APARC_COLUMNS)}")
    for i, (hdr, fname, units) in enumerate(_APARC_COLUMNS, start=1):
        head += [
            f"# TableCol {i:2d} ColHeader {hdr}",
            f"# TableCol {i:2d} FieldName {fname}",
            f"# TableCol {i:2d} Units     {units}",
        ]
    head.append("# ColHeaders " + " ".join(c[0] for c in _APARC_COLUMNS))
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


# --------------------------------------------------------------------------- recon-all


def find_fs_license(
    flag: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None
) -> Path | None:
    """The FreeSurfer license: ``--fs-license-file``, then ``$FS_LICENSE``, then
    ``$FREESURFER_HOME/license.txt``. A flag or variable naming a missing file is an error."""
    environ = os.environ if environ is None else environ
    if flag:
        path = Path(flag).expanduser()
        if not path.is_file():
            raise UsageError(
                f"--fs-license-file {flag}: no such file. Get a free license at "
                f"https://surfer.nmr.mgh.harvard.edu/registration.html and pass its path."
            )
        return path.resolve()
    if environ.get("FS_LICENSE"):
        path = Path(environ["FS_LICENSE"]).expanduser()
        if not path.is_file():
            raise UsageError(
                f"$FS_LICENSE={environ['FS_LICENSE']} does not exist; fix the variable or "
                f"pass --fs-license-file"
            )
        return path.resolve()
    if environ.get("FREESURFER_HOME"):
        path = Path(environ["FREESURFER_HOME"]) / "license.txt"
        if path.is_file():
            return path.resolve()
    return None


def recon_all_status(license_file: Path | None) -> str | None:
    """None when recon-all can run; otherwise why not (for the exit-66 message)."""
    if shutil.which("recon-all") is None:
        return "FreeSurfer's recon-all is not on PATH"
    if license_file is None:
        return (
            "recon-all is installed but no FreeSurfer license was found (--fs-license-file, "
            "$FS_LICENSE, $FREESURFER_HOME/license.txt)"
        )
    return None


def init_recon_all_node(
    name: str,
    t1w_file: str | os.PathLike,
    subject_id: str,
    subjects_dir: str | os.PathLike,
    license_file: str | os.PathLike,
    omp_nthreads: int = 1,
    mem_gb: float | None = None,
):
    """A Nipype node running ``recon-all -all`` on one T1w into ``subjects_dir/subject_id``."""
    from nipype.interfaces.freesurfer import ReconAll
    from nipype.pipeline import engine as pe

    Path(subjects_dir).mkdir(parents=True, exist_ok=True)
    node = pe.Node(
        ReconAll(
            directive="all",
            subject_id=subject_id,
            T1_files=[str(t1w_file)],
            subjects_dir=str(subjects_dir),
            openmp=max(1, int(omp_nthreads)),
        ),
        name=name,
        n_procs=max(1, int(omp_nthreads)),
        mem_gb=mem_gb or 4.0,
    )
    node.interface.inputs.environ = {"FS_LICENSE": str(license_file)}
    return node


__all__ = [
    "ASEG_TABLE",
    "CONTAINER_IMAGE",
    "StatsFile",
    "find_fs_license",
    "freesurfer_version",
    "init_recon_all_node",
    "parse_aparc_stats",
    "parse_aseg_stats",
    "parse_stats_file",
    "read_subject_volumes",
    "recon_all_status",
    "render_aparc_stats",
    "render_aseg_stats",
    "stats_paths",
    "unknown_version_warning",
    "write_subject_stats",
]
