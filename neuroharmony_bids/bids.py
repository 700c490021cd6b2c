"""The input BIDS dataset: validation, T1w scans, covariates and scanner metadata.

Querying (pybids ``BIDSLayout``) is kept apart from reading derivatives: this module only
answers "which T1w scans, of whom, with which age/sex and scanner". pybids never touches the
network; BIDS validation is a separate step (``bids-validator-deno``, offline), so the layout is
built with ``validate=False``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neuroharmony_bids.errors import (
    InvalidBIDSError,
    MissingInputError,
    NothingSelectedError,
    UsageError,
)
from neuroharmony_bids.harmonize.features import parse_sex

#: Sidecar fields carried into every output (scanner identity).
SCANNER_FIELDS = (
    "Manufacturer",
    "ManufacturersModelName",
    "MagneticFieldStrength",
    "DeviceSerialNumber",
    "SoftwareVersions",
)

_LABEL_RE = re.compile(r"^[a-zA-Z0-9]+$")
_NA_VALUES = ["n/a", "N/A", "NA", "nan", "NaN", ""]


@dataclass(frozen=True)
class Scan:
    """One T1w image: its BIDS entities, path and scanner metadata."""

    subject: str
    path: Path
    entities: tuple[tuple[str, str], ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def session(self) -> str | None:
        return dict(self.entities).get("ses")

    @property
    def participant_id(self) -> str:
        return f"sub-{self.subject}"

    @property
    def session_id(self) -> str | None:
        return f"ses-{self.session}" if self.session else None

    @property
    def prefix(self) -> str:
        """``sub-X[_ses-Y][_acq-Z][_run-N]``: the stem shared by all outputs of this scan."""
        return "_".join([f"sub-{self.subject}"] + [f"{k}-{v}" for k, v in self.entities])

    @property
    def bids_name(self) -> str:
        """MRIQC's name for the scan (``sub-X[_ses-Y]..._T1w``)."""
        return f"{self.prefix}_T1w"

    @property
    def rel_dir(self) -> str:
        """``sub-X[/ses-Y]/anat``."""
        ses = self.session
        return f"sub-{self.subject}/" + (f"ses-{ses}/" if ses else "") + "anat"

    def relpath(self, bids_dir: str | os.PathLike) -> str:
        """Path of the image relative to the dataset root (POSIX), symlinked roots included."""
        path, root = Path(self.path), Path(bids_dir)
        try:
            return path.relative_to(root).as_posix()
        except ValueError:  # pybids resolves symlinks; the user may have passed a link
            return path.resolve().relative_to(root.resolve()).as_posix()


def clean_labels(labels: Iterable[str] | None, entity: str = "sub") -> tuple[str, ...]:
    """Labels without their ``sub-``/``ses-`` prefix; anything but letters/digits is refused.

    Refusing ``/``, ``..``, wildcards and shell characters keeps a label from ever naming a
    path outside the dataset.
    """
    out: list[str] = []
    flag = "--participant-label" if entity == "sub" else "--session-label"
    for raw in labels or ():
        label = str(raw).strip()
        if label.startswith(f"{entity}-"):
            label = label[len(entity) + 1 :]
        if not _LABEL_RE.match(label):
            raise UsageError(
                f"{flag} {raw!r}: a BIDS label has only letters and digits (e.g. 01 or "
                f"{entity}-01); paths, '..', '/', wildcards and shell characters are refused"
            )
        if label not in out:
            out.append(label)
    return tuple(out)


def validate_dataset(bids_dir: str | os.PathLike, timeout: float = 900) -> list[dict[str, Any]]:
    """Run ``bids-validator-deno`` (offline); raise InvalidBIDSError on errors, return warnings."""
    exe = shutil.which("bids-validator-deno")
    if exe is None:
        raise MissingInputError(
            "the BIDS validator (bids-validator-deno) is not installed: `pip install "
            "bids-validator-deno`, use the container, or pass --skip-bids-validation"
        )
    try:
        proc = subprocess.run(
            [exe, "--format", "json", str(bids_dir)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "DENO_NO_UPDATE_CHECK": "1"},
        )
    except subprocess.TimeoutExpired:
        raise InvalidBIDSError(
            f"the BIDS validator did not finish in {timeout:.0f} s on {bids_dir}; pass "
            f"--skip-bids-validation to proceed without it"
        ) from None
    try:
        report = json.loads(proc.stdout)
        issues = report["issues"]["issues"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise InvalidBIDSError(
            f"the BIDS validator failed on {bids_dir} (exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[:500]}. Is it a BIDS dataset? Pass "
            f"--skip-bids-validation to proceed anyway"
        ) from None
    errors = [i for i in issues if i.get("severity") == "error"]
    if errors:
        shown = "; ".join(
            f"{e.get('code')}{'/' + e['subCode'] if e.get('subCode') else ''} at "
            f"{e.get('location', '?')}"
            for e in errors[:5]
        )
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise InvalidBIDSError(
            f"{bids_dir} is not a valid BIDS dataset: {len(errors)} validator error(s): "
            f"{shown}{more}. Fix them (run `bids-validator-deno {bids_dir}` for details) or "
            f"pass --skip-bids-validation"
        )
    return [i for i in issues if i.get("severity") == "warning"]


def load_layout(bids_dir: str | os.PathLike, database_dir: str | os.PathLike | None = None):
    """A pybids layout of the raw dataset (derivatives not indexed, no validation, no network).

    Sidecar metadata is not indexed (that is most of pybids' indexing time on large datasets);
    :func:`sidecar_metadata` reads the few sidecars of the selected scans instead.
    """
    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    bids_dir = Path(bids_dir)
    if not (bids_dir / "dataset_description.json").is_file():
        raise InvalidBIDSError(
            f"{bids_dir} has no dataset_description.json: not a BIDS dataset root. Point "
            f"bids_dir at the dataset root folder"
        )
    kwargs: dict[str, Any] = {}
    if database_dir is not None:
        kwargs["database_path"] = str(database_dir)
    try:
        return BIDSLayout(
            str(bids_dir),
            validate=False,
            derivatives=False,
            indexer=BIDSLayoutIndexer(validate=False, index_metadata=False),
            **kwargs,
        )
    except Exception as exc:  # pybids raises many types for unreadable datasets
        raise InvalidBIDSError(f"pybids cannot index {bids_dir}: {exc}") from exc


def scanner_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`SCANNER_FIELDS` present in a sidecar (inheritance already applied)."""
    return {k: metadata[k] for k in SCANNER_FIELDS if k in metadata and metadata[k] is not None}


def find_scans(
    bids_dir: str | os.PathLike,
    participant_label: Sequence[str] = (),
    session_label: Sequence[str] = (),
    layout: Any = None,
) -> list[Scan]:
    """Every T1w image (per subject, session, acquisition and run) the filters select.

    Raises NothingSelectedError (18) when the filters match nothing, naming what exists.
    """
    bids_dir = Path(bids_dir).resolve()
    subjects = clean_labels(participant_label, "sub")
    sessions = clean_labels(session_label, "ses")
    layout = layout if layout is not None else load_layout(bids_dir)
    # One query, entities parsed from names: pybids' get_subjects()/get_entities() cost
    # seconds on 1,000 subjects.
    every = [
        (f, *parse_scan_name(Path(f.path).name))
        for f in layout.get(
            suffix="T1w", extension=[".nii", ".nii.gz"], datatype="anat", return_type="object"
        )
    ]
    all_subjects = sorted({sub for _, sub, _ in every})
    missing = [s for s in subjects if s not in all_subjects]
    if subjects and len(missing) == len(subjects):
        shown = ", ".join(all_subjects[:10]) + (" ..." if len(all_subjects) > 10 else "")
        raise NothingSelectedError(
            f"--participant-label {' '.join(subjects)}: no participant with a T1w image of "
            f"that label in {bids_dir} (participants with T1w images: "
            f"{shown or 'none'})"
        )
    selected = [
        (f, sub, ents)
        for f, sub, ents in every
        if (not subjects or sub in subjects) and (not sessions or dict(ents).get("ses") in sessions)
    ]
    if not selected:
        what = []
        if subjects:
            what.append(f"participants {', '.join(subjects)}")
        if sessions:
            what.append(f"sessions {', '.join(sessions)}")
        have = ", ".join(sorted({dict(e).get("ses") for _, _, e in every} - {None})) or "none"
        raise NothingSelectedError(
            f"no T1w image (sub-*/[ses-*/]anat/*_T1w.nii[.gz]) in {bids_dir}"
            + (f" for {' and '.join(what)}" if what else "")
            + (f"; sessions in the dataset: {have}" if sessions else "")
            + ". Check the labels, or the dataset layout"
        )
    cache: dict[Any, Any] = {}
    scans = [
        Scan(
            subject=sub,
            path=Path(f.path),
            entities=ents,
            metadata=scanner_metadata(sidecar_metadata(bids_dir, Path(f.path), cache)),
        )
        for f, sub, ents in selected
    ]
    scans.sort(key=lambda s: s.prefix)
    return scans


def _entities_of(name: str) -> dict[str, str] | None:
    """Key-value entities of a sidecar name (``sub-01_acq-x_T1w.json`` or ``T1w.json``)."""
    parts = name[: -len(".json")].split("_")[:-1]
    out = {}
    for part in parts:
        key, sep, value = part.partition("-")
        if not sep:
            return None
        out[key] = value
    return out


def sidecar_metadata(
    bids_dir: str | os.PathLike, image: str | os.PathLike, cache: dict[Any, Any] | None = None
) -> dict[str, Any]:
    """The image's JSON metadata after the BIDS inheritance principle.

    Sidecars ``*_T1w.json`` whose entities are all among the image's, from the dataset root
    down to the image's folder, are merged; deeper (more specific) files win.
    """
    cache = {} if cache is None else cache
    bids_dir = Path(bids_dir).resolve()
    image = Path(image)
    _, ents = parse_scan_name(image.name)
    subject = image.name.split("_", 1)[0][4:]
    image_ents = {"sub": subject, **dict(ents)}
    suffix = image.name.split(".", 1)[0].rsplit("_", 1)[-1]
    folders = [bids_dir]
    try:
        rel = image.parent.resolve().relative_to(bids_dir)
    except ValueError:
        rel = Path()
    for part in rel.parts:
        folders.append(folders[-1] / part)
    merged: dict[str, Any] = {}
    for folder in folders:
        key = ("listing", folder)
        names = cache.get(key)
        if names is None:
            try:
                names = sorted(n for n in os.listdir(folder) if n.endswith(f"{suffix}.json"))
            except OSError:
                names = []
            cache[key] = names
        for name in names:
            if not (name == f"{suffix}.json" or name.endswith(f"_{suffix}.json")):
                continue
            side = _entities_of(name)
            if side is None or any(image_ents.get(k) != v for k, v in side.items()):
                continue
            path = folder / name
            data = cache.get(path)
            if data is None:
                try:
                    data = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError) as exc:
                    raise InvalidBIDSError(
                        f"{path}: unreadable JSON sidecar ({exc}); fix or remove it"
                    ) from None
                cache[path] = data
            if isinstance(data, dict):
                merged.update(data)
    return merged


def parse_scan_name(filename: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``sub-01_ses-1_acq-mp_run-2_T1w.nii.gz`` → ("01", (("ses","1"), ("acq","mp"), ("run","2"))).

    Entities keep the file's own order (BIDS fixes it), so the output prefix reproduces the
    input name. Pure string work: pybids' per-file entity queries cost ~10 ms each.
    """
    stem = filename.split(".", 1)[0]
    parts = stem.split("_")
    if not parts[0].startswith("sub-") or len(parts) < 2:
        raise InvalidBIDSError(f"{filename}: not a BIDS file name (sub-<label>_..._T1w)")
    pairs = []
    for part in parts[1:-1]:
        key, sep, value = part.partition("-")
        if not sep:
            raise InvalidBIDSError(f"{filename}: {part!r} is not a key-value entity")
        pairs.append((key, value))
    return parts[0][4:], tuple(pairs)


def scans_per_subject(layout: Any) -> dict[str, int]:
    """How many T1w images each subject has (all sessions)."""
    counts: dict[str, int] = {}
    for path in layout.get(
        suffix="T1w", extension=[".nii", ".nii.gz"], datatype="anat", return_type="filename"
    ):
        sub = parse_scan_name(Path(path).name)[0]
        counts[sub] = counts.get(sub, 0) + 1
    return counts


def _read_tsv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t", dtype=str, na_values=_NA_VALUES, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InvalidBIDSError(f"{path}: cannot read as a TSV ({exc})") from None


def parse_sex_mapping(pairs: Iterable[str] | Mapping[str, str] | None) -> dict[str, str]:
    """``["1=M", "2=F"]`` → ``{"1": "M", "2": "F"}``."""
    if pairs is None:
        return {}
    if isinstance(pairs, Mapping):
        items = list(pairs.items())
    else:
        items = []
        for pair in pairs:
            key, sep, value = str(pair).partition("=")
            if not sep or not key.strip():
                raise UsageError(
                    f"--sex-mapping {pair!r}: write CODE=SEX pairs, e.g. --sex-mapping 1=M 2=F"
                )
            items.append((key.strip(), value.strip()))
    out = {}
    for key, value in items:
        if value.upper() not in ("M", "F"):
            raise UsageError(f"--sex-mapping {key}={value}: the sex must be M or F")
        out[str(key)] = value.upper()
    return out


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


def freesurfer_subject_candidates(scan: Scan, single_scan_subject: bool) -> list[str]:
    """FreeSurfer subject names that may hold this scan, most specific first.

    ``sub-X`` alone is only accepted when the subject has a single T1w in the dataset (sMRIPrep
    merges sessions into one ``sub-X``; using it for each session would be wrong).
    """
    names = [scan.prefix]
    if scan.session:
        names.append(f"{scan.participant_id}_{scan.session_id}")
    if single_scan_subject:
        names.append(scan.participant_id)
    return list(dict.fromkeys(names))


__all__ = [
    "Covariates",
    "SCANNER_FIELDS",
    "Scan",
    "clean_labels",
    "find_scans",
    "freesurfer_subject_candidates",
    "load_layout",
    "parse_scan_name",
    "parse_sex_mapping",
    "read_covariates",
    "scanner_metadata",
    "scans_per_subject",
    "sidecar_metadata",
    "validate_dataset",
]
