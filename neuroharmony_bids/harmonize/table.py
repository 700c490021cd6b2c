"""Validate and normalise an input table (one row per scan) for the harmonizer.

Every problem is reported with the column, the row (and participant when known) and a fix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from neuroharmony_bids.errors import DataError
from neuroharmony_bids.harmonize import features as F

ID_COLUMNS = ("participant_id", "session_id", "run", "acq_id")
#: Small structures FreeSurfer legitimately reports as 0 mm³ in healthy brains.
ZERO_ALLOWED = ("Inf-Lat-Vent", "vessel", "hypointensities", "5th-Ventricle", "choroid-plexus")


def row_label(table: pd.DataFrame, pos: int) -> str:
    """Human label for a data row: 1-based row number plus participant/session when present."""
    ids = [
        f"{col}={table[col].iloc[pos]}"
        for col in ("participant_id", "session_id")
        if col in table.columns and not pd.isna(table[col].iloc[pos])
    ]
    return f"row {pos + 1}" + (f" ({', '.join(ids)})" if ids else "")


@dataclass(frozen=True)
class PreparedTable:
    """Numeric views of a validated table, keyed by canonical names."""

    volumes: pd.DataFrame  # canonical region names → float
    region_columns: dict[str, str]  # canonical → name in the user's table
    iqms: pd.DataFrame  # MRIQC IQM names → float (NaN where missing)
    iqm_columns: dict[str, str]
    age: np.ndarray
    sex: pd.Series  # 'M' / 'F'
    etiv: np.ndarray | None
    covariates: pd.DataFrame  # user covariates, raw values


def _numeric(table: pd.DataFrame, col: str, *, allow_missing: bool = False) -> np.ndarray:
    values = pd.to_numeric(table[col], errors="coerce")
    bad_text = values.isna() & table[col].notna() & (table[col].astype(str).str.strip() != "")
    bad_text &= ~table[col].astype(str).str.strip().str.lower().isin(["n/a", "nan", "na"])
    if bad_text.any():
        pos = int(np.flatnonzero(bad_text.to_numpy())[0])
        raise DataError(
            f"column {col!r}, {row_label(table, pos)}: {table[col].iloc[pos]!r} is not a number; "
            "fix or remove that cell"
        )
    arr = values.to_numpy(dtype=float)
    if np.isinf(arr).any():
        pos = int(np.flatnonzero(np.isinf(arr))[0])
        raise DataError(f"column {col!r}, {row_label(table, pos)}: infinite value; fix that cell")
    if not allow_missing and np.isnan(arr).any():
        pos = int(np.flatnonzero(np.isnan(arr))[0])
        raise DataError(
            f"column {col!r}, {row_label(table, pos)}: missing value (empty, n/a or NaN); "
            "every scan needs it"
        )
    return arr


def region_columns(columns: Sequence[str]) -> dict[str, str]:
    """Canonical region name → user's column, for recognised FreeSurfer volumes."""
    known = set(F.NEUROHARMONY_REGIONS) | set(F.EXTRA_REGIONS)
    mapping = F.canonical_columns([c for c in columns if F.canonical_region(str(c)) in known])
    return {canon: given for given, canon in mapping.items()}


def iqm_columns(columns: Sequence[str]) -> dict[str, str]:
    """MRIQC IQM name → user's column (plain MRIQC names win over ``iqm_``-prefixed ones)."""
    out = {c: c for c in columns if c in F.ALL_IQMS}
    for given, name in F.strip_iqm_prefix(columns).items():
        out.setdefault(name, given)
    return out


def check_duplicates(table: pd.DataFrame) -> None:
    keys = [c for c in ID_COLUMNS if c in table.columns]
    if "participant_id" not in keys:
        return
    dup = table.duplicated(subset=keys, keep=False)
    if dup.any():
        rows = np.flatnonzero(dup.to_numpy())[:2]
        raise DataError(
            f"{row_label(table, int(rows[0]))} and {row_label(table, int(rows[1]))} describe the "
            f"same scan ({', '.join(keys)} repeated); keep one row per scan"
        )


def prepare(
    table: pd.DataFrame,
    *,
    regions: Sequence[str] | None = None,
    covariates: Sequence[str] = (),
    sex_mapping: Mapping[str, str] | None = None,
    require_regions: bool = True,
) -> PreparedTable:
    """Validate ``table`` and return canonical numeric views.

    ``regions`` restricts the volumes to a model's regions (any present subset is used).
    """
    table = table.reset_index(drop=True)
    if len(table) == 0:
        raise DataError("the input table has no rows; it needs one row per scan")
    check_duplicates(table)
    missing = [c for c in ("age", "sex") if c not in table.columns]
    if missing:
        raise DataError(
            f"missing required column(s) {', '.join(missing)}; the table needs 'age' (years) and "
            "'sex' (M/F) for every scan (rename your columns or use --age-column/--sex-column)"
        )
    rmap = region_columns(list(table.columns))
    if regions is not None:
        rmap = {k: v for k, v in rmap.items() if k in set(regions)}
    if require_regions and not rmap:
        raise DataError(
            "no FreeSurfer regional volume columns found; expected asegstats2table / "
            "aparcstats2table names such as 'Left-Hippocampus' or 'lh_superiorfrontal_volume'"
        )
    vols = {}
    for canon, col in rmap.items():
        arr = _numeric(table, col)
        bad = arr < 0 if any(z in canon for z in ZERO_ALLOWED) else arr <= 0
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"column {col!r}, {row_label(table, pos)}: volume {arr[pos]:g} is not positive; "
                "a zero or negative volume means a failed segmentation — rerun FreeSurfer or drop "
                "the scan"
            )
        vols[canon] = arr
    imap = iqm_columns(list(table.columns))
    iqms = pd.DataFrame(
        {name: _numeric(table, col, allow_missing=True) for name, col in imap.items()}
    )
    age = _numeric(table, "age")
    if (age <= 0).any() or (age > 120).any():
        pos = int(np.flatnonzero((age <= 0) | (age > 120))[0])
        raise DataError(
            f"column 'age', {row_label(table, pos)}: {age[pos]:g} is not an age in years"
        )
    sex = F.parse_sex(table["sex"], sex_mapping)
    etiv_col = next((c for c in table.columns if F.canonical_region(str(c)) == F.ETIV), None)
    etiv = _numeric(table, etiv_col) if etiv_col is not None else None
    if etiv is not None and (etiv <= 0).any():
        pos = int(np.flatnonzero(etiv <= 0)[0])
        raise DataError(f"column {etiv_col!r}, {row_label(table, pos)}: eTIV must be positive")
    missing_cov = [c for c in covariates if c not in table.columns]
    if missing_cov:
        raise DataError(
            f"covariate column(s) {', '.join(missing_cov)} not found in the table; columns are: "
            f"{', '.join(map(str, table.columns[:20]))}..."
        )
    return PreparedTable(
        volumes=pd.DataFrame(vols),
        region_columns=rmap,
        iqms=iqms,
        iqm_columns=imap,
        age=age,
        sex=sex.reset_index(drop=True),
        etiv=etiv,
        covariates=table[list(covariates)].copy(),
    )
