"""MRIQC outputs: read T1w image-quality metrics (IQMs) from IQM JSONs and ``group_T1w.tsv``.

MRIQC 0.9 to 24 write one JSON per scan (``sub-X[_ses-Y][_run-Z]_T1w.json``) holding the IQMs
as top-level numbers plus ``bids_meta`` (entities and sidecar metadata) and ``provenance``
(md5sum, software, version, settings, warnings); the group level gathers them into
``group_T1w.tsv`` with a ``bids_name`` column. Older releases put the JSONs flat in
``<out>/derivatives/``, newer ones mirror the BIDS tree (``<out>/sub-X/[ses-Y/]anat/``); both
are searched.
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

#: Keys of an MRIQC JSON that are not IQMs.
META_KEYS = ("bids_meta", "provenance")


_FIX_HINT = (
    "Re-run MRIQC on this scan (the container has it), or point --mriqc-dir at a complete MRIQC "
    "output folder."
)


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


def _check_iqms(values: Mapping[str, Any], required: Iterable[str], where: str) -> None:
    for name in required:
        if name not in values:
            raise DataError(f"{where}: IQM {name!r} is missing (the model needs it). {_FIX_HINT}")
        value = values[name]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise DataError(
                f"{where}: IQM {name!r} is empty/NaN; MRIQC could not compute it for this "
                f"scan. Check the scan (e.g. MRIQC's report) or re-run MRIQC. {_FIX_HINT}"
            )


def read_iqm_json(path: str | os.PathLike, required: Iterable[str] = ()) -> dict[str, float]:
    """Numeric IQMs of one MRIQC JSON (``bids_meta``/``provenance`` dropped, nested keys joined
    with ``_`` as MRIQC's group TSV does); a missing or NaN ``required`` IQM is a DataError."""
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
    iqms: dict[str, float] = {}
    for key, value in flat.items():
        if isinstance(value, bool):
            continue
        if value is None:
            iqms[key] = float("nan")
        elif isinstance(value, (int, float)):
            iqms[key] = float(value)
    _check_iqms(iqms, required, str(path))
    return iqms


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
    """An MRIQC ``group_T1w.tsv`` indexed by ``bids_name`` (e.g. ``sub-01_ses-1_T1w``)."""
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t", na_values=["n/a", "NaN", "nan", ""])
    except FileNotFoundError:
        raise MissingInputError(f"MRIQC group table not found: {path}. {_FIX_HINT}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read as a TSV ({exc}). {_FIX_HINT}") from None
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


def iqms_from_group_row(
    table: pd.DataFrame, bids_name: str, path: str | os.PathLike, required: Iterable[str] = ()
) -> dict[str, float]:
    """The numeric IQMs of one ``bids_name`` row of a group table."""
    if bids_name not in table.index:
        raise MissingInputError(f"{path}: no row with bids_name {bids_name!r}. {_FIX_HINT}")
    row = table.loc[bids_name]
    iqms = {}
    for key, value in row.items():
        num = pd.to_numeric(value, errors="coerce")
        if isinstance(value, str) and pd.isna(num):
            continue
        iqms[str(key)] = float(num)
    line = int(table.index.get_loc(bids_name)) + 2
    _check_iqms(iqms, required, f"{path}, line {line} ({bids_name})")
    return iqms


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
    "IQMSource",
    "META_KEYS",
    "candidate_json_paths",
    "find_iqm_source",
    "iqms_from_group_row",
    "read_group_tsv",
    "read_iqm_json",
    "read_iqm_metadata",
]
