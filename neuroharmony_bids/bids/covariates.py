"""Age, sex and extra columns of each scan from participants.tsv and sessions.tsv."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neuroharmony_bids.bids.layout import Scan
from neuroharmony_bids.errors import InvalidBIDSError, MissingInputError, UsageError
from neuroharmony_bids.harmonize.features import parse_sex

_NA_VALUES = ["n/a", "N/A", "NA", "nan", "NaN", ""]


def _read_tsv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t", dtype=str, na_values=_NA_VALUES, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InvalidBIDSError(f"{path}: cannot read as a TSV ({exc})") from None


@dataclass
class Covariates:
    """Per scan (index: bids_name): ``age``, ``sex`` ('M'/'F'), extra columns; and problems."""

    table: pd.DataFrame
    errors: dict[str, str]


def read_covariates(
    bids_dir: str | os.PathLike,
    scans: Sequence[Scan],
    age_column: str = "age",
    sex_column: str = "sex",
    sex_mapping: Mapping[str, str] | None = None,
    extra_columns: Sequence[str] = (),
) -> Covariates:
    """Age and sex (and e.g. a site column) of each scan from participants.tsv and sessions.tsv.

    A session's value (``sub-X/sub-X_sessions.tsv``) wins over the participant's, as BIDS
    intends for age. Scans whose age or sex is n/a or unreadable are listed in ``errors``
    (they fail individually); a column missing from both files is an error for the whole run.
    """
    bids_dir = Path(bids_dir)
    ptsv = bids_dir / "participants.tsv"
    if not ptsv.is_file():
        raise MissingInputError(
            f"{ptsv} not found: age and sex are needed to harmonize. Add a participants.tsv "
            f"with participant_id, {age_column} and {sex_column} columns"
        )
    participants = _read_tsv(ptsv)
    if "participant_id" not in participants.columns:
        raise InvalidBIDSError(f"{ptsv}: no participant_id column (BIDS requires it)")
    participants = participants.drop_duplicates("participant_id").set_index("participant_id")
    wanted = [age_column, sex_column, *extra_columns]
    found_columns = set(participants.columns)
    names = [scan.bids_name for scan in scans]
    # one vectorized lookup of every scan's participant row (n/a stays NaN)
    table = participants.reindex(
        [scan.participant_id for scan in scans],
        columns=list(dict.fromkeys(wanted)),
    )
    table = table.astype(object)  # sessions.tsv text may land in an all-n/a column
    table.index = pd.Index(names)
    # sessions.tsv: read once per subject, first row per session_id; its values win
    sessions_cache: dict[str, dict[str, dict[str, Any]] | None] = {}
    overrides: dict[str, dict[str, Any]] = {}
    for scan in scans:
        if not scan.session:
            continue
        if scan.subject not in sessions_cache:
            sessions_cache[scan.subject] = _session_rows(bids_dir, scan, wanted, found_columns)
        by_session = sessions_cache[scan.subject]
        if by_session and scan.session_id in by_session:
            overrides[scan.bids_name] = by_session[scan.session_id]
    for name, values in overrides.items():
        for c, v in values.items():
            table.at[name, c] = v
    table = table.infer_objects()  # the dtypes a table built from the values would have
    for col, flag in ((age_column, "--age-column"), (sex_column, "--sex-column")):
        if col not in found_columns:
            raise MissingInputError(
                f"column {col!r} not found in {ptsv} (columns: "
                f"{', '.join(participants.columns)}) nor in any sessions.tsv; add it, or name "
                f"the column holding it with {flag}"
            )
    for col in extra_columns:
        if col not in found_columns:
            raise UsageError(
                f"column {col!r} not found in {ptsv} (columns: "
                f"{', '.join(participants.columns)}) nor in any sessions.tsv; check --site-column"
            )
    errors: dict[str, str] = {}
    ages = pd.to_numeric(table[age_column], errors="coerce")
    raw_ages = table[age_column].tolist()
    raw_sexes = table[sex_column].tolist()
    parsed_sex: dict[str, tuple[Any, str | None]] = {}  # each distinct spelling parsed once
    sexes: list[Any] = []
    for name, raw_age, age, raw_sex in zip(names, raw_ages, ages.tolist(), raw_sexes, strict=True):
        problems = []
        if pd.isna(raw_age):
            problems.append(f"{age_column} is n/a")
        elif pd.isna(age):
            problems.append(f"{age_column} {raw_age!r} is not a number")
        sex = np.nan
        if pd.isna(raw_sex):
            problems.append(f"{sex_column} is n/a")
        else:
            if raw_sex not in parsed_sex:
                parsed_sex[raw_sex] = _parse_one_sex(raw_sex, sex_column, sex_mapping)
            sex, problem = parsed_sex[raw_sex]
            if problem:
                problems.append(problem)
        sexes.append(sex)
        if problems:
            errors[name] = (
                f"{'; '.join(problems)} (participants.tsv/sessions.tsv). Fill it in, or name "
                f"another column with --age-column/--sex-column"
            )
    out = pd.DataFrame({"age": ages.astype(float), "sex": sexes}, index=table.index)
    for col in extra_columns:
        out[col] = table[col]
    return Covariates(table=out, errors=errors)


def _session_rows(
    bids_dir: Path, scan: Scan, wanted: Sequence[str], found_columns: set[str]
) -> dict[str, dict[str, Any]] | None:
    """A subject's sessions.tsv as {session_id: its non-n/a values of ``wanted``} (the first
    row of a repeated session_id), or None without the file; adds its columns to
    ``found_columns``."""
    stsv = bids_dir / scan.participant_id / f"{scan.participant_id}_sessions.tsv"
    if not stsv.is_file():
        return None
    stable = _read_tsv(stsv)
    if "session_id" not in stable.columns:
        return None
    found_columns |= set(stable.columns)
    cols = [c for c in dict.fromkeys(wanted) if c in stable.columns]
    out: dict[str, dict[str, Any]] = {}
    for session_id, *values in stable[["session_id", *cols]].itertuples(index=False):
        if session_id not in out:
            out[session_id] = {c: v for c, v in zip(cols, values, strict=True) if pd.notna(v)}
    return out


def _parse_one_sex(
    raw: Any, column: str, mapping: Mapping[str, str] | None
) -> tuple[Any, str | None]:
    """One sex spelling as 'M'/'F', or NaN and the problem (the core's parser and message)."""
    try:
        return parse_sex(pd.Series([raw], name=column), mapping).iloc[0], None
    except Exception as exc:  # DataError/UsageError from parse_sex
        return np.nan, str(exc).replace("row 0: ", "")


__all__ = [
    "Covariates",
    "read_covariates",
]
