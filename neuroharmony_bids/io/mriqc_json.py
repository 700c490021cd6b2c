"""MRIQC outputs: read T1w image-quality metrics (IQMs) from IQM JSONs and ``group_T1w.tsv``.

MRIQC 0.9 to 24 write one JSON per scan (``sub-X[_ses-Y][_run-Z]_T1w.json``) holding the IQMs
as top-level numbers plus ``bids_meta`` (entities and sidecar metadata) and ``provenance``
(md5sum, software, version, settings, warnings); the group level gathers them into
``group_T1w.tsv`` with a ``bids_name`` column. Older releases put the JSONs flat in
``<out>/derivatives/``, newer ones mirror the BIDS tree (``<out>/sub-X/[ses-Y/]anat/``); both
are searched.

MRIQC marks an IQM it could not compute in two ways, both seen in real files
(``tests/data/real/mriqc``): a bare ``NaN`` token (or ``null``, ``n/a`` in the group table), and
``-1`` (``fber`` is -1 when the background is empty, e.g. a defaced or zero-filled image, in
MRIQC 22-24). Both are read as NaN and named in :attr:`IQMReading.unavailable`, so that the caller
flags the IQM and uses the others instead of setting the scan aside.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from neuroharmony_bids.errors import DataError, MissingInputError
from neuroharmony_bids.harmonize.features import ALL_IQMS

#: Keys of an MRIQC JSON that are not IQMs.
META_KEYS = ("bids_meta", "provenance")


_FIX_HINT = (
    "Re-run MRIQC on this scan (the container has it), or point --mriqc-dir at a complete MRIQC "
    "output folder."
)


#: IQMs that are >= 0 by definition, for which MRIQC's -1 means "could not compute" (the
#: ``summary_*`` statistics, e.g. a kurtosis, can be negative and are taken as written).
SENTINEL_IQMS = frozenset(n for n in ALL_IQMS if not n.startswith("summary_"))


@dataclass(frozen=True)
class IQMReading:
    """The IQMs of one scan, with NaN where MRIQC could not compute one.

    ``unavailable`` maps each such IQM to what the file held (``NaN``, ``null``, ``-1``,
    ``absent``) so the caller can name it in its flags. ``mriqc_version`` is the JSON's
    ``provenance.version`` (None for a group TSV row or when the file does not record it), read
    in the same pass so the file is parsed once.
    """

    values: dict[str, float]
    unavailable: dict[str, str]
    where: str
    mriqc_version: Any = None


@dataclass(frozen=True)
class IQMSource:
    """Where a scan's IQMs are: an MRIQC JSON, or a row of a group TSV."""

    kind: str  # "json" or "tsv"
    path: Path
    bids_name: str


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, sub in value.items():
            _flatten(f"{prefix}_{key}" if prefix else str(key), sub, out)
    else:
        out[prefix] = value


def _reading(raw: Mapping[str, Any], where: str, mriqc_version: Any = None) -> IQMReading:
    """Numeric IQMs from flattened ``raw`` values, sentinels and gaps as NaN and named."""
    values: dict[str, float] = {}
    unavailable: dict[str, str] = {}
    for key, value in raw.items():
        if isinstance(value, bool) or (isinstance(value, str) and not _is_na_text(value)):
            continue
        if value is None or (isinstance(value, str) and _is_na_text(value)):
            values[key], unavailable[key] = math.nan, "null" if value is None else repr(value)
            continue
        if not isinstance(value, (int, float)):
            continue
        number = float(value)
        if math.isnan(number):
            values[key], unavailable[key] = math.nan, "NaN"
        elif number == -1.0 and key in SENTINEL_IQMS:
            values[key], unavailable[key] = math.nan, "-1 (MRIQC's value for 'not computed')"
        else:
            values[key] = number
    return IQMReading(
        values=values, unavailable=unavailable, where=where, mriqc_version=mriqc_version
    )


def _is_na_text(value: str) -> bool:
    return value.strip().lower() in ("", "n/a", "na", "nan")


def _require(reading: IQMReading, required: Iterable[str]) -> dict[str, float]:
    for name in required:
        if name not in reading.values:
            raise DataError(
                f"{reading.where}: IQM {name!r} is missing (the model needs it). {_FIX_HINT}"
            )
        if name in reading.unavailable:
            raise DataError(
                f"{reading.where}: IQM {name!r} is empty/NaN ({reading.unavailable[name]}): "
                f"MRIQC could not compute it for this scan (its report shows why). {_FIX_HINT}"
            )
    return reading.values


def read_iqms(path: str | os.PathLike) -> IQMReading:
    """All numeric IQMs of one MRIQC JSON (``bids_meta``/``provenance`` dropped, nested keys
    joined with ``_`` as MRIQC's group TSV does); NaN, ``null`` and -1 sentinels are NaN and
    named in ``unavailable``. A file that is not JSON, or holds no T1w IQM, is a DataError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingInputError(f"MRIQC IQM file not found: {path}. {_FIX_HINT}") from None
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not a text (UTF-8) JSON file (byte {exc.start} cannot be decoded); the "
            f"file is corrupt. {_FIX_HINT}"
        ) from None
    except OSError as exc:
        raise MissingInputError(f"cannot read MRIQC IQM file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}, line {exc.lineno}: not valid JSON ({exc.msg}); the file is truncated or "
            f"corrupt. {_FIX_HINT}"
        ) from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object of IQMs, found {type(data).__name__}")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in META_KEYS:
            continue
        _flatten(key, value, flat)
    provenance = data.get("provenance")
    version = provenance.get("version") if isinstance(provenance, dict) else None
    return _reading(flat, str(path), version)


def read_iqm_json(path: str | os.PathLike, required: Iterable[str] = ()) -> dict[str, float]:
    """Numeric IQMs of one MRIQC JSON (NaN where MRIQC could not compute one, see
    :func:`read_iqms`); a missing or NaN ``required`` IQM is a DataError."""
    return _require(read_iqms(path), required)


def read_iqm_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """``bids_meta`` and ``provenance`` of an MRIQC JSON (empty when absent or not objects:
    they are provenance only, never a reason to fail a scan)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if not isinstance(data, dict):
        data = {}
    return {k: dict(data[k]) if isinstance(data.get(k), dict) else {} for k in META_KEYS}


def read_group_tsv(path: str | os.PathLike) -> pd.DataFrame:
    """An MRIQC ``group_T1w.tsv`` indexed by ``bids_name`` (e.g. ``sub-01_ses-1_T1w``).

    Early MRIQC (0.9-0.10) group tables have no ``bids_name``; they name each scan with
    ``subject_id`` (and ``session_id``, ``run_id`` when present), from which it is rebuilt.
    """
    path = Path(path)
    try:
        table = pd.read_csv(
            path,
            sep="\t",
            na_values=["n/a", "NaN", "nan", ""],
            dtype={c: str for c in ("bids_name", *_OLD_ID_COLUMNS)},
            float_precision="round_trip",  # the C parser's default is off by 1 ulp at times
        )
    except FileNotFoundError:
        raise MissingInputError(f"MRIQC group table not found: {path}. {_FIX_HINT}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read as a TSV ({exc}). {_FIX_HINT}") from None
    if "bids_name" not in table.columns and "subject_id" in table.columns:
        table.insert(0, "bids_name", [_old_bids_name(row) for _, row in table.iterrows()])
    if "bids_name" not in table.columns:
        raise DataError(
            f"{path}: no 'bids_name' column; MRIQC group tables name each scan in it "
            f"(e.g. sub-01_T1w). Is this an MRIQC group_T1w.tsv?"
        )
    table["bids_name"] = table["bids_name"].astype(str)
    dup = table["bids_name"][table["bids_name"].duplicated()]
    if len(dup):
        raise DataError(f"{path}: bids_name {dup.iloc[0]!r} appears more than once")
    return table.set_index("bids_name")


#: Scan-naming columns of MRIQC 0.9-0.10 group tables, in BIDS entity order.
_OLD_ID_COLUMNS = {"subject_id": "sub", "session_id": "ses", "run_id": "run"}


def _old_bids_name(row: pd.Series) -> str:
    parts = [
        f"{entity}-{row[col].strip().removeprefix(entity + '-')}"
        for col, entity in _OLD_ID_COLUMNS.items()
        if col in row.index and isinstance(row[col], str) and row[col].strip()
    ]
    return "_".join(parts + ["T1w"])


def group_row_iqms(table: pd.DataFrame, bids_name: str, path: str | os.PathLike) -> IQMReading:
    """The IQMs of one ``bids_name`` row of a group table (``n/a``, NaN, -1 as in
    :func:`read_iqms`)."""
    if bids_name not in table.index:
        raise MissingInputError(f"{path}: no row with bids_name {bids_name!r}. {_FIX_HINT}")
    line = int(table.index.get_loc(bids_name)) + 2
    raw: dict[str, Any] = {}
    for key, value in table.loc[bids_name].items():
        num = pd.to_numeric(value, errors="coerce")
        if isinstance(value, str) and pd.isna(num) and not _is_na_text(value):
            continue
        raw[str(key)] = float(num)
    return _reading(raw, f"{path}, line {line} ({bids_name})")


def iqms_from_group_row(
    table: pd.DataFrame, bids_name: str, path: str | os.PathLike, required: Iterable[str] = ()
) -> dict[str, float]:
    """The numeric IQMs of one ``bids_name`` row of a group table; a missing or NaN
    ``required`` IQM is a DataError."""
    return _require(group_row_iqms(table, bids_name, path), required)


def candidate_json_paths(mriqc_dir: Path, bids_name: str, rel_dir: str) -> list[Path]:
    """Where MRIQC versions put a scan's JSON, most recent layout first."""
    return [
        mriqc_dir / rel_dir / f"{bids_name}.json",
        mriqc_dir / f"{bids_name}.json",
        mriqc_dir / "derivatives" / f"{bids_name}.json",
    ]


def find_iqm_source(
    mriqc_dirs: Sequence[Path],
    bids_name: str,
    rel_dir: str,
    group_tables: Mapping[Path, pd.DataFrame] | None = None,
) -> IQMSource | None:
    """The first MRIQC JSON, else group-TSV row, holding ``bids_name`` in ``mriqc_dirs``.

    ``group_tables`` caches parsed ``group_T1w.tsv`` files (path → table) across scans.
    """
    for mdir in mriqc_dirs:
        for cand in candidate_json_paths(mdir, bids_name, rel_dir):
            if cand.is_file():
                return IQMSource("json", cand, bids_name)
    for mdir in mriqc_dirs:
        tsv = mdir / "group_T1w.tsv"
        if not tsv.is_file():
            continue
        if group_tables is not None:
            if tsv not in group_tables:
                group_tables[tsv] = read_group_tsv(tsv)  # type: ignore[index]
            table = group_tables[tsv]
        else:
            table = read_group_tsv(tsv)
        if bids_name in table.index:
            return IQMSource("tsv", tsv, bids_name)
    return None


__all__ = [
    "IQMReading",
    "IQMSource",
    "SENTINEL_IQMS",
    "META_KEYS",
    "candidate_json_paths",
    "find_iqm_source",
    "group_row_iqms",
    "iqms_from_group_row",
    "read_group_tsv",
    "read_iqm_json",
    "read_iqm_metadata",
    "read_iqms",
]
