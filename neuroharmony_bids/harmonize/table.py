"""Validate and normalise an input table (one row per scan) for the harmonizer.

Every problem is reported with the column, the row (and participant when known) and a fix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from neuroharmony_bids.errors import DataError
from neuroharmony_bids.harmonize import features as F

#: Columns that together identify a scan (the BIDS App adds bids_name and one column per BIDS
#: entity, so several T1w of one person are distinct rows).
ID_COLUMNS = (
    "participant_id", "session_id", "run", "acq_id", "ce_id", "rec_id", "run_id", "bids_name",
)  # fmt: skip
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


#: Labels a row of the frame being parsed (a chunk of rows is labelled as in the whole table).
Labeller = Callable[[int], str]


@dataclass(frozen=True)
class PreparedTable:
    """Numeric views of a validated table, keyed by canonical names."""

    volumes: pd.DataFrame  # canonical region names → float
    unusable: pd.DataFrame  # same columns → True where the volume is missing or not positive
    region_columns: dict[str, str]  # canonical → name in the user's table
    iqms: pd.DataFrame  # MRIQC IQM names → float (NaN where missing)
    iqm_columns: dict[str, str]
    age: np.ndarray
    sex: pd.Series  # 'M' / 'F'
    etiv: np.ndarray | None
    covariates: pd.DataFrame  # user covariates, raw values


def _cell_problems(
    table: pd.DataFrame, col: str, *, allow_missing: bool = False, label: Labeller | None = None
) -> tuple[np.ndarray, dict[int, str]]:
    """Parse one column as numbers; return the values and {row: problem} for every bad cell."""
    label = label or (lambda pos: row_label(table, pos))
    column = table[col]
    problems: dict[int, str] = {}
    if pd.api.types.is_numeric_dtype(column):
        arr = column.to_numpy(dtype=float)
        bad_text = np.zeros(0, dtype=int)
    else:  # text: only the cells that do not parse need string work
        values = pd.to_numeric(column, errors="coerce")
        arr = values.to_numpy(dtype=float)
        suspect = np.flatnonzero((values.isna() & column.notna()).to_numpy())
        text = column.iloc[suspect].astype(str).str.strip().str.lower()
        bad_text = suspect[~text.isin(["", "n/a", "nan", "na"]).to_numpy()]
    if not len(bad_text):
        # a finite sum means every cell is finite: one pass settles most columns
        total = arr.sum()
        if np.isfinite(total) or (allow_missing and not np.isinf(arr).any()):
            return arr, problems
    for pos in bad_text:
        problems[int(pos)] = (
            f"column {col!r}, {label(pos)}: {table[col].iloc[pos]!r} is not a "
            "number; fix or remove that cell"
        )
    for pos in np.flatnonzero(np.isinf(arr)):
        problems.setdefault(
            int(pos), f"column {col!r}, {label(pos)}: infinite value; fix that cell"
        )
    if not allow_missing:
        for pos in np.flatnonzero(np.isnan(arr)):
            problems.setdefault(
                int(pos),
                f"column {col!r}, {label(pos)}: missing value (empty, n/a or NaN); "
                "every scan needs it",
            )
    return arr, problems


def _range_problems(col: str, arr: np.ndarray, bad: np.ndarray, what: str, label: Labeller):
    with np.errstate(invalid="ignore"):
        rows = np.flatnonzero(bad & np.isfinite(arr))
    return {int(p): f"column {col!r}, {label(p)}: {arr[p]:g} {what}" for p in rows}


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
    ids = table["participant_id"]
    if isinstance(ids, pd.Series) and ids.nunique(dropna=False) == len(table):
        return  # (each participant once: no scan repeated; twice as fast as duplicated)
    dup = table.duplicated(subset=keys, keep=False)
    if dup.any():
        rows = np.flatnonzero(dup.to_numpy())[:2]
        raise DataError(
            f"{row_label(table, int(rows[0]))} and {row_label(table, int(rows[1]))} describe the "
            f"same scan ({', '.join(keys)} repeated); keep one row per scan"
        )


def _check_columns(table: pd.DataFrame, rmap: dict, require_regions: bool, covariates) -> None:
    """Problems of the whole table (not of single rows)."""
    if len(table) == 0:
        raise DataError("the input table has no rows; it needs one row per scan")
    check_duplicates(table)
    missing = [c for c in ("age", "sex") if c not in table.columns]
    if missing:
        raise DataError(
            f"missing required column(s) {', '.join(missing)}; the table needs 'age' (years) and "
            "'sex' (M/F) for every scan (rename your columns or use --age-column/--sex-column)"
        )
    if require_regions and not rmap:
        raise DataError(
            "no FreeSurfer regional volume columns found; expected asegstats2table / "
            "aparcstats2table names such as 'Left-Hippocampus' or 'lh_superiorfrontal_volume'"
        )
    missing_cov = [c for c in covariates if c not in table.columns]
    if missing_cov:
        raise DataError(
            f"covariate column(s) {', '.join(missing_cov)} not found in the table; columns are: "
            f"{', '.join(map(str, table.columns[:20]))}..."
        )


def _add(problems: dict[int, list[str]], found: dict[int, str]) -> None:
    for pos, text in found.items():
        problems.setdefault(pos, []).append(text)


def _parse_rows(table: pd.DataFrame, rmap: dict, sex_mapping):
    """Parse every per-row field; return the parsed values and {row: [problems]}."""
    vols, unusable, iqms, problems = _parse_measures(table, rmap, list(iqm_columns(table.columns)))
    age, sex, etiv, found = _parse_scan_fields(table, sex_mapping)
    for pos, items in found.items():
        problems.setdefault(pos, []).extend(items)
    return vols, unusable, iqms, age, sex, etiv, problems


def _parse_measures(
    table: pd.DataFrame, rmap: dict, iqm_names: Sequence[str], label: Labeller | None = None
):
    """Volumes (with where each is unusable) and IQMs, column by column; {row: [problems]}."""
    problems: dict[int, list[str]] = {}
    # an empty, zero or negative volume (a structure FreeSurfer did not segment) is not the
    # scan's problem: the model flags that region and harmonizes the others (unusable)
    vols, unusable = {}, {}
    for canon, col in rmap.items():
        arr, found = _cell_problems(table, col, allow_missing=True, label=label)
        _add(problems, found)
        zero_ok = any(z in canon for z in ZERO_ALLOWED)
        with np.errstate(invalid="ignore"):
            unusable[canon] = np.isnan(arr) | (arr < 0 if zero_ok else arr <= 0)
        vols[canon] = arr
    iqms = {}
    imap = iqm_columns(list(table.columns))
    for name in iqm_names:
        iqms[name], found = _cell_problems(table, imap[name], allow_missing=True, label=label)
        _add(problems, found)
    return vols, unusable, iqms, problems


def _parse_scan_fields(table: pd.DataFrame, sex_mapping, label: Labeller | None = None):
    """Age, sex and eTIV of every row (one value per scan); {row: [problems]}."""
    label = label or (lambda pos: row_label(table, pos))
    problems: dict[int, list[str]] = {}
    age, found = _cell_problems(table, "age", label=label)
    _add(problems, found)
    with np.errstate(invalid="ignore"):
        bad_age = (age <= 0) | (age > 120)
    _add(problems, _range_problems("age", age, bad_age, "is not an age in years", label))
    sex, found = F.sex_problems(table["sex"].reset_index(drop=True), sex_mapping)
    _add(
        problems,
        {pos: text.replace(f"row {pos + 1}", label(pos), 1) for pos, text in found.items()},
    )
    sex = sex.fillna("").rename("sex")
    etiv_col = next((c for c in table.columns if F.canonical_region(str(c)) == F.ETIV), None)
    etiv = None
    if etiv_col is not None:
        etiv, found = _cell_problems(table, etiv_col, label=label)
        _add(problems, found)
        with np.errstate(invalid="ignore"):
            found = _range_problems(etiv_col, etiv, etiv <= 0, "is not a positive eTIV", label)
        _add(problems, found)
    return age, sex, etiv, problems


def unusable_volume_problem(table: pd.DataFrame, prep: PreparedTable) -> str | None:
    """Why the first row with an empty, zero or negative volume cannot be used (None if none):
    training needs every region of every scan."""
    bad = prep.unusable.to_numpy()
    if not bad.any():
        return None
    pos = int(np.flatnonzero(bad.any(axis=1))[0])
    cells = [
        f"{prep.region_columns[r]!r} = {prep.volumes[r].iloc[pos]:g} mm³"
        for r in prep.unusable.columns[bad[pos]]
    ]
    return (
        f"{row_label(table, pos)}: volume missing or not positive in column(s) "
        f"{', '.join(cells)}; a model is trained on complete segmentations only: rerun "
        "FreeSurfer for this scan or leave it out"
    )


def row_problems(
    table: pd.DataFrame,
    *,
    regions: Sequence[str] | None = None,
    sex_mapping: Mapping[str, str] | None = None,
) -> dict[int, str]:
    """Every row :func:`prepare` would refuse, found in one pass: {0-based row: reason}.

    Lets a caller (the BIDS App) set bad scans aside and harmonize the rest.
    """
    rmap = check_table(table, regions=regions, require_regions=False)
    *_, problems = _parse_rows(table, rmap, sex_mapping)
    return {pos: "; ".join(items) for pos, items in sorted(problems.items())}


def _restrict(rmap: dict[str, str], regions: Sequence[str] | None) -> dict[str, str]:
    return rmap if regions is None else {k: v for k, v in rmap.items() if k in set(regions)}


def prepare(
    table: pd.DataFrame,
    *,
    regions: Sequence[str] | None = None,
    covariates: Sequence[str] = (),
    sex_mapping: Mapping[str, str] | None = None,
    require_regions: bool = True,
    checked: bool = False,
) -> PreparedTable:
    """Validate ``table`` and return canonical numeric views; refuse it at the first bad row.

    ``regions`` restricts the volumes to a model's regions (any present subset is used).
    ``checked``: :func:`check_table` already passed on the table these rows come from (row
    chunks), so only the rows are validated.
    """
    # rows are addressed by position throughout: no reset_index (a copy of the whole table)
    if checked:
        rmap = _restrict(region_columns(list(table.columns)), regions)
    else:
        rmap = check_table(
            table, regions=regions, covariates=covariates, require_regions=require_regions
        )
    vols, unusable, iqms, age, sex, etiv, problems = _parse_rows(table, rmap, sex_mapping)
    if problems:
        first = min(problems)
        more = f" ({len(problems) - 1} more row(s) have problems)" if len(problems) > 1 else ""
        raise DataError(problems[first][0] + more)
    return PreparedTable(
        volumes=pd.DataFrame(vols),
        unusable=pd.DataFrame(unusable, columns=list(vols)),
        region_columns=rmap,
        iqms=pd.DataFrame(iqms, index=range(len(table))),
        iqm_columns=iqm_columns(list(table.columns)),
        age=age,
        sex=sex,
        etiv=etiv,
        covariates=table[list(covariates)].reset_index(drop=True),
    )


def check_table(
    table: pd.DataFrame,
    *,
    regions: Sequence[str] | None = None,
    covariates: Sequence[str] = (),
    require_regions: bool = True,
) -> dict[str, str]:
    """Problems of the whole table (no rows, repeated scans, missing columns); the region map.

    Done once per table, so that a caller preparing it in row chunks (``checked=True``) does
    not repeat them per chunk.
    """
    rmap = _restrict(region_columns(list(table.columns)), regions)
    _check_columns(table, rmap, require_regions, covariates)
    return rmap


@dataclass(frozen=True)
class ScanFields:
    """The per-scan fields a covariate design is built from (one value per row)."""

    age: np.ndarray
    sex: pd.Series  # 'M' / 'F' ('' where unreadable)
    etiv: np.ndarray | None
    covariates: pd.DataFrame  # user covariates, raw values


def _plain_numeric(column: pd.Series) -> bool:
    """A NumPy int, unsigned, float or bool column: its cells are numbers without parsing."""
    return isinstance(column.dtype, np.dtype) and column.dtype.kind in "fiub"


class RowReader:
    """A checked table's volumes and IQMs read a chunk of rows at a time, as one float block.

    Why: at 100k scans, reading and parsing the region and IQM columns one pandas column at a
    time per chunk cost as much as the harmonization itself. Here the per-scan fields (age,
    sex, eTIV, covariates) are parsed once for the whole table, and a chunk's volumes and IQMs
    are gathered from the columns' NumPy arrays. Text columns, and a chunk with a non-finite
    number, go through the per-cell parse of :func:`prepare`, so every problem reads as there
    (rows numbered as in the whole table).

    Block columns: ``regions`` (canonical names, in this order), then ``iqms`` (MRIQC names, in
    this order; NaN where the table lacks one), then the table's other IQM columns (validated
    like :func:`prepare` validates them, unused).
    """

    def __init__(
        self,
        table: pd.DataFrame,
        rmap: Mapping[str, str],
        regions: Sequence[str],
        iqms: Sequence[str],
        *,
        covariates: Sequence[str] = (),
        sex_mapping: Mapping[str, str] | None = None,
    ) -> None:
        self.table = table
        self._rmap = dict(rmap)  # canonical → user column, in table order (problem order)
        self._imap = iqm_columns(list(table.columns))
        age, sex, etiv, self.field_problems = _parse_scan_fields(table, sex_mapping)
        self.fields = ScanFields(age, sex, etiv, table[list(covariates)].reset_index(drop=True))
        others = [c for c in self._imap if c not in set(iqms)]
        names = [rmap[r] for r in regions] + [self._imap.get(c) for c in [*iqms, *others]]
        #: per block column: the column's NumPy array, None (absent: NaN), or the text Series
        self._sources: list[np.ndarray | pd.Series | None] = []
        for name in names:
            column = None if name is None else table[name]
            if column is not None and _plain_numeric(column):
                column = column.to_numpy()
            self._sources.append(column)
        self.zero_ok = np.array([any(z in r for z in ZERO_ALLOWED) for r in regions], dtype=bool)
        self._n_regions = len(regions)

    def block(self, rows: slice | np.ndarray) -> tuple[np.ndarray, dict[int, list[str]]]:
        """Volumes and IQMs of ``rows`` as floats, one scan per column (a table column per
        row: each copied contiguously, and laid out as the harmonizer's products want), and
        {position in ``rows``: [problems]} (per-scan field problems excluded: see
        ``field_problems``, keyed by table row). ``rows``: a slice or integer positions."""
        # the table positions, without an n-long arange per chunk (integer positions are
        # their own: the joint path's chunks)
        if isinstance(rows, slice):
            at = np.arange(*rows.indices(len(self.table)))
        else:
            at = np.asarray(rows, dtype=np.intp)
        out = np.empty((len(self._sources), len(at)))
        suspect = False
        for j, src in enumerate(self._sources):
            if src is None:
                out[j] = np.nan
            elif isinstance(src, np.ndarray):
                out[j] = src[rows]
            else:  # text: parsed as prepare does; its problems are named below
                frame = src.iloc[rows].to_frame()
                out[j], found = _cell_problems(frame, src.name, allow_missing=True)
                suspect = suspect or bool(found)
        total = out.sum()
        if not suspect and (np.isfinite(total) or not np.isinf(out).any()):
            return out, {}  # missing (NaN) volumes and IQMs are no row's problem

        def label(pos: int) -> str:
            return row_label(self.table, int(at[pos]))

        part = self.table.iloc[rows]
        *_, problems = _parse_measures(part, self._rmap, list(self._imap), label)
        return out, problems

    def unusable(self, volumes: np.ndarray) -> np.ndarray:
        """Where a volume is missing, negative, or 0 mm³ in a structure that cannot be 0
        (``volumes``: one scan per column, as :meth:`block` gives them)."""
        with np.errstate(invalid="ignore"):
            bad = ~(volumes > 0)  # missing (NaN), negative or 0
        if self.zero_ok.any():  # (0 mm³ is a volume where a structure may be absent)
            bad[self.zero_ok] &= volumes[self.zero_ok] != 0
        return bad
