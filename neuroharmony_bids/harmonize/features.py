"""Canonical names for FreeSurfer regions and MRIQC IQMs, and covariate parsing.

FreeSurfer 6 and 7 spell a few aseg structures differently; the model works on one
canonical (FreeSurfer 7) spelling and outputs keep whatever spelling the user gave.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from neuroharmony_bids.errors import DataError, UsageError

_HEMI_ASEG = [
    "Lateral-Ventricle",
    "Inf-Lat-Vent",
    "Cerebellum-White-Matter",
    "Cerebellum-Cortex",
    "Thalamus",
    "Caudate",
    "Putamen",
    "Pallidum",
    "Hippocampus",
    "Amygdala",
    "Accumbens-area",
    "VentralDC",
]
#: The 33 aseg volumes of the original Neuroharmony set (FreeSurfer 7 spelling).
ASEG_REGIONS: list[str] = (
    [f"Left-{r}" for r in _HEMI_ASEG]
    + [f"Right-{r}" for r in _HEMI_ASEG]
    + ["3rd-Ventricle", "4th-Ventricle", "Brain-Stem", "CSF"]
    + ["CC_Posterior", "CC_Mid_Posterior", "CC_Central", "CC_Mid_Anterior", "CC_Anterior"]
)

DK_LABELS: list[str] = [
    "bankssts", "caudalanteriorcingulate", "caudalmiddlefrontal", "cuneus", "entorhinal",
    "fusiform", "inferiorparietal", "inferiortemporal", "isthmuscingulate", "lateraloccipital",
    "lateralorbitofrontal", "lingual", "medialorbitofrontal", "middletemporal",
    "parahippocampal", "paracentral", "parsopercularis", "parsorbitalis", "parstriangularis",
    "pericalcarine", "postcentral", "posteriorcingulate", "precentral", "precuneus",
    "rostralanteriorcingulate", "rostralmiddlefrontal", "superiorfrontal", "superiorparietal",
    "superiortemporal", "supramarginal", "frontalpole", "temporalpole", "transversetemporal",
    "insula",
]  # fmt: skip
#: The 68 Desikan-Killiany grey-matter volumes, aparcstats2table naming.
DK_REGIONS: list[str] = [f"{h}_{lab}_volume" for h in ("lh", "rh") for lab in DK_LABELS]

#: The 101 regions Neuroharmony harmonized.
NEUROHARMONY_REGIONS: list[str] = ASEG_REGIONS + DK_REGIONS

#: Other whole-brain / aseg volumes we recognise and may harmonize when present.
EXTRA_REGIONS: list[str] = [
    "Left-choroid-plexus", "Right-choroid-plexus", "Left-vessel", "Right-vessel",
    "5th-Ventricle", "WM-hypointensities", "non-WM-hypointensities", "Optic-Chiasm",
    "lhCortexVol", "rhCortexVol", "CortexVol", "lhCerebralWhiteMatterVol",
    "rhCerebralWhiteMatterVol", "CerebralWhiteMatterVol", "SubCortGrayVol", "TotalGrayVol",
    "SupraTentorialVol", "BrainSegVol", "BrainSegVolNotVent",
]  # fmt: skip

ETIV = "EstimatedTotalIntraCranialVol"

#: Global measures of the ``aseg.stats`` header. They are recognised and passed through, but
#: never harmonized: their definitions differ between the training table and FreeSurfer
#: releases. ABIDE's ``SubCortGrayVol`` is ``TotalGrayVol - CortexVol`` (about 190,000 mm³)
#: where every real aseg.stats writes the subcortical grey sum (46,000-69,000 mm³), and
#: FreeSurfer 7.4 recomputed this whole family ("BrainVolStatsFixed"). The model harmonizes
#: only per-structure volumes (aseg rows, Desikan-Killiany rows), defined alike in 5.3-8.x.
GLOBAL_MEASURES: tuple[str, ...] = (
    "lhCortexVol", "rhCortexVol", "CortexVol", "lhCerebralWhiteMatterVol",
    "rhCerebralWhiteMatterVol", "CerebralWhiteMatterVol", "SubCortGrayVol", "TotalGrayVol",
    "SupraTentorialVol", "BrainSegVol", "BrainSegVolNotVent",
)  # fmt: skip

#: Per-scan flag columns the harmonizer appends to every output table.
FLAG_COLUMNS: tuple[str, ...] = (
    "nh_status",
    "nh_confidence",
    "nh_out_of_range",
    "nh_out_of_range_features",
    "nh_features_used",
    "nh_n_regions",
    "nh_regions_flagged",
    "nh_iqms_missing",
)

#: FreeSurfer 6 (and asegstats2table) spellings → canonical FreeSurfer 7 spelling.
FS_ALIASES: dict[str, str] = {
    "Left-Thalamus-Proper": "Left-Thalamus",
    "Right-Thalamus-Proper": "Right-Thalamus",
    "lhCorticalWhiteMatterVol": "lhCerebralWhiteMatterVol",
    "rhCorticalWhiteMatterVol": "rhCerebralWhiteMatterVol",
    "CorticalWhiteMatterVol": "CerebralWhiteMatterVol",
    "eTIV": ETIV,
    "EstimatedTotalIntraCranialVol_eTIV": ETIV,
}

#: MRIQC T1w IQMs the shipped model can always rely on (issue: core IQM set).
CORE_IQMS: list[str] = [
    "fwhm_avg", "fwhm_x", "fwhm_y", "fwhm_z", "spacing_x", "spacing_y", "spacing_z",
    "snr_total", "snr_gm", "snr_wm", "snr_csf", "snrd_total", "snrd_gm", "snrd_wm", "snrd_csf",
    "qi_1", "cnr", "cjv", "efc",
]  # fmt: skip

#: All MRIQC T1w IQM names (MRIQC 0.9 - 24 group_T1w.tsv columns).
ALL_IQMS: list[str] = CORE_IQMS + [
    "fber", "icvs_csf", "icvs_gm", "icvs_wm", "inu_med", "inu_range", "qi_2", "rpve_csf",
    "rpve_gm", "rpve_wm", "size_x", "size_y", "size_z", "tpm_overlap_csf", "tpm_overlap_gm",
    "tpm_overlap_wm", "wm2max",
] + [
    f"summary_{t}_{s}"
    for t in ("bg", "csf", "gm", "wm")
    for s in ("k", "mad", "mean", "median", "n", "p05", "p95", "stdv")
]  # fmt: skip

_SEX_SPELLINGS: dict[str, str] = {
    "m": "M", "male": "M", "man": "M", "f": "F", "female": "F", "woman": "F",
}  # fmt: skip


def homologue(name: str) -> str:
    """The other hemisphere's structure (``Left-X`` ↔ ``Right-X``, ``lh_x`` ↔ ``rh_x``)."""
    for a, b in (("Left-", "Right-"), ("Right-", "Left-"), ("lh_", "rh_"), ("rh_", "lh_")):
        if name.startswith(a):
            return b + name[len(a) :]
    for a, b in (("lh", "rh"), ("rh", "lh")):
        if name.startswith(a) and name[2:3].isupper():
            return b + name[2:]
    return name


def canonical_region(name: str) -> str:
    """Map a FreeSurfer 6 or 7 column name to the canonical spelling (unknown names unchanged)."""
    return FS_ALIASES.get(name, name)


def canonical_columns(columns: Iterable[str]) -> dict[str, str]:
    """Return {given name: canonical name} for every column; raise if two map to one."""
    mapping: dict[str, str] = {}
    seen: dict[str, str] = {}
    for col in columns:
        canon = canonical_region(str(col))
        if canon in seen and seen[canon] != col:
            raise DataError(
                f"columns {seen[canon]!r} and {col!r} are the FreeSurfer 6 and 7 spellings of "
                f"the same structure; keep only one of them"
            )
        seen[canon] = col
        mapping[col] = canon
    return mapping


def strip_iqm_prefix(columns: Iterable[str], prefix: str = "iqm_") -> dict[str, str]:
    """Map prefixed IQM columns (e.g. ``iqm_cjv``) to MRIQC names; others unchanged."""
    out = {}
    for col in columns:
        col = str(col)
        if col.startswith(prefix) and col[len(prefix) :] in ALL_IQMS:
            out[col] = col[len(prefix) :]
    return out


def sex_problems(
    values: pd.Series, mapping: Mapping[str, str] | None = None
) -> tuple[pd.Series, dict[int, str]]:
    """Parse BIDS ``sex`` spellings to 'M'/'F' (vectorized); {0-based row: problem} for the rest.

    Numeric codes are ambiguous across datasets (1=M in ABIDE, 1=F elsewhere), so they are
    only accepted through an explicit ``mapping`` such as ``{"1": "M", "2": "F"}``.
    """
    mapping = {str(k).strip().lower(): str(v).strip().upper() for k, v in (mapping or {}).items()}
    for v in mapping.values():
        if v not in ("M", "F"):
            raise UsageError(f"sex mapping values must be M or F, got {v!r}")
    # a column holds a handful of spellings: each distinct value normalised once (as text), not
    # every row; a missing value (code -1) reads as '', the last entry
    codes, uniq = pd.factorize(values)
    norm = pd.Series([*(str(v) for v in uniq), ""], dtype=object).str.strip().str.lower()
    norm = norm.str.replace(r"^(\d+)\.0$", r"\1", regex=True).to_numpy()
    known = pd.Series(norm).map({**_SEX_SPELLINGS, **mapping}).to_numpy()
    parsed = pd.Series(known[codes], index=values.index, dtype=object)
    problems = {}
    for pos in np.flatnonzero(pd.isna(known)[codes]):
        key, raw = norm[codes[pos]], values.iloc[pos]
        hint = (
            " Numeric codes need an explicit mapping, e.g. --sex-mapping 1=M 2=F."
            if key.isdigit()
            else " Use M/F or male/female (BIDS participants.tsv convention)."
        )
        problems[int(pos)] = f"column 'sex', row {pos + 1}: cannot read {raw!r} as a sex.{hint}"
    return parsed.rename(values.name), problems


def parse_sex(values: pd.Series, mapping: Mapping[str, str] | None = None) -> pd.Series:
    """Parse BIDS ``sex`` spellings to 'M'/'F'; refuse the first unreadable value."""
    parsed, problems = sex_problems(values, mapping)
    if problems:
        raise DataError(problems[min(problems)])
    return parsed


def sex_to_float(sex: pd.Series) -> np.ndarray:
    """'M' → 1.0, 'F' → 0.0 (after :func:`parse_sex`)."""
    return (sex.to_numpy() == "M").astype(float)
