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
    sessions_cache: dict[str, pd.DataFrame | None] = {}
    wanted = [age_column, sex_column, *extra_columns]
    found_columns = set(participants.columns)
    rows: dict[str, dict[str, Any]] = {}
    for scan in scans:
        values: dict[str, Any] = {c: np.nan for c in wanted}
        if scan.participant_id in participants.index:
            prow = participants.loc[scan.participant_id]
            for c in wanted:
                if c in participants.columns and pd.notna(prow[c]):
                    values[c] = prow[c]
        if scan.session:
            if scan.subject not in sessions_cache:
                stsv = bids_dir / scan.participant_id / f"{scan.participant_id}_sessions.tsv"
                sessions_cache[scan.subject] = _read_tsv(stsv) if stsv.is_file() else None
            stable = sessions_cache[scan.subject]
            if stable is not None and "session_id" in stable.columns:
                found_columns |= set(stable.columns)
                match = stable[stable["session_id"] == scan.session_id]
                if len(match):
                    for c in wanted:
                        if c in stable.columns and pd.notna(match.iloc[0][c]):
                            values[c] = match.iloc[0][c]
        rows[scan.bids_name] = values
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
    table = pd.DataFrame.from_dict(rows, orient="index", columns=wanted)
    errors: dict[str, str] = {}
    ages = pd.to_numeric(table[age_column], errors="coerce")
    sexes: list[Any] = []
    for name in table.index:
        raw_age, raw_sex = table.at[name, age_column], table.at[name, sex_column]
        problems = []
        if pd.isna(raw_age):
            problems.append(f"{age_column} is n/a")
        elif pd.isna(ages[name]):
            problems.append(f"{age_column} {raw_age!r} is not a number")
        sex = np.nan
        if pd.isna(raw_sex):
            problems.append(f"{sex_column} is n/a")
        else:
            try:
                sex = parse_sex(pd.Series([raw_sex], name=sex_column), sex_mapping).iloc[0]
            except Exception as exc:  # DataError/UsageError from parse_sex
                problems.append(str(exc).replace("row 0: ", ""))
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


__all__ = [
    "Covariates",
    "read_covariates",
]
