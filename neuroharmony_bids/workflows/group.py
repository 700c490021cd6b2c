"""Group level: gather every scan's outputs into group tables, list failures, report, train.

Reads only what the participant level wrote (the per-scan TSVs and their JSON sidecars, which
carry IQMs, covariates and scanner metadata), so it works after SLURM arrays of participant
jobs. Scans whose four files are not all there yet (a participant job still writing, or one
that was killed) are skipped and named, never half-read.

Outputs at the root of the output folder::

    group_desc-raw_morph.tsv (+ .json)         one row per scan: ids, age, sex, site, scanner,
                                               IQMs, raw volumes
    group_desc-harmonized_morph.tsv (+ .json)  ids, covariates, harmonized volumes, nh_* flags
    group_failed.tsv                           failed and incomplete scans, with the reason
    group_outofrange.tsv                       scans outside the model's training range
    group_report.html                          the group report
    models/<name>.*  (+ model card)            with --train
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from neuroharmony_bids.atomic import TMP_PREFIX
from neuroharmony_bids.bids import derivatives as D
from neuroharmony_bids.bids import failures as F
from neuroharmony_bids.bids.covariates import read_covariates
from neuroharmony_bids.bids.layout import SCANNER_FIELDS, Scan, scan_from_name, scanner_site
from neuroharmony_bids.errors import (
    MissingInputError,
    NeuroharmonyError,
    NothingSelectedError,
    UsageError,
)
from neuroharmony_bids.harmonize.features import ALL_IQMS
from neuroharmony_bids.reports.citation import scan_versions
from neuroharmony_bids.settings import Settings
from neuroharmony_bids.tabular import write_blocks
from neuroharmony_bids.workflows.participant import load_model_and_info
from neuroharmony_bids.workflows.results import Progress, RunResult

LOGGER = logging.getLogger("neuroharmony_bids")

_PREFIX_RE = re.compile(
    r"^(sub-[a-zA-Z0-9]+(?:_[a-z]+-[a-zA-Z0-9]+)*)_desc-([a-zA-Z0-9]+)_morph\.(tsv|json)$"
)
_FILES = ("raw_tsv", "raw_json", "harmonized_tsv", "harmonized_json")


@dataclass
class FoundScan:
    """One scan's outputs in the output folder."""

    scan: Scan
    files: dict[str, Path] = field(default_factory=dict)
    writing: bool = False

    @property
    def missing(self) -> list[str]:
        return [k for k in _FILES if k not in self.files]


def _subfolders(folder: Path) -> list[str]:
    """Names of the folders in ``folder``, sorted (one listing, no stat per entry)."""
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if e.is_dir())
    except OSError:
        return []


def _anat_dirs(output_dir: Path) -> list[Path]:
    """The ``sub-*/anat`` and ``sub-*/ses-*/anat`` folders of the output folder: one listing
    per subject (two globs listed and checked each of 5,000 subjects' folders again)."""
    anat = []
    for sub in (n for n in _subfolders(output_dir) if n.startswith("sub-")):
        for name in _subfolders(output_dir / sub):
            if name == "anat":
                anat.append(output_dir / sub / name)
            elif name.startswith("ses-") and (output_dir / sub / name / "anat").is_dir():
                anat.append(output_dir / sub / name / "anat")
    return anat


def discover_outputs(
    output_dir: Path,
    bids_dir: Path,
    participant_label: Sequence[str] = (),
    session_label: Sequence[str] = (),
) -> list[FoundScan]:
    """Every scan with at least one per-scan output, optionally filtered by labels."""
    found: dict[str, FoundScan] = {}
    for anat in _anat_dirs(output_dir):
        try:
            names = sorted(os.listdir(anat))
        except OSError:
            continue
        writing = any(n.startswith(TMP_PREFIX) for n in names)
        for name in names:
            m = _PREFIX_RE.match(name)
            if not m or m.group(2) not in D.DESCRIPTIONS:
                continue
            prefix = m.group(1)
            item = found.get(prefix)
            if item is None:
                item = found[prefix] = FoundScan(scan_from_name(bids_dir, f"{prefix}_T1w"))
            item.files[f"{m.group(2)}_{m.group(3)}"] = anat / name
            item.writing = item.writing or writing
    return filter_outputs([found[k] for k in sorted(found)], participant_label, session_label)


def filter_outputs(
    scans: Sequence[FoundScan],
    participant_label: Sequence[str] = (),
    session_label: Sequence[str] = (),
) -> list[FoundScan]:
    """The scans whose subject and session are among the labels (all when none are given)."""
    return [
        s
        for s in scans
        if (not participant_label or s.scan.subject in participant_label)
        and (not session_label or s.scan.session in session_label)
    ]


def _cell(value: Any) -> Any:
    """A TSV cell as a number where it is one (``n/a`` or empty-by-reader is missing), else
    the text."""
    if value is None or value == "n/a":
        return np.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def _split_one_row(path: Path, text: str) -> tuple[str, str]:
    """(header line, value line) of a one-row TSV; ValueError naming the file when it is not."""
    lines = text.split("\n")
    if len(lines) < 2 or not lines[1]:
        raise ValueError(f"{path}: expected a header and one row")
    if any(lines[2:]):
        raise ValueError(f"{path}: expected one row, found {len([x for x in lines[1:] if x])}")
    n_header, n_values = lines[0].count("\t") + 1, lines[1].count("\t") + 1
    if n_header != n_values:
        raise ValueError(f"{path}: header has {n_header} columns, row has {n_values}")
    return lines[0], lines[1]


def _read_files(paths: Sequence[Path]) -> list[bytes | OSError]:
    """Every file's bytes (or the error reading it), read by a small thread pool: at 5,000
    scans the group level opens 15,000 files, and on a cluster file system each read waits on
    the network or disk far longer than it needs the CPU."""

    def read(chunk: Sequence[Path]) -> list[bytes | OSError]:
        out: list[bytes | OSError] = []
        for path in chunk:
            try:
                out.append(path.read_bytes())
            except OSError as exc:
                out.append(exc)
        return out

    # a few long chunks, not one task per file: 15,000 futures cost more than the reads
    size = max(1, -(-len(paths) // _READERS))
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    with ThreadPoolExecutor(max_workers=_READERS) as pool:
        return [data for part in pool.map(read, chunks) for data in part]


def _read_rows(text: str, names: list[str], wanted: list[str]) -> pd.DataFrame:
    """The ``wanted`` columns of header-less TSV lines, parsed by pyarrow (several times
    faster than pandas' exact "round_trip" float parser, and as exact: both give the double
    nearest the text). ``n/a`` is missing; only numbers, booleans and text are inferred
    (a date-like or time-like cell stays text, as pandas keeps it)."""
    import pyarrow as pa
    from pyarrow import csv as pacsv

    def read(as_text: Sequence[str] = ()) -> pa.Table:
        return pacsv.read_csv(
            io.BytesIO(text.encode("utf-8")),
            read_options=pacsv.ReadOptions(column_names=names),
            parse_options=pacsv.ParseOptions(
                delimiter="\t", quote_char=False, double_quote=False, escape_char=False
            ),
            convert_options=pacsv.ConvertOptions(
                include_columns=wanted, null_values=["n/a"], strings_can_be_null=True,
                column_types={n: pa.string() for n in as_text},
            ),
        )  # fmt: skip

    def plain(kind: pa.DataType) -> bool:
        return bool(
            pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
            or pa.types.is_null(kind) or pa.types.is_string(kind)
        )  # fmt: skip

    table = read()
    other = [f.name for f in table.schema if not plain(f.type)]
    if other:
        table = read(other)
    # a column of n/a only is float NaN, as pandas reads it
    schema = [f.with_type(pa.float64()) if pa.types.is_null(f.type) else f for f in table.schema]
    return table.cast(pa.schema(schema)).to_pandas()


def _stack_rows(rows: Sequence[tuple[int, str, str]], keep: frozenset[str]) -> pd.DataFrame:
    """One frame from many one-row TSVs, parsed in one pass per distinct header.

    ``rows`` are (position, header line, value line); the result is indexed by position and
    holds only the ``keep`` columns. ``n/a`` is missing, numbers are floats, and a text cell
    stays text without turning the rest of its column into text.
    """
    by_header: dict[str, list[tuple[int, str]]] = {}
    for pos, header, values in rows:
        by_header.setdefault(header, []).append((pos, values))
    frames = []
    for header, items in by_header.items():
        names = header.split("\t")
        wanted = [n for n in names if n in keep]
        if not wanted:
            frames.append(pd.DataFrame(index=[p for p, _ in items]))
            continue
        frame = _read_rows("\n".join(v for _, v in items), names, wanted)
        for name in frame.columns:  # floats whatever the text looked like ("6442"), and a
            kind = frame[name].dtype.kind  # stray text cell leaves the others numbers
            if kind in "iub":
                frame[name] = frame[name].astype(float)
            elif kind == "O":
                frame[name] = frame[name].map(_cell)
        frame.index = [p for p, _ in items]
        frames.append(frame)
    return pd.concat(frames).sort_index() if len(frames) > 1 else frames[0]


def _parse_outputs(files: Mapping[str, Path], contents: Sequence[bytes | OSError]) -> list[Any]:
    """One scan's (raw TSV lines, harmonized TSV lines, raw sidecar); a ValueError names the
    file that is unreadable, not UTF-8, not one row, or not a JSON object."""
    parsed: list[Any] = []
    for key, got in zip(_READ, contents, strict=True):
        path = files[key]
        try:
            if isinstance(got, OSError):
                raise got
            if key.endswith("_json"):
                value = json.loads(got)
                if not isinstance(value, dict):
                    raise ValueError("not a JSON object")
            else:
                value = _split_one_row(path, got.decode("utf-8"))
        except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError too
            where = "" if str(path) in str(exc) else f"{path}: "
            raise ValueError(f"{where}{exc}") from None
        parsed.append(value)
    return parsed


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class Collected(NamedTuple):
    """What :func:`collect_tables` read."""

    raw: pd.DataFrame
    harmonized: pd.DataFrame
    problems: list[dict[str, Any]]
    #: the (FreeSurfer, MRIQC) versions of the sidecars read (reports.citation.scan_versions)
    versions: set[tuple[str | None, str | None]]


def collect_tables(found: Sequence[FoundScan], log: logging.Logger) -> Collected:
    """(raw table, harmonized table, problems, versions) from complete scans; others become
    problems.

    All files are read first (thread pool), each checked on its own (one unreadable scan is a
    problem, not an error), then the one-row TSVs are parsed together, one pass per distinct
    header, instead of cell by cell.
    """
    problems: list[dict[str, Any]] = []
    progress = Progress("group", len(found), log)
    # regions, their posterior SD (<region>_sd) and the nh_* flags
    regions, iqm_names = frozenset(D.REGION_ORDER), frozenset(ALL_IQMS)
    harm_names = regions | frozenset(map(D.sd_column, D.REGION_ORDER)) | frozenset(D.NH_COLUMNS)
    paths = [item.files[k] for item in found if not item.missing for k in _READ]
    data = iter(_read_files(paths))
    common_rows: list[dict[str, Any]] = []
    iqm_rows: list[dict[str, float]] = []
    raw_rows: list[tuple[int, str, str]] = []
    harm_rows: list[tuple[int, str, str]] = []
    versions: set[tuple[str | None, str | None]] = set()
    for item in found:
        scan = item.scan
        ids = {"bids_name": scan.bids_name, **D.id_columns(scan)}
        progress.update()
        if item.missing:
            state = "being written" if item.writing else "incomplete"
            problems.append(
                {
                    **ids,
                    "reason": f"{state}: missing {', '.join(item.missing)} (a participant job is "
                    f"still running, or was interrupted: re-run the participant level for "
                    f"{scan.participant_id})",
                }
            )
            continue
        try:
            raw, harm, meta = _parse_outputs(item.files, [next(data) for _ in _READ])
        except ValueError as exc:
            problems.append({**ids, "reason": f"unreadable output: {exc}"})
            continue
        versions.add(scan_versions(meta))
        cov = meta.get("Covariates") or {}
        iqms = (meta.get("ImageQualityMetrics") or {}).get("Values") or {}
        pos = len(common_rows)
        common_rows.append(
            {
                **ids,
                "age": _num(cov.get("age")),
                "sex": cov.get("sex"),
                **{k: meta[k] for k in SCANNER_FIELDS if k in meta},
            }
        )
        iqm_rows.append({k: _num(v) for k, v in iqms.items() if k in iqm_names})
        raw_rows.append((pos, *raw))
        harm_rows.append((pos, *harm))
    if not common_rows:
        return Collected(pd.DataFrame(), pd.DataFrame(), problems, versions)
    common = pd.DataFrame(common_rows)
    raw_table = pd.concat(
        [common, pd.DataFrame(iqm_rows, dtype=float), _stack_rows(raw_rows, regions)], axis=1
    )
    harm_table = pd.concat([common, _stack_rows(harm_rows, harm_names)], axis=1)
    return Collected(raw_table, harm_table, problems, versions)


#: The per-scan files the group level reads (covariates, IQMs and scanner fields come from the
#: raw sidecar).
_READ = ("raw_tsv", "harmonized_tsv", "raw_json")
#: Threads reading the per-scan files.
_READERS = 8


def _order(table: pd.DataFrame, site_first: bool = True) -> pd.DataFrame:
    if table.empty:
        return table
    ids = [c for c in ("bids_name", *D.ID_COLUMNS) if c in table]
    cov = [c for c in ("age", "sex", "site") if c in table]
    scanner = [c for c in SCANNER_FIELDS if c in table]
    iqms = [c for c in ALL_IQMS if c in table]
    regions = [c for c in D.REGION_ORDER if c in table]
    nh = [c for c in D.NH_COLUMNS if c in table]
    cols = ids + cov + scanner + iqms + regions + D.sd_columns(list(table.columns)) + nh
    ordered = table[cols]
    if not ordered["bids_name"].is_monotonic_increasing:  # gathered in name order already
        ordered = ordered.sort_values("bids_name", kind="stable")
    return ordered.reset_index(drop=True)


def site_labels(settings: Settings, table: pd.DataFrame) -> tuple[pd.Series, str]:
    """Each scan's site: ``--site-column`` from participants/sessions.tsv, else the scanner."""
    if settings.site_column:
        scans = [scan_from_name(settings.bids_dir, b) for b in table["bids_name"]]
        covs = read_covariates(
            settings.bids_dir,
            scans,
            age_column=settings.age_column,
            sex_column=settings.sex_column,
            sex_mapping=settings.sex_mapping_dict,
            extra_columns=[settings.site_column],
        )
        values = covs.table[settings.site_column].reindex(table["bids_name"]).to_numpy()
        return pd.Series(values, index=table.index, dtype=object), (
            f"the {settings.site_column!r} column of participants.tsv/sessions.tsv"
        )
    labels, source = scanner_site(table)
    if labels is None:
        return pd.Series(np.nan, index=table.index, dtype=object), source
    return labels, source


def harmonize_jointly(raw: pd.DataFrame, model: Any, log: logging.Logger) -> pd.DataFrame | None:
    """Harmonize scans that share a site together (the several-scans-per-scanner path).

    One scan of a site gets the single-scan answer; more people move each site's estimated
    location and scale toward what ComBat fitted with that site would give, without touching
    the model's training data. Scans without a site label, or that the model refuses, are left
    out (they are listed in group_failed.tsv by the participant level).
    """
    from neuroharmony_bids.harmonize.apply import harmonize_valid_rows

    if "site" not in raw or raw["site"].isna().all():
        log.info("joint harmonization skipped: no site labels (use --site-column)")
        return None
    table = raw[raw["site"].notna()].reset_index(drop=True)
    # several T1w of one person (runs, acquisitions, sessions) are one vote, not n people,
    # when a site's effect is estimated; every scan is then harmonized with that estimate.
    # Rows are validated in the same pass; a refused one counts in no site's estimate.
    done = harmonize_valid_rows(
        table, model, site_column="site", person_column="participant_id", return_sd=True
    )
    for pos, reason in done.refused.items():  # e.g. a FastSurfer scan: no Desikan cortex
        log.warning("%s left out of the joint table: %s", table["bids_name"].iloc[pos], reason)
    if done.harmonized.empty:
        return None
    joint = pd.concat([done.harmonized, done.sd.add_suffix(D.SD_SUFFIX)], axis=1)
    table = table.iloc[done.rows]
    counts = table["site"].value_counts()
    people = table.groupby("site")["participant_id"].nunique()
    log.info(
        "joint harmonization: %d scans of %d people from %d site(s) (%d with a single scan)",
        len(joint), int(people.sum()), len(counts), int((counts == 1).sum()),
    )  # fmt: skip
    return joint


def _write_table(path: Path, table: pd.DataFrame, rounded: Mapping[str, int] | None = None) -> Path:
    """Write a group TSV through the table writer (pyarrow: pandas' ``to_csv`` formats one
    float at a time, seconds per table at 5,000 scans); atomic and byte-identical across runs.
    Numbers are written with the shortest text that reads back to the same float; ``rounded``
    columns ({column: decimals}) rounded first."""
    try:
        write_blocks(path, [table], sep="\t", rounded=rounded)
        return path
    except OSError as exc:
        raise NeuroharmonyError(
            f"cannot write {path}: {exc.strerror or exc}. Free disk space (or fix permissions) "
            f"and re-run the group level"
        ) from None


def write_group_tables(
    output_dir: Path, raw: pd.DataFrame, harmonized: pd.DataFrame, problems: pd.DataFrame,
    site_source: str,
) -> dict[str, Path]:  # fmt: skip
    """Group TSVs (+ data dictionaries), failed and out-of-range lists; deterministic."""
    out: dict[str, Path] = {}
    for desc, table in (("raw", raw), ("harmonized", harmonized)):
        path = output_dir / f"group_desc-{desc}_morph.tsv"
        _write_table(path, table)
        dictionary = D.column_dictionary(list(table.columns))
        if "site" in dictionary:
            dictionary["site"] = {"Description": f"Site, from {site_source}"}
        D.write_output(path.with_suffix(".json"), json.dumps(dictionary, indent=2) + "\n")
        out[f"{desc}_tsv"] = path
    failed_cols = ["bids_name", "participant_id", "session_id", "reason"]
    failed = problems.reindex(columns=failed_cols).sort_values("bids_name", kind="stable")
    out["failed_tsv"] = _write_table(output_dir / "group_failed.tsv", failed)
    oor_cols = [
        "bids_name", "participant_id", "session_id", "site", "nh_status", "nh_confidence",
        "nh_out_of_range_features",
    ]  # fmt: skip
    if len(harmonized) and "nh_out_of_range" in harmonized:
        flag = pd.to_numeric(harmonized["nh_out_of_range"], errors="coerce") == 1
        flag |= harmonized.get("nh_status", pd.Series("", index=harmonized.index)) == "unharmonized"
        oor = harmonized[flag]
    else:
        oor = harmonized.iloc[0:0]
    out["outofrange_tsv"] = _write_table(
        output_dir / "group_outofrange.tsv", oor.reindex(columns=oor_cols)
    )
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "", text)[:40] or "dataset"


def train_model(
    settings: Settings, raw: pd.DataFrame, log: logging.Logger, site_source: str = "site"
) -> dict[str, Path]:
    """``--train``: fit a dataset-specific harmonizer on the raw group table (with its
    leave-one-site-out figures, harmonize.train) and save it with a model card (reports)."""
    try:
        from neuroharmony_bids.harmonize.train import train_on_labelled_sites
        from neuroharmony_bids.reports.model_card import save_with_card
    except ImportError as exc:
        raise NeuroharmonyError(f"training is unavailable in this installation ({exc})") from exc
    dropped = int(raw["site"].isna().sum())
    if dropped:
        log.warning("--train: %d scan(s) without a site are left out of training", dropped)
    log.info("training a harmonizer on %d scans", len(raw) - dropped)
    try:
        model, table = train_on_labelled_sites(
            raw, "site", sex_mapping=settings.sex_mapping_dict or None
        )
    except NeuroharmonyError:
        raise
    except ValueError as exc:
        raise UsageError(
            f"--train: cannot fit a model on this dataset: {exc}. Name the site column with "
            f"--site-column, or add scanner metadata (Manufacturer, ManufacturersModelName, "
            f"DeviceSerialNumber) to the T1w sidecars"
        ) from exc
    try:
        name = json.loads((settings.bids_dir / "dataset_description.json").read_text())["Name"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        name = settings.bids_dir.name
    path = settings.output_dir / "models" / f"neuroharmony_{_slug(str(name))}.nhmodel"
    try:
        saved = save_with_card(
            model, path, table, dataset_name=str(name), bids_dir=settings.bids_dir,
            site_source=site_source,
        )  # fmt: skip
    except OSError as exc:
        raise NeuroharmonyError(
            f"cannot write {exc.filename or path}: {exc.strerror or exc}. Free disk space (or "
            f"fix permissions) and re-run the group level with --train"
        ) from None
    log.info("trained model saved to %s (model card %s)", path, saved["model_card"])
    return saved


def _write_report(
    settings: Settings,
    raw: pd.DataFrame,
    harmonized: pd.DataFrame,
    model: Any,
    failed: pd.DataFrame,
    info: Mapping[str, Any],
    drift: Any,
    result: RunResult,
    log: logging.Logger,
) -> None:
    from neuroharmony_bids.reports.group import write_group_report

    path = settings.output_dir / "group_report.html"
    write_group_report(
        path, raw, harmonized, model, failed, model_info=dict(info), drift=drift,
        nprocs=settings.nprocs,
    )  # fmt: skip
    result.outputs["report"] = str(path)
    log.info("group report: %s", path)


def check_drift(raw: pd.DataFrame, model: Any, out: Path, result: RunResult, log) -> Any:
    """Dataset-level IQM drift (another MRIQC version, another protocol): say so plainly."""
    from neuroharmony_bids.harmonize.drift import detect_drift

    drift = detect_drift(raw, model, site_column="site")
    path = out / "group_iqm_drift.tsv"
    _write_table(path, drift.table.reset_index())
    result.outputs["iqm_drift_tsv"] = str(path)
    if drift.shifted:
        result.warnings.append(drift.message())
        log.warning("%s", drift.message())
    else:
        log.info("%s", drift.message())
    return drift


def load_checked_model(settings: Settings) -> tuple[Any, dict[str, Any]]:
    """Step 1: the model, once, and the same one the participant level used."""
    out = settings.output_dir
    description = D.read_dataset_description(out)
    if description is None:
        raise MissingInputError(
            f"{out} has no participant-level outputs (no dataset_description.json); run "
            f"`neuroharmony-bids {settings.bids_dir} {out} participant` first"
        )
    model, info = load_model_and_info(settings)
    used = (description.get("NeuroharmonyModel") or {}).get("sha256")
    ident = D.model_identity(info)
    if used and ident.get("sha256") and used != ident.get("sha256"):
        raise UsageError(
            f"the participant level used model sha256 {used[:12]}..., but this run was given "
            f"{ident.get('name')} (sha256 {str(ident.get('sha256'))[:12]}...); pass the same "
            f"--model as at participant level"
        )
    return model, info


def select_outputs(settings: Settings) -> list[FoundScan]:
    """Step 2: the per-scan outputs the participant/session filters select."""
    out = settings.output_dir
    all_found = discover_outputs(out, settings.bids_dir)
    if not all_found:
        raise MissingInputError(
            f"no per-scan outputs (sub-*/anat/*_morph.tsv) in {out}; run the participant "
            f"level first"
        )
    # filter the first listing rather than listing every folder a second time
    found = filter_outputs(all_found, settings.participant_label, settings.session_label)
    if not found:
        raise NothingSelectedError(
            f"no participant-level outputs in {out} match the participant/session filters "
            f"({' '.join(settings.participant_label)} {' '.join(settings.session_label)}); "
            f"outputs exist for {len(all_found)} scan(s)"
        )
    return found


def gather(
    settings: Settings, found: Sequence[FoundScan], result: RunResult, log: logging.Logger
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Step 3: (raw, harmonized, problems): complete scans' rows; failed and incomplete scans.

    When every scan with outputs was read (no filter, none incomplete), ``result`` keeps the
    versions their sidecars record, for the citation (cli.run)."""
    raw, harmonized, problems, versions = collect_tables(found, log)
    if not problems and not settings.participant_label and not settings.session_label:
        result.scan_versions = versions
    failures = F.read_failures(settings.output_dir)
    done = set(raw["bids_name"]) if len(raw) else set()
    if len(failures):
        failures = failures[~failures["bids_name"].isin(done)]
        if settings.participant_label:
            subs = failures["participant_id"].astype(str).str[4:]
            failures = failures[subs.isin(settings.participant_label)]
        if settings.session_label:
            sess = failures["session_id"].fillna("").astype(str).str[4:]
            failures = failures[sess.isin(settings.session_label)]
    problem_table = pd.concat(
        [pd.DataFrame(problems), failures.drop(columns=["exit_code"], errors="ignore")],
        ignore_index=True,
    )
    if len(problem_table):
        problem_table = problem_table.drop_duplicates("bids_name", keep="first")
    for p in problems:
        result.warnings.append(f"{p['bids_name']}: {p['reason']}")
        log.warning("%s skipped: %s", p["bids_name"], p["reason"])
    if raw.empty:
        raise MissingInputError(
            f"none of the {len(found)} scan(s) in {settings.output_dir} has complete outputs; "
            f"re-run the participant level (see group_failed.tsv)"
        )
    return raw, harmonized, problem_table


def write_joint(
    settings: Settings, raw: pd.DataFrame, model: Any, site_source: str, result: RunResult,
    log: logging.Logger,
) -> None:  # fmt: skip
    """Step 5: the joint (per-site) table, when sites are known."""
    joint = harmonize_jointly(raw, model, log)
    if joint is None:
        return
    path = settings.output_dir / "group_desc-jointharmonized_morph.tsv"
    # the per-scan tables' rounding (derivatives.HARMONIZED_ROUNDING: harmonized volumes and
    # SDs), so both tables spell alike
    _write_table(path, _order(joint), D.HARMONIZED_ROUNDING)
    dictionary = D.column_dictionary(list(joint.columns))
    if "site" in dictionary:
        dictionary["site"] = {"Description": f"Site, from {site_source}"}
    D.write_output(path.with_suffix(".json"), json.dumps(dictionary, indent=2) + "\n")
    result.outputs["jointharmonized_tsv"] = str(path)


def run_group(settings: Settings, logger: logging.Logger | None = None) -> RunResult:
    """The group level: load the model, select and gather the participant outputs, label
    sites, write the group tables, the joint table, the drift check and the report; train."""
    log = logger or LOGGER
    out = settings.output_dir
    model, info = load_checked_model(settings)
    found = select_outputs(settings)
    result = RunResult("group", total=len(found))
    raw, harmonized, problem_table = gather(settings, found, result, log)
    sites, site_source = site_labels(settings, raw)
    raw = _order(raw.assign(site=sites.to_numpy()))
    harmonized = _order(harmonized.assign(site=sites.to_numpy()))
    paths = write_group_tables(out, raw, harmonized, problem_table, site_source)
    result.outputs.update({k: str(v) for k, v in paths.items()})
    result.succeeded = list(raw["bids_name"])
    log.info(
        "group tables: %d scans, %d failed or incomplete (%s)",
        len(raw), len(problem_table), paths["failed_tsv"],
    )  # fmt: skip
    write_joint(settings, raw, model, site_source, result, log)
    failed_for_report = problem_table.reindex(
        columns=["bids_name", "participant_id", "session_id", "reason"]
    )
    drift = check_drift(raw, model, out, result, log)
    _write_report(settings, raw, harmonized, model, failed_for_report, info, drift, result, log)
    if settings.train:
        trained = train_model(settings, raw, log, site_source)
        result.outputs.update({k: str(v) for k, v in trained.items()})
    return result


__all__ = [
    "Collected",
    "FoundScan",
    "collect_tables",
    "gather",
    "load_checked_model",
    "select_outputs",
    "write_joint",
    "harmonize_jointly",
    "discover_outputs",
    "run_group",
    "site_labels",
    "train_model",
    "write_group_tables",
]
