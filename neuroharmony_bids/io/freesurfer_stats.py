"""FreeSurfer stats files: read ``stats/aseg.stats`` and ``stats/?h.aparc.stats``.

Why our own parser: the ``freesurfer-stats`` package (1.2.1, the best-kept one on PyPI) pins
``pandas<2``, which conflicts with pybids 0.22 (``pandas>=2``), and it only reads cortical
parcellation files, not ``aseg.stats``; fsqc and PennLINC's freesurfer-post are pipelines, not
libraries. The format is simple and stable (FreeSurfer 5.3 to 7.4, FastSurfer 2.x, which runs
FreeSurfer's own ``mri_segstats`` and ``mris_anatomical_stats``): ``# Measure`` header lines, a
``# ColHeaders`` line, then whitespace-separated rows. Real files have quirks this module accepts
(``tests/data/real`` holds one of each): FreeSurfer 6.0 (and 7.1, as fsqc notes) writes
``# Measure Cortex, CortexVol Total cortical gray matter volume, ...`` without the comma after
``CortexVol``; 7.4 adds a ``# BrainVolStatsFixed ...`` line and may have ``VoxelVolume_mm3`` != 1;
FastSurfer writes ``?h.aparc.DKTatlas.mapped.stats`` (DKT atlas, 31 regions per hemisphere)
instead of ``?h.aparc.stats`` (Desikan-Killiany, 34).

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

import pandas as pd

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
    """A parsed FreeSurfer ``.stats`` file: header fields, measures and the table.

    ``notes`` says which known FreeSurfer quirks were met and how they were read.
    """

    path: Path
    notes: list[str] = field(default_factory=list)
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
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise DataError(
            f"{path}, line {line}: binary data (NUL bytes) in a FreeSurfer stats file; the file "
            f"is corrupt or not a stats table. {_FIX_HINT}"
        )
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
                if len(parts) == 4 and " " in parts[1]:
                    # FreeSurfer 6.0/7.1 bug: "Cortex, CortexVol Total cortical gray matter
                    # volume, 555332.58, mm^3" has no comma after the field name.
                    name_field, _, desc = parts[1].partition(" ")
                    parts = [parts[0], name_field, desc, parts[2], parts[3]]
                    out.notes.append(
                        f"line {lineno}: no comma after {name_field!r} (a FreeSurfer 6.0/7.1 "
                        f"bug); read as measure {name_field!r}"
                    )
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
    """Volumes (mm^3) from ``aseg.stats``: header measures in mm^3, then one per structure.

    recon-all (and FastSurfer) always write the eTIV measure; a file without it had its header
    cut, so it is refused rather than read without the head-size covariate.
    """
    return _aseg_volumes(parse_stats_file(path))


def _aseg_volumes(stats: StatsFile) -> dict[str, float]:
    vol_col = stats.column("Volume_mm3")
    name_col = stats.column("StructName")
    if ETIV not in stats.measures:
        raise DataError(
            f"{stats.path}, line {stats.row_lines[0] - 1}: no '# Measure "
            f"EstimatedTotalIntraCranialVol, eTIV, ...' line before the table; recon-all "
            f"always writes it (mri_segstats --etiv), so the header is damaged or this is not "
            f"recon-all's aseg.stats. {_FIX_HINT}"
        )
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
    return _aparc_volumes(parse_stats_file(path), hemi, require_dk)


def _aparc_volumes(stats: StatsFile, hemi: str | None, require_dk: bool) -> dict[str, float]:
    path = stats.path
    hemi = hemi or stats.header.get("hemi", "").split(" ")[0] or path.name[:2]
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
    """The three stats files recon-all writes and a Desikan model reads per subject."""
    stats = Path(subject_dir) / "stats"
    return {
        "aseg": stats / "aseg.stats",
        "lh": stats / "lh.aparc.stats",
        "rh": stats / "rh.aparc.stats",
    }


def fastsurfer_dkt_paths(subject_dir: str | os.PathLike) -> dict[str, Path]:
    """FastSurfer's cortical stats (DKT atlas mapped to the surface), one per hemisphere."""
    stats = Path(subject_dir) / "stats"
    return {hemi: stats / f"{hemi}.aparc.DKTatlas.mapped.stats" for hemi in ("lh", "rh")}


#: ``cvs_version`` of ``mri_segstats`` in releases that printed a CVS id instead of a version.
_SEGSTATS_RELEASES = {
    "1.121": "6.0",
    "1.75.2.9": "5.3",
    "1.75.2.2": "5.1",
}


def freesurfer_release(cvs_version: str | None) -> str | None:
    """The release (``6.0``, ``7.4.1``) behind an ``aseg.stats`` ``cvs_version`` field.

    FreeSurfer 7 prints the release itself; 5.x and 6.0 print the CVS revision of
    mri_segstats.c, which maps to one release (None when the revision is not a known one).
    """
    if not cvs_version:
        return None
    text = cvs_version.strip()
    match = re.match(r"^\$Id: mri_segstats\.c,v (\S+) ", text)
    if match:
        return _SEGSTATS_RELEASES.get(match.group(1))
    match = re.match(r"^v?(\d+\.\d+(?:\.\d+)?)", text)
    return match.group(1) if match else None


@dataclass
class SubjectStats:
    """One FreeSurfer/FastSurfer subject, read once: what every caller needs from its stats.

    ``volumes`` holds aseg measures and structures plus, when the subject has
    ``?h.aparc.stats``, the Desikan-Killiany (DK) cortical volumes a Desikan model uses.
    ``cortical_atlas`` says which cortical parcellation was read: ``"DK"``, or ``"DKT"`` for a
    FastSurfer subject; DKT regions (31 per hemisphere) are not DK regions (34) and stay in
    ``dkt_volumes``, out of ``volumes``, so that a Desikan model never harmonizes them.
    """

    subject_dir: Path
    pipeline: str
    cortical_atlas: str
    volumes: dict[str, float]
    dkt_volumes: dict[str, float] = field(default_factory=dict)
    cvs_version: str | None = None
    release: str | None = None
    notes: list[str] = field(default_factory=list)


def read_subject(subject_dir: str | os.PathLike) -> SubjectStats:
    """Read a subject's ``aseg.stats`` and cortical stats (recon-all's DK, else FastSurfer's DKT).

    A subject with neither ``?h.aparc.stats`` nor FastSurfer's
    ``?h.aparc.DKTatlas.mapped.stats`` (for both hemispheres) is incomplete.
    """
    subject_dir = Path(subject_dir)
    paths = stats_paths(subject_dir)
    dkt = fastsurfer_dkt_paths(subject_dir)
    has_dk = paths["lh"].is_file() and paths["rh"].is_file()
    has_dkt = all(p.is_file() for p in dkt.values())
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if not paths["aseg"].is_file() or not (has_dk or has_dkt):
        also = (
            ""
            if has_dkt
            else " (a FastSurfer subject has ?h.aparc.DKTatlas.mapped.stats instead of "
            "?h.aparc.stats; those are missing too)"
        )
        raise MissingInputError(
            f"FreeSurfer subject {subject_dir} is incomplete: missing {', '.join(missing)}{also}. "
            f"{_FIX_HINT}"
        )
    aseg = parse_stats_file(paths["aseg"])
    volumes = _aseg_volumes(aseg)
    notes = [f"{paths['aseg'].name}, {note}" for note in aseg.notes]
    cvs = aseg.header.get("cvs_version")
    out = SubjectStats(
        subject_dir=subject_dir,
        pipeline="FastSurfer" if has_dkt else "FreeSurfer",  # (--fsaparc adds ?h.aparc.stats)
        cortical_atlas="DK",
        volumes=volumes,
        cvs_version=cvs,
        release=freesurfer_release(cvs),
        notes=notes,
    )
    if has_dk:
        for hemi in ("lh", "rh"):
            aparc = parse_stats_file(paths[hemi])
            out.volumes.update(_aparc_volumes(aparc, hemi, require_dk=True))
            out.notes += [f"{paths[hemi].name}, {note}" for note in aparc.notes]
        return out
    out.cortical_atlas = "DKT"
    for hemi, path in dkt.items():
        out.dkt_volumes.update(parse_aparc_stats(path, hemi, require_dk=False))
    out.notes.append(
        f"FastSurfer subject: cortical regions are DKT (from {dkt['lh'].name} and "
        f"{dkt['rh'].name}: {len(out.dkt_volumes)} regions), not the 68 Desikan-Killiany regions "
        f"a Desikan model knows; only the aseg volumes are read for harmonization"
    )
    return out


def read_subject_volumes(subject_dir: str | os.PathLike) -> dict[str, float]:
    """The volumes a Desikan model uses: aseg measures and structures, lh and rh DK.

    A FastSurfer subject (DKT only) is refused with the reason and the fix: callers that can
    harmonize its aseg volumes alone use :func:`read_subject` instead.
    """
    subject = read_subject(subject_dir)
    if subject.cortical_atlas != "DK":
        dkt = fastsurfer_dkt_paths(subject_dir)
        raise MissingInputError(
            f"{subject.subject_dir}: a FastSurfer subject ({dkt['lh'].name}, "
            f"{dkt['rh'].name}: DKT atlas, 31 regions per hemisphere) without the "
            f"Desikan-Killiany lh.aparc.stats/rh.aparc.stats (34 per hemisphere) the model "
            f"needs. Re-run FastSurfer with --fsaparc (it then writes ?h.aparc.stats), or run "
            f"recon-all."
        )
    return subject.volumes


def read_stats_table(path: str | os.PathLike) -> pd.DataFrame:
    """An ``asegstats2table`` / ``aparcstats2table`` table, one row per subject.

    Columns keep FreeSurfer's names (``Left-Hippocampus``, ``lh_bankssts_volume``,
    ``EstimatedTotalIntraCranialVol``; ``eTIV`` is renamed to the latter), so the table lines up
    with :func:`read_subject_volumes`. An empty column made by a trailing tab is dropped.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t", index_col=0, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise MissingInputError(f"FreeSurfer table not found: {path}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{path}: cannot read as an asegstats2table/aparcstats2table table ({exc}); the "
            f"file is truncated or not tab-separated. Re-create it with asegstats2table."
        ) from None
    first = str(table.index.name or "")
    if ":" not in first and not re.match(r"^[lr]h\.", first):
        raise DataError(
            f"{path}, line 1: first column is {first!r}, not asegstats2table's 'Measure:volume' "
            f"or aparcstats2table's 'lh.aparc.volume'; is this a FreeSurfer stats table?"
        )
    blank = [
        c for c in table.columns if str(c).startswith("Unnamed:") and not table[c].str.strip().any()
    ]
    table = table.drop(columns=blank).rename(columns=MEASURE_FIRST_FIELD)
    numbers = table.apply(pd.to_numeric, errors="coerce")
    bad = numbers.isna().to_numpy().nonzero()
    if len(bad[0]):
        row, col = int(bad[0][0]), int(bad[1][0])
        cell = table.iat[row, col]
        what = "no value" if pd.isna(cell) or not str(cell).strip() else f"{cell!r} is not a number"
        raise DataError(
            f"{path}, line {row + 2}, column {table.columns[col]!r}: {what}; the table is cut or "
            f"edited. Re-create it with asegstats2table/aparcstats2table."
        )
    numbers.index = numbers.index.astype(str)
    return numbers


def unknown_version_message(aseg: str | os.PathLike, cvs_version: str | None) -> str | None:
    """A warning naming ``aseg`` when its FreeSurfer version is not 5.x-8.x (None otherwise).

    Other versions are read the same way (the format has been stable since 5.3), but region
    names or definitions may have changed, so the user should know. 5.x/6.0 record a CVS
    ``$Id`` of mri_segstats.c instead of a release, which is known by construction.
    """
    release = freesurfer_release(cvs_version)
    known = release is not None and release.split(".")[0] in {"5", "6", "7", "8"}
    if not cvs_version or cvs_version.startswith("$Id") or known:
        return None
    return (
        f"{aseg}: FreeSurfer version {cvs_version!r} is not one this app knows (5.x-8.x); its "
        f"volumes were read the same way, but check that region names and definitions did not "
        f"change"
    )


def unknown_version_warning(subject_dir: str | os.PathLike) -> str | None:
    """:func:`unknown_version_message` for a subject folder's ``aseg.stats``."""
    return unknown_version_message(
        stats_paths(subject_dir)["aseg"], freesurfer_version(subject_dir)
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
    "ASEG_TABLE",
    "MEASURE_FIRST_FIELD",
    "StatsFile",
    "SubjectStats",
    "fastsurfer_dkt_paths",
    "freesurfer_release",
    "freesurfer_version",
    "parse_aparc_stats",
    "parse_aseg_stats",
    "parse_stats_file",
    "read_stats_table",
    "read_subject",
    "read_subject_volumes",
    "stats_paths",
    "unknown_version_message",
    "unknown_version_warning",
]
