"""Participant level: for every selected T1w scan, IQMs + volumes → harmonize → derivatives.

Steps, with why:

1. Query the dataset (pybids) and skip scans whose four outputs already exist (re-runs are
   no-ops unless ``--overwrite``).
2. Locate each scan's MRIQC IQMs and FreeSurfer subject among existing derivatives. Only for
   the scans lacking them, run the tools workflow (:mod:`neuroharmony_bids.workflows.tools`),
   which hands back their outputs, or per-scan failures quoting the tool; if a tool is not
   installed, stop with exit 66 naming the tool, the flag pointing at existing outputs, and
   the container.
3. Parse everything in one pass and harmonize all scans in one vectorized call: one Nipype node
   per scan would cost far more than the work itself.
4. Write the per-scan derivatives atomically. A scan that fails (missing age, truncated stats
   file, NaN IQM ...) is recorded under ``logs/failed/`` and the others go on; the run exits 1
   at the end if any failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neuroharmony_bids.bids import derivatives as D
from neuroharmony_bids.bids import failures
from neuroharmony_bids.bids.covariates import read_covariates
from neuroharmony_bids.bids.layout import (
    Scan,
    cached_layout,
    find_scans,
    load_layout,
    scans_per_subject,
)
from neuroharmony_bids.errors import DataError, MissingInputError, NeuroharmonyError
from neuroharmony_bids.forking import can_fork, forked_map
from neuroharmony_bids.harmonize.apply import harmonize_valid_rows
from neuroharmony_bids.harmonize.features import ALL_IQMS, CORE_IQMS
from neuroharmony_bids.harmonize.io import load_model_with_info
from neuroharmony_bids.harmonize.model import FS_VERSION_COLUMN
from neuroharmony_bids.io import freesurfer_stats as fs_stats
from neuroharmony_bids.io import mriqc_json
from neuroharmony_bids.settings import Settings
from neuroharmony_bids.workflows.results import Progress, RunResult, few
from neuroharmony_bids.workflows.tools import ScanPlan, check_tools, locate_inputs, run_tools

LOGGER = logging.getLogger("neuroharmony_bids")


@dataclass
class ScanInputs:
    """Parsed inputs of one scan."""

    scan: Scan
    iqms: dict[str, float]
    volumes: dict[str, float]
    provenance: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- harmonization core


def load_model_and_info(settings: Settings) -> tuple[Any, dict[str, Any]]:
    """The model (``--model`` or the shipped one) and its identity (name, version, sha256)."""
    model, info = load_model_with_info(settings.model)  # one read of the file
    if settings.profile_weight is not None:
        model.set_params(profile_weight=settings.profile_weight)
    return model, dict(info)


# --------------------------------------------------------------------------- parsing


def read_scan_iqms(
    plan: ScanPlan, group_tables: dict[Path, pd.DataFrame]
) -> tuple[mriqc_json.IQMReading, str | None]:
    """A scan's IQMs (NaN, null, n/a and -1 as NaN, named in ``unavailable``) and MRIQC's
    version when the JSON records it."""
    scan, src = plan.scan, plan.iqm_source
    if src is None:
        raise MissingInputError(
            f"no MRIQC IQMs for {scan.bids_name} (MRIQC did not produce them; see logs/crash)"
        )
    try:
        if src.kind == "json":
            reading = mriqc_json.read_iqms(src.path)  # one parse: IQMs and MRIQC's version
            return reading, reading.mriqc_version
        if src.path not in group_tables:
            group_tables[src.path] = mriqc_json.read_group_tsv(src.path)
        return mriqc_json.group_row_iqms(group_tables[src.path], scan.bids_name, src.path), None
    except RecursionError:  # json's recursion limit: a crafted or corrupt file
        raise DataError(
            f"{src.path}: JSON nested too deeply to be an MRIQC IQM file; re-run MRIQC for "
            f"{scan.bids_name} or remove the file"
        ) from None


def core_iqms(model: Any) -> list[str]:
    """The IQMs the model's prior is built on (it uses more when they are present)."""
    sets = getattr(model, "iqm_sets_", None)
    if isinstance(sets, Mapping) and sets.get("core"):
        return list(sets["core"])
    return list(CORE_IQMS)


def parse_scan(
    plan: ScanPlan, group_tables: dict[Path, pd.DataFrame], expected: Sequence[str] = ()
) -> ScanInputs:
    """Read one scan's IQMs and volumes (DataError/MissingInputError name file and line).

    An IQM MRIQC could not compute is NaN, not a failure: the harmonizer uses the others
    (and names the ones it needed in ``nh_iqms_missing``); a warning names the IQMs that are
    unavailable, or absent among ``expected``.
    """
    scan = plan.scan
    reading, mriqc_version = read_scan_iqms(plan, group_tables)
    if plan.fs_subject_dir is None:
        raise MissingInputError(
            f"no FreeSurfer stats for {scan.bids_name} (recon-all did not produce them; see "
            f"logs/crash)"
        )
    iqms = {k: v for k, v in reading.values.items() if k in ALL_IQMS}
    unavailable = {k: v for k, v in sorted(reading.unavailable.items()) if k in ALL_IQMS}
    warnings = []
    if unavailable:
        warnings.append(
            f"{reading.where}: MRIQC could not compute {', '.join(unavailable)}; harmonized "
            f"with the other IQMs (nh_iqms_missing names those the model needed)"
        )
    absent = [n for n in expected if n not in reading.values]
    if absent:
        warnings.append(
            f"{reading.where}: no IQM {', '.join(map(repr, absent))} (another MRIQC version, or "
            f"an edited file?); harmonized with the other IQMs (named in nh_iqms_missing)"
        )
    subject = fs_stats.read_subject(plan.fs_subject_dir)  # every stats file read once
    warnings += subject_warnings(subject)
    volumes = D.canonical_volumes(subject.volumes)
    if not volumes:
        raise MissingInputError(f"{plan.fs_subject_dir}: no known FreeSurfer region found")
    src = plan.iqm_source
    return ScanInputs(
        scan=scan,
        iqms=iqms,
        volumes=volumes,
        warnings=warnings,
        provenance={
            "ImageQualityMetrics": {
                "Software": "MRIQC",
                "Version": mriqc_version,
                "Source": str(src.path) + ("" if src.kind == "json" else f" ({scan.bids_name})"),
                "Values": dict(sorted(iqms.items())),
                "Unavailable": unavailable,
            },
            "FreeSurfer": freesurfer_provenance(subject),
        },
    )


#: Why a FastSurfer subject's cortical volumes are not harmonized (sidecar and log).
DKT_NOT_DESIKAN = (
    "cortical regions are DKT (Desikan-Killiany-Tourville, 31 per hemisphere), not the "
    "Desikan-Killiany regions (34 per hemisphere) the model was trained on: a DKT region with "
    "a Desikan name covers different cortex, so they are neither harmonized nor written to "
    "the tables; only the aseg volumes are harmonized"
)


def subject_warnings(subject: fs_stats.SubjectStats) -> list[str]:
    """What a user should know about a subject read: a FreeSurfer version outside 5.x-8.x,
    a FastSurfer subject's DKT cortex."""
    aseg = fs_stats.stats_paths(subject.subject_dir)["aseg"]
    out = [w for w in [fs_stats.unknown_version_message(aseg, subject.cvs_version)] if w]
    if subject.cortical_atlas == "DKT":
        out.append(f"{subject.subject_dir}: {subject.pipeline} subject: {DKT_NOT_DESIKAN}")
    return out


def freesurfer_provenance(subject: fs_stats.SubjectStats) -> dict[str, Any]:
    """The sidecar's ``FreeSurfer`` block: pipeline, version, atlas and what was read."""
    out: dict[str, Any] = {
        "Pipeline": subject.pipeline,
        "Version": subject.cvs_version,
        "Release": subject.release,
        "SubjectDir": str(subject.subject_dir),
        "CorticalAtlas": subject.cortical_atlas,
    }
    if subject.cortical_atlas == "DKT":
        out["CorticalRegions"] = DKT_NOT_DESIKAN
    if subject.notes:
        out["ReadNotes"] = list(subject.notes)
    return out


def build_table(inputs: Sequence[ScanInputs], covariates: pd.DataFrame) -> pd.DataFrame:
    """One row per scan: ids and entities, age, sex, IQMs (MRIQC names), volumes (FS 7 names)
    and the FreeSurfer release (the core flags a single scan of another release than the
    model's)."""
    iqm_names = [n for n in ALL_IQMS if any(n in i.iqms for i in inputs)]
    regions = [r for r in D.REGION_ORDER if any(r in i.volumes for i in inputs)]
    ids = [{"bids_name": i.scan.bids_name, **D.id_columns(i.scan)} for i in inputs]
    present = {k for row in ids for k in row}
    id_cols = ["bids_name"] + [c for c in D.ID_COLUMNS if c in present]
    records = []
    for item, rec in zip(inputs, ids, strict=True):
        rec = {c: rec.get(c, np.nan) for c in id_cols}
        rec["age"] = covariates.at[item.scan.bids_name, "age"]
        rec["sex"] = covariates.at[item.scan.bids_name, "sex"]
        rec.update({n: item.iqms.get(n, np.nan) for n in iqm_names})
        rec.update({r: item.volumes.get(r, np.nan) for r in regions})
        rec[FS_VERSION_COLUMN] = item.provenance.get("FreeSurfer", {}).get("Release")
        records.append(rec)
    return pd.DataFrame.from_records(
        records, columns=[*id_cols, "age", "sex", *iqm_names, *regions, FS_VERSION_COLUMN]
    )


def region_sets(table: pd.DataFrame) -> list[tuple[np.ndarray, list[str]]]:
    """Rows grouped by the regions they have: [(row positions, region columns they lack)].

    A FastSurfer scan has no Desikan cortex; in single-scan mode rows are independent, so
    each group is harmonized on its own regions and no row makes another fail.
    """
    if not len(table):
        return []
    regions = [c for c in D.REGION_ORDER if c in table.columns]
    present = table[regions].notna().to_numpy()
    keys, inverse = np.unique(present, axis=0, return_inverse=True)
    inverse = np.asarray(inverse).ravel()
    groups = []
    for k in range(len(keys) - 1, -1, -1):  # the most complete region set first
        lacking = [r for r, has in zip(regions, keys[k], strict=True) if not has]
        groups.append((np.flatnonzero(inverse == k), lacking))
    return groups


def harmonize_with_sd(table: pd.DataFrame, model: Any) -> tuple[pd.DataFrame, dict[int, str]]:
    """The core's single-scan harmonization of the valid rows, each harmonized region's
    posterior SD (mm³) added as a ``<region>_sd`` column
    (:func:`neuroharmony_bids.bids.derivatives.sd_column`), and the rows it refused
    ({position: reason}), from one validation pass."""
    done = harmonize_valid_rows(table, model, return_sd=True)
    return pd.concat([done.harmonized, done.sd.add_suffix(D.SD_SUFFIX)], axis=1), done.refused


def harmonize_rows(
    table: pd.DataFrame, model: Any, harmonize_table: Callable = harmonize_with_sd
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Harmonize all rows, one call per region set (:func:`region_sets`); the scans refused,
    by bids_name with the reason."""
    pieces, failed = [], {}
    for rows, lacking in region_sets(table):
        part = table.iloc[rows].drop(columns=lacking).reset_index(drop=True)
        done, bad = _harmonize_batch(part, model, harmonize_table)
        pieces.append(done)
        failed.update(bad)
    return _stack([p for p in pieces if len(p)], table), failed


def _stack(pieces: list[pd.DataFrame], table: pd.DataFrame) -> pd.DataFrame:
    """The harmonized pieces as one table (an empty slice of ``table`` when there are none)."""
    if not pieces:
        return table.iloc[0:0].copy()
    return pieces[0] if len(pieces) == 1 else pd.concat(pieces, ignore_index=True)


def _harmonize_batch(
    table: pd.DataFrame, model: Any, harmonize_table: Callable
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Harmonize the rows of one region set at once; bad rows are set aside with their
    reasons in the same pass (rows are validated once).

    A problem of the batch as a whole (e.g. no region column the model knows) fails each of
    its scans with that message.
    """
    names = table["bids_name"].astype(str).to_numpy()
    try:
        done, refused = harmonize_table(table, model)
    except NeuroharmonyError as exc:
        return table.iloc[0:0].copy(), dict.fromkeys(names, str(exc))
    return done, {names[pos]: reason for pos, reason in refused.items()}


# --------------------------------------------------------------------------- the driver's steps


@dataclass
class Harmonized:
    """What the harmonize step returns: the input table, its harmonized rows (by bids_name)."""

    table: pd.DataFrame
    harmonized: pd.DataFrame
    inputs: list[ScanInputs]
    covariates: pd.DataFrame
    model_freesurfer_version: str | None = None  # the release the model was trained on


def plan_scans(settings: Settings, log: logging.Logger) -> tuple[list[Scan], Any]:
    """Step 1: the selected T1w scans (pybids) and the layout.

    With ``--participant-label`` only those subjects are indexed; otherwise the index is kept
    in the work folder for the next run on the same dataset state (a re-run, or a run after
    the tools finished elsewhere)."""
    t0 = time.monotonic()
    if settings.participant_label:
        layout = load_layout(settings.bids_dir, participant_label=settings.participant_label)
    else:
        layout = cached_layout(settings.bids_dir, settings.effective_work_dir / "pybids")
    scans = find_scans(
        settings.bids_dir, settings.participant_label, settings.session_label, layout=layout
    )
    log.info("%d T1w scan(s) selected (indexing took %.1f s)", len(scans), time.monotonic() - t0)
    return scans, layout


def prepare_output(settings: Settings, info: Mapping[str, Any], log: logging.Logger) -> dict:
    """Step 2: the output folder's dataset-level files; returns the model's identity."""
    ident = D.model_identity(info)
    log.info(
        "model: %s (version %s, sha256 %s)",
        ident.get("name"), ident.get("version"), str(ident.get("sha256"))[:16],
    )  # fmt: skip
    description = D.dataset_description(
        settings.bids_dir,
        settings.output_dir,
        info,
        container=(settings.environ or {}).get("NEUROHARMONY_CONTAINER"),
    )
    D.write_dataset_files(settings.output_dir, description, overwrite=settings.overwrite)
    return ident


def pending_scans(
    settings: Settings, scans: Sequence[Scan], result: RunResult, log: logging.Logger
) -> list[Scan]:
    """Step 3: scans to (re)compute: refused names fail, finished scans are skipped.

    A scan is finished when all its outputs exist, its report included (unless
    ``--no-participant-reports``): a run stopped while writing reports is completed.
    """
    out = settings.output_dir
    pending, completing = [], []
    for scan in scans:
        if scan.problem is not None:
            _fail(result, out, scan, scan.problem, 65, log)
            continue
        if settings.overwrite:
            pending.append(scan)
            continue
        missing = D.missing_outputs(out, scan, report=settings.participant_reports)
        if not missing:
            result.skipped.append(scan.bids_name)
            continue
        pending.append(scan)
        if missing == ["report"]:
            completing.append(scan.bids_name)
    if result.skipped:
        log.info(
            "%d scan(s) already have outputs and are skipped (--overwrite recomputes them)",
            len(result.skipped),
        )
    if completing:
        log.info(
            "%d scan(s) have their data files but no report (an interrupted run); completing "
            "them: %s",
            len(completing), few(completing),
        )  # fmt: skip
    return pending


def locate_and_run_tools(
    settings: Settings, pending: Sequence[Scan], layout: Any, log: logging.Logger
) -> list[ScanPlan]:
    """Step 4: each scan's MRIQC and FreeSurfer outputs, running the tools where missing."""
    counts = scans_per_subject(layout)
    plans = locate_inputs(settings, pending, counts)
    if any(p.needs_mriqc or p.needs_recon_all for p in plans):
        run_tools(settings, plans, check_tools(settings, plans), log)
    return plans


def shared_subjects(plans: Sequence[ScanPlan], log: logging.Logger) -> dict[str, list[str]]:
    """FreeSurfer subject folders that stand for several T1w scans: {bids_name: all of them}.

    A SUBJECTS_DIR named per session (``sub-X_ses-Y``) has one folder for all runs and
    acquisitions of that session; each such scan's sidecar and the log say so.
    """
    by_dir: dict[Path, list[str]] = {}
    for plan in plans:
        if plan.fs_subject_dir is not None:
            by_dir.setdefault(plan.fs_subject_dir, []).append(plan.scan.bids_name)
    out = {}
    for folder, names in sorted(by_dir.items()):
        if len(names) > 1:
            log.warning(
                "FreeSurfer subject %s stands for %d T1w scans (%s): their volumes are the same",
                folder, len(names), ", ".join(names),
            )  # fmt: skip
            out.update({name: names for name in names})
    return out


def collect_inputs(
    settings: Settings,
    plans: Sequence[ScanPlan],
    model: Any,
    result: RunResult,
    progress: Progress,
    log: logging.Logger,
) -> tuple[list[ScanInputs], pd.DataFrame]:
    """Step 5: covariates and parsed tool outputs of every scan; bad scans fail one by one."""
    covs = read_covariates(
        settings.bids_dir,
        [p.scan for p in plans],
        age_column=settings.age_column,
        sex_column=settings.sex_column,
        sex_mapping=settings.sex_mapping_dict,
    )
    expected = core_iqms(model)
    shared = shared_subjects(plans, log)
    inputs: list[ScanInputs] = []
    todo = [p for p in plans if not p.failure and p.scan.bids_name not in covs.errors]
    parsed = dict(zip(map(id, todo), parse_scans(todo, expected, settings.nprocs), strict=True))
    for plan in plans:
        name = plan.scan.bids_name
        if plan.failure:  # a tool failed, or its output cannot be read (workflows/tools.py)
            _fail(result, settings.output_dir, plan.scan, plan.failure, plan.failure_code, log)
            progress.update()
            continue
        if name in covs.errors:
            _fail(result, settings.output_dir, plan.scan, covs.errors[name], 65, log)
            progress.update()
            continue
        item = parsed[id(plan)]
        if isinstance(item, NeuroharmonyError):
            _fail(result, settings.output_dir, plan.scan, str(item), item.exit_code, log)
            progress.update()
            continue
        if name in shared:
            item.provenance["FreeSurfer"]["StandsForScans"] = shared[name]
        inputs.append(item)
        for warning in item.warnings:
            result.warnings.append(warning)
            log.warning("%s: %s", name, warning)
    return inputs, covs.table


def parse_scans(
    plans: Sequence[ScanPlan], expected: Sequence[str] = (), processes: int = 1
) -> list[ScanInputs | NeuroharmonyError]:
    """:func:`parse_scan` of every plan, in order, or the error that refuses the scan.

    With ``processes`` > 1 (``--nprocs``) and at least :data:`PROCESS_MIN_SCANS` scans, the
    files are parsed by forked processes (:func:`~neuroharmony_bids.forking.forked_map`), 500 scans a task."""
    group_tables: dict[Path, pd.DataFrame] = {}

    def parse(plan: ScanPlan) -> ScanInputs | NeuroharmonyError:
        try:
            return parse_scan(plan, group_tables, expected)
        except NeuroharmonyError as exc:
            return exc

    if processes > 1 and len(plans) >= PROCESS_MIN_SCANS and can_fork():
        return [r for part in forked_map(parse, plans, processes, 500) for r in part]
    return [parse(plan) for plan in plans]


def harmonize_scans(
    inputs: list[ScanInputs],
    covariates: pd.DataFrame,
    model: Any,
    log: logging.Logger,
) -> tuple[Harmonized, dict[str, str]]:
    """Step 6: one vectorized harmonization of every parsed scan; returns row failures."""
    table = build_table(inputs, covariates)
    t1 = time.monotonic()
    harmonized, row_failures = harmonize_rows(table, model)
    log.debug("harmonized %d scans in %.2f s", len(harmonized), time.monotonic() - t1)
    trained = getattr(model, "freesurfer_version_", None)
    found = sorted({str(v) for v in table[FS_VERSION_COLUMN].dropna()})
    log.info(
        "FreeSurfer version(s) found: %s; the model was trained on %s",
        ", ".join(found) or "unknown", trained or "an unrecorded version",
    )  # fmt: skip
    return Harmonized(table, harmonized, inputs, covariates, trained), row_failures


def write_scans(
    settings: Settings,
    done: Harmonized,
    row_failures: Mapping[str, str],
    ident: Mapping[str, Any],
    result: RunResult,
    progress: Progress,
    log: logging.Logger,
) -> None:
    """Step 7: the per-scan derivatives (atomic; failed rows recorded)."""
    out = settings.output_dir
    rows = done.harmonized.to_dict("records")  # one conversion, not one Series per scan
    by_name = {str(row["bids_name"]): row for row in rows}
    ages = done.covariates["age"].to_dict()
    sexes = done.covariates["sex"].to_dict()
    model_meta = {k: v for k, v in ident.items() if k in ("name", "version", "sha256", "path")}
    model_meta["freesurfer_version"] = done.model_freesurfer_version
    jobs = []
    for item in done.inputs:
        scan = item.scan
        if scan.bids_name in row_failures:
            _fail(result, out, scan, row_failures[scan.bids_name], 65, log)
            progress.update()
            continue
        provenance = dict(item.provenance)
        provenance["Sources"] = [f"bids:raw:{scan.relpath(settings.bids_dir)}"]
        provenance["Scanner"] = dict(scan.metadata)
        provenance["Covariates"] = {
            "age": float(ages[scan.bids_name]),
            "sex": sexes[scan.bids_name],
        }
        provenance["Model"] = model_meta
        jobs.append((scan, item.volumes, by_name[scan.bids_name], provenance))
    write_outputs(out, jobs, result, progress, processes=settings.nprocs)


def run_participant(settings: Settings, logger: logging.Logger | None = None) -> RunResult:
    """The participant level: plan scans, collect inputs, harmonize, write outputs, report.

    The model file is loaded once; rows are validated once (see the module docstring).
    """
    log = logger or LOGGER
    started = time.time()
    scans, layout = plan_scans(settings, log)
    model, info = load_model_and_info(settings)
    ident = prepare_output(settings, info, log)
    result = RunResult("participant", total=len(scans))
    pending = pending_scans(settings, scans, result, log)
    if pending:
        plans = locate_and_run_tools(settings, pending, layout, log)
        progress = Progress("participant", len(pending), log)
        inputs, covariates = collect_inputs(settings, plans, model, result, progress, log)
        if inputs:
            done, row_failures = harmonize_scans(inputs, covariates, model, log)
            write_scans(settings, done, row_failures, ident, result, progress, log)
            if settings.participant_reports and result.succeeded:
                write_reports(settings, done, model, info, result, log)
    _remove_stale_temps(settings.output_dir, scans, started, log)
    result.outputs["output_dir"] = str(settings.output_dir)
    return result


def _remove_stale_temps(
    out: Path, scans: Sequence[Scan], started: float, log: logging.Logger
) -> None:
    """Delete temporary files a killed earlier run left in this run's folders."""
    folders = {out, D.logs_dir(out) / "failed"} | {
        D.scan_dir(out, s) for s in scans if s.problem is None
    }
    removed = [p for f in sorted(folders) for p in D.remove_stale_temps(f, started)]
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run", len(removed))


#: A write job: the scan, its raw volumes, its harmonized row and its sidecars' provenance.
WriteJob = tuple[Scan, dict[str, float], dict[str, Any], dict[str, Any]]


def write_outputs(
    out: Path,
    jobs: Sequence[WriteJob],
    result: RunResult,
    progress: Progress,
    threads: int = 2,
    chunk: int = 500,
    processes: int = 1,
) -> None:
    """Write the per-scan files from two threads: the open/write/rename syscalls release
    the GIL, so they overlap with the next scan's JSON encoding; more threads only fight over
    the GIL (at 5,000 scans, 8 threads cost 20-27 s of CPU against 10-19 s for 2).

    With ``processes`` > 1 (``--nprocs``) and at least :data:`PROCESS_MIN_SCANS` scans, the
    files are written by that many forked processes instead (:func:`_write_in_processes`):
    the JSON encoding then runs on every CPU, not under one GIL.

    The TSVs of ``chunk`` scans at a time are formatted in two calls of the group tables'
    writer (:func:`~neuroharmony_bids.bids.derivatives.format_scan_tsvs`), not cell by cell."""
    if processes > 1 and len(jobs) >= PROCESS_MIN_SCANS and can_fork():
        _write_in_processes(out, jobs, result, progress, processes, chunk)
        return

    def job(args: tuple[WriteJob, tuple[str, str]]) -> str:
        (scan, volumes, hrow, provenance), tsv = args
        return _write_one(out, scan, volumes, hrow, provenance, tsv)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for start in range(0, len(jobs), chunk):
            part = jobs[start : start + chunk]
            tsvs = _tsv_texts(part)
            for name in pool.map(job, zip(part, tsvs, strict=True)):
                result.succeeded.append(name)
                progress.update()


#: Scans from which ``--nprocs`` processes write the per-scan files (fewer: forking costs
#: more than it saves).
PROCESS_MIN_SCANS = 1000


def _tsv_texts(part: Sequence[WriteJob]) -> list[tuple[str, str]]:
    return D.format_scan_tsvs([D.scan_rows(scan, vol, hrow) for scan, vol, hrow, _ in part])


def _write_one(
    out: Path,
    scan: Scan,
    volumes: dict[str, float],
    hrow: dict[str, Any],
    provenance: dict[str, Any],
    tsv: tuple[str, str],
) -> str:
    D.write_scan_outputs(out, scan, volumes, hrow, provenance, tsv=tsv)
    failures.clear_failure(out, scan)
    return scan.bids_name


def _write_in_processes(
    out: Path,
    jobs: Sequence[WriteJob],
    result: RunResult,
    progress: Progress,
    processes: int,
    chunk: int,
) -> None:
    """The per-scan files written by ``processes`` forked workers, ``chunk`` scans a task.

    The TSVs are formatted here first (pyarrow is not used after a fork); the workers inherit
    the jobs and texts and return only the names written. Each file is still written
    atomically by the process that writes it; an error in a worker (disk full) stops the
    run as it does with threads, after the tasks already started."""
    tsvs = [
        t for start in range(0, len(jobs), chunk) for t in _tsv_texts(jobs[start : start + chunk])
    ]

    def write(pair: tuple[WriteJob, tuple[str, str]]) -> str:
        return _write_one(out, *pair[0], pair[1])

    pairs = list(zip(jobs, tsvs, strict=True))
    for names in forked_map(write, pairs, processes, chunk):
        for name in names:
            result.succeeded.append(name)
            progress.update()


def _fail(
    result: RunResult, out: Path, scan: Scan, reason: str, code: int, log: logging.Logger
) -> None:
    result.failed[scan.bids_name] = reason
    failures.write_failure(out, scan, reason, code)
    log.warning("%s failed: %s", scan.bids_name, reason)


def write_reports(
    settings: Settings,
    done: Harmonized,
    model: Any,
    info: Mapping[str, Any],
    result: RunResult,
    log: logging.Logger,
) -> None:
    """Step 8: per-scan HTML reports (part of a scan's outputs; a re-run completes them)."""
    try:
        from neuroharmony_bids.reports.participant import write_participant_report
    except ImportError as exc:
        msg = f"per-scan reports skipped: the reports package is not available ({exc})"
        result.warnings.append(msg)
        log.warning("%s", msg)
        return
    finished = set(result.succeeded)
    raw_idx = {str(b): i for i, b in enumerate(done.table["bids_name"])}
    harm_idx = {str(b): i for i, b in enumerate(done.harmonized["bids_name"])}
    progress = Progress("participant reports", len(finished), log)
    for item in done.inputs:
        name = item.scan.bids_name
        if name not in finished:
            continue
        raw_row = done.table.iloc[raw_idx[name]].copy()
        for key, value in item.scan.metadata.items():
            raw_row[key] = value
        try:
            write_participant_report(
                D.report_path(settings.output_dir, item.scan),
                raw_row,
                done.harmonized.iloc[harm_idx[name]],
                model,
            )
        except Exception as exc:  # a report must not undo the scan's data outputs
            msg = f"{name}: report not written ({type(exc).__name__}: {exc})"
            result.warnings.append(msg)
            log.warning("%s", msg)
        progress.update()


__all__ = [
    "Harmonized",
    "ScanInputs",
    "build_table",
    "collect_inputs",
    "core_iqms",
    "harmonize_rows",
    "harmonize_scans",
    "harmonize_with_sd",
    "load_model_and_info",
    "locate_and_run_tools",
    "parse_scan",
    "parse_scans",
    "pending_scans",
    "plan_scans",
    "prepare_output",
    "region_sets",
    "run_participant",
    "write_reports",
    "write_scans",
]
