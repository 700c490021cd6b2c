"""FreeSurfer stats files: read ``stats/aseg.stats`` and ``stats/?h.aparc.stats``.

Why our own parser: the ``freesurfer-stats`` package (1.2.1, the best-kept one on PyPI) pins
``pandas<2``, which conflicts with pybids 0.22 (``pandas>=2``), and it only reads cortical
parcellation files, not ``aseg.stats``. The format is simple and stable (FreeSurfer 5.3 to 7.4):
``# Measure`` header lines, a ``# ColHeaders`` line, then whitespace-separated rows.

Names follow ``asegstats2table`` / ``aparcstats2table`` so that tables made by FreeSurfer's own
tools and by this module line up: aseg structures by ``StructName`` (``Left-Hippocampus``),
header measures by their second field (``BrainSegVol``, ``lhCortexVol``) except that ``eTIV`` and
``ICV`` are spelled ``EstimatedTotalIntraCranialVol`` and ``IntraCranialVol``, and cortical
volumes as ``lh_superiorfrontal_volume``.

The layout tables below (rows, header measures per version, aparc columns) describe what
FreeSurfer writes; :mod:`neuroharmony_bids.testing.freesurfer_outputs` renders files from them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from neuroharmony_bids.errors import DataError, MissingInputError
from neuroharmony_bids.harmonize.features import DK_LABELS, ETIV

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

# FreeSurfer 6 (mri_segstats v1.121): "cortical" white matter, two extra measures.
ASEG_MEASURES_FS6: list[tuple[str, str, str, str]] = [
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
APARC_BRAIN_MEASURES = [
    ("BrainSeg", "BrainSegVol", "Brain Segmentation Volume", "mm^3"),
    ("BrainSegNotVent", "BrainSegVolNotVent", "Brain Segmentation Volume Without Ventricles", "mm^3"),
    ("BrainSegNotVentSurf", "BrainSegVolNotVentSurf", "Brain Segmentation Volume Without Ventricles from Surf", "mm^3"),
    ("Cortex", "CortexVol", "Total cortical gray matter volume", "mm^3"),
    ("SupraTentorial", "SupraTentorialVol", "Supratentorial volume", "mm^3"),
    ("SupraTentorialNotVent", "SupraTentorialVolNotVent", "Supratentorial volume", "mm^3"),
    ("EstimatedTotalIntraCranialVol", "eTIV", "Estimated Total Intracranial Volume", "mm^3"),
]  # fmt: skip

APARC_COLUMNS = [
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
MEASURE_FIRST_FIELD = {"eTIV": ETIV, "ICV": "IntraCranialVol"}

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
    return MEASURE_FIRST_FIELD.get(second, second) if second else first


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


__all__ = [
    "APARC_BRAIN_MEASURES",
    "APARC_COLUMNS",
    "ASEG_MEASURES_FS6",
    "ASEG_MEASURES_FS7",
    "ASEG_TABLE",
    "MEASURE_FIRST_FIELD",
    "StatsFile",
    "freesurfer_version",
    "parse_aparc_stats",
    "parse_aseg_stats",
    "parse_stats_file",
    "read_subject_volumes",
    "stats_paths",
    "unknown_version_warning",
]
