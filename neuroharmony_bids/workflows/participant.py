"""Participant level: for every selected T1w scan, IQMs + volumes → harmonize → derivatives.

Steps, with why:

1. Query the dataset (pybids) and skip scans whose four outputs already exist (re-runs are
   no-ops unless ``--overwrite``).
2. Locate each scan's MRIQC IQMs and FreeSurfer subject among existing derivatives. Only for
   the scans lacking them, build a Nipype workflow of MRIQC / recon-all nodes
   (:func:`init_tools_wf`) and run it with the chosen plugin; if a tool is not installed, stop
   with exit 66 naming the tool, the flag pointing at existing outputs, and the container.
3. Parse everything in one pass and harmonize all scans in one vectorized call: one Nipype node
   per scan would cost far more than the work itself.
4. Write the per-scan derivatives atomically. A scan that fails (missing age, truncated stats
   file, NaN IQM ...) is recorded under ``logs/failed/`` and the others go on; the run exits 1
   at the end if any failed.
"""

from __future__ import annotations

import logging
import os
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
    find_scans,
    freesurfer_subject_candidates,
    load_layout,
    scans_per_subject,
)
from neuroharmony_bids.errors import MissingInputError, NeuroharmonyError, UsageError
from neuroharmony_bids.harmonize.features import ALL_IQMS, CORE_IQMS
from neuroharmony_bids.interfaces import freesurfer as fs
from neuroharmony_bids.interfaces import mriqc as mq
from neuroharmony_bids.io import freesurfer_stats as fs_stats
from neuroharmony_bids.io import mriqc_json
from neuroharmony_bids.settings import Settings
from neuroharmony_bids.workflows.results import Progress, RunResult

LOGGER = logging.getLogger("neuroharmony_bids")


@dataclass
class ScanPlan:
    """Where one scan's inputs are (or will be, once a tool ran)."""

    scan: Scan
    iqm_source: mriqc_json.IQMSource | None = None
    fs_subject_dir: Path | None = None

    @property
    def needs_mriqc(self) -> bool:
        return self.iqm_source is None

    @property
    def needs_recon_all(self) -> bool:
        return self.fs_subject_dir is None


@dataclass
class ScanInputs:
    """Parsed inputs of one scan."""

    scan: Scan
    iqms: dict[str, float]
    volumes: dict[str, float]
    provenance: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- harmonization core


def harmonization_core() -> tuple[Callable, Callable, Callable]:
    """(harmonize_table, load_model, model_info) from the harmonization core."""
    try:
        from neuroharmony_bids.harmonize.apply import harmonize_table
        from neuroharmony_bids.harmonize.io import load_model, model_info
    except ImportError as exc:  # a broken installation, not a user error
        raise NeuroharmonyError(
            f"the harmonization core is missing from this installation ({exc}); reinstall "
            f"neuroharmony-bids or use the container"
        ) from exc
    return harmonize_table, load_model, model_info


def load_model_and_info(settings: Settings) -> tuple[Any, dict[str, Any]]:
    """The model (``--model`` or the shipped one) and its identity (name, version, sha256)."""
    _, load_model, model_info = harmonization_core()
    model = load_model(settings.model)
    if settings.profile_weight is not None:
        model.set_params(profile_weight=settings.profile_weight)
    info = dict(model_info(settings.model))
    return model, info


def required_iqms(model: Any) -> list[str]:
    """IQMs the model cannot do without: its core set (it uses more when they are present)."""
    sets = getattr(model, "iqm_sets_", None)
    if isinstance(sets, Mapping) and sets.get("core"):
        return list(sets["core"])
    return list(CORE_IQMS)


# --------------------------------------------------------------------------- locating inputs


def locate_inputs(
    settings: Settings, scans: Sequence[Scan], subject_counts: Mapping[str, int]
) -> list[ScanPlan]:
    """Find each scan's MRIQC IQMs and FreeSurfer subject among existing outputs."""
    mriqc_dirs = settings.mriqc_dirs()
    fs_dirs = settings.freesurfer_dirs()
    group_tables: dict[Path, pd.DataFrame] = {}
    plans = []
    for scan in scans:
        plan = ScanPlan(scan)
        plan.iqm_source = mriqc_json.find_iqm_source(
            mriqc_dirs, scan.bids_name, scan.rel_dir, group_tables
        )
        names = freesurfer_subject_candidates(scan, subject_counts.get(scan.subject, 0) == 1)
        for fdir in fs_dirs:
            for name in names:
                if (fdir / name / "stats" / "aseg.stats").is_file():
                    plan.fs_subject_dir = fdir / name
                    break
            if plan.fs_subject_dir is not None:
                break
        plans.append(plan)
    return plans


def _searched(dirs: Sequence[Path], defaults: Sequence[Path]) -> str:
    shown = [str(d) for d in dirs] or [str(d) + " (absent)" for d in defaults]
    return ", ".join(shown)


def check_tools(settings: Settings, plans: Sequence[ScanPlan]) -> Path | None:
    """Raise MissingInputError (66) when a needed tool cannot run; return the FS license."""
    need_mq = [p.scan.bids_name for p in plans if p.needs_mriqc]
    need_fs = [p.scan.bids_name for p in plans if p.needs_recon_all]
    problems = []
    license_file = None
    if need_mq:
        why = mq.mriqc_status()
        if why:
            problems.append(
                f"MRIQC IQMs are missing for {len(need_mq)} scan(s) ({_few(need_mq)}); searched "
                f"{_searched(settings.mriqc_dirs(), [settings.bids_dir / 'derivatives' / 'mriqc'])}"
                f", and MRIQC cannot run here: {why}. Point --mriqc-dir at existing MRIQC "
                f"outputs (sub-X_T1w.json or group_T1w.tsv)"
            )
    if need_fs:
        example_fs = next(p.scan.prefix for p in plans if p.needs_recon_all)
        license_file = fs.find_fs_license(settings.fs_license_file, settings.environ or os.environ)
        why = fs.recon_all_status(license_file)
        if why:
            problems.append(
                f"FreeSurfer stats are missing for {len(need_fs)} scan(s) ({_few(need_fs)}); "
                f"searched "
                f"{_searched(settings.freesurfer_dirs(), [settings.bids_dir / 'derivatives' / 'freesurfer'])}"
                f" for subjects named like {example_fs}"
                f", and recon-all cannot run here: {why}. Point --freesurfer-dir at an existing "
                f"FreeSurfer SUBJECTS_DIR"
            )
    if problems:
        raise MissingInputError(
            "; ".join(problems)
            + f", or run the container {fs.CONTAINER_IMAGE}, which has MRIQC and FreeSurfer "
            "(FreeSurfer still needs --fs-license-file)"
        )
    return license_file


def _few(names: Sequence[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


# --------------------------------------------------------------------------- running tools


def plugin_settings(settings: Settings) -> tuple[str, dict[str, Any]]:
    """Nipype plugin and its arguments: ``--use-plugin`` YAML, with --nprocs/--mem-gb filled in."""
    plugin, args = ("MultiProc" if settings.nprocs > 1 else "Linear"), {}
    if settings.use_plugin is not None:
        import yaml

        try:
            data = yaml.safe_load(Path(settings.use_plugin).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(
                f"--use-plugin {settings.use_plugin}: cannot read YAML ({exc})"
            ) from None
        if not isinstance(data, dict) or "plugin" not in data:
            raise UsageError(
                f"--use-plugin {settings.use_plugin}: expected a mapping with 'plugin' (e.g. "
                f"MultiProc, SLURMGraph) and optional 'plugin_args'"
            )
        plugin = str(data["plugin"])
        args = dict(data.get("plugin_args") or {})
    if plugin == "MultiProc":
        args.setdefault("n_procs", settings.nprocs)
        if settings.mem_gb:
            args.setdefault("memory_gb", settings.mem_gb)
        args.setdefault("raise_insufficient", False)
    return plugin, args


def init_tools_wf(
    settings: Settings,
    plans: Sequence[ScanPlan],
    license_file: Path | None,
    name: str = "neuroharmony_tools_wf",
):
    """Nipype workflow running MRIQC (per participant) and recon-all (per scan) where needed.

    Outputs land in ``output_dir/sourcedata/{mriqc,freesurfer}`` where :func:`locate_inputs`
    finds them afterwards.
    """
    from nipype.pipeline import engine as pe

    work = settings.effective_work_dir
    work.mkdir(parents=True, exist_ok=True)
    wf = pe.Workflow(name=name, base_dir=str(work))
    wf.config["execution"] = {
        "crashdump_dir": str(D.logs_dir(settings.output_dir) / "crash"),
        "crashfile_format": "txt",
        "stop_on_first_crash": "false",
        "remove_unnecessary_outputs": "false",
    }
    mriqc_subjects = sorted({p.scan.subject for p in plans if p.needs_mriqc})
    for sub in mriqc_subjects:
        wf.add_nodes(
            [
                mq.init_mriqc_node(
                    name=f"mriqc_sub_{sub}",
                    bids_dir=settings.bids_dir,
                    output_dir=settings.output_dir / "sourcedata" / "mriqc",
                    participant_label=sub,
                    work_dir=work / "mriqc",
                    session_ids=list(settings.session_label),
                    nprocs=settings.nprocs,
                    omp_nthreads=settings.omp_nthreads,
                    mem_gb=settings.mem_gb,
                )
            ]
        )
    for plan in plans:
        if plan.needs_recon_all:
            wf.add_nodes(
                [
                    fs.init_recon_all_node(
                        name=f"recon_all_{plan.scan.prefix.replace('-', '_')}",
                        t1w_file=plan.scan.path,
                        subject_id=plan.scan.prefix,
                        subjects_dir=settings.output_dir / "sourcedata" / "freesurfer",
                        license_file=license_file,  # type: ignore[arg-type]
                        omp_nthreads=settings.omp_nthreads,
                        mem_gb=settings.mem_gb,
                    )
                ]
            )
    return wf


def run_tools(
    settings: Settings, plans: list[ScanPlan], license_file: Path | None, log: logging.Logger
) -> None:
    """Run the tools workflow; scans whose outputs still miss afterwards fail individually."""
    wf = init_tools_wf(settings, plans, license_file)
    plugin, args = plugin_settings(settings)
    n_mq = len({p.scan.subject for p in plans if p.needs_mriqc})
    n_fs = sum(p.needs_recon_all for p in plans)
    log.info(
        "running %d MRIQC and %d recon-all job(s) through Nipype (%s plugin); this takes hours "
        "per recon-all", n_mq, n_fs, plugin,
    )  # fmt: skip
    try:
        wf.run(plugin=plugin, plugin_args=args)
    except RuntimeError as exc:  # some nodes crashed; the others finished
        log.warning("some MRIQC/recon-all jobs failed (%s); crash files in %s", exc,
                    D.logs_dir(settings.output_dir) / "crash")  # fmt: skip


# --------------------------------------------------------------------------- parsing


def parse_scan(
    plan: ScanPlan,
    required: Sequence[str],
    group_tables: dict[Path, pd.DataFrame],
) -> ScanInputs:
    """Read one scan's IQMs and volumes (DataError/MissingInputError name file and line)."""
    scan = plan.scan
    src = plan.iqm_source
    if src is None:
        raise MissingInputError(
            f"no MRIQC IQMs for {scan.bids_name} (MRIQC did not produce them; see logs/crash)"
        )
    if plan.fs_subject_dir is None:
        raise MissingInputError(
            f"no FreeSurfer stats for {scan.bids_name} (recon-all did not produce them; see "
            f"logs/crash)"
        )
    if src.kind == "json":
        iqms = mriqc_json.read_iqm_json(src.path, required)
        meta = mriqc_json.read_iqm_metadata(src.path)
        mriqc_version = meta.get("provenance", {}).get("version")
    else:
        if src.path not in group_tables:
            group_tables[src.path] = mriqc_json.read_group_tsv(src.path)
        iqms = mriqc_json.iqms_from_group_row(
            group_tables[src.path], scan.bids_name, src.path, required
        )
        mriqc_version = None
    iqms = {k: v for k, v in iqms.items() if k in ALL_IQMS}
    raw_volumes = fs_stats.read_subject_volumes(plan.fs_subject_dir)
    warnings = [w for w in [fs_stats.unknown_version_warning(plan.fs_subject_dir)] if w]
    volumes = D.canonical_volumes(raw_volumes)
    if not volumes:
        raise MissingInputError(f"{plan.fs_subject_dir}: no known FreeSurfer region found")
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
            },
            "FreeSurfer": {
                "Version": fs_stats.freesurfer_version(plan.fs_subject_dir),
                "SubjectDir": str(plan.fs_subject_dir),
            },
        },
    )


def build_table(inputs: Sequence[ScanInputs], covariates: pd.DataFrame) -> pd.DataFrame:
    """One row per scan: ids, age, sex, IQMs (MRIQC names), volumes (FreeSurfer 7 names)."""
    has_ses = any(i.scan.session for i in inputs)
    iqm_names = [n for n in ALL_IQMS if any(n in i.iqms for i in inputs)]
    regions = [r for r in D.REGION_ORDER if any(r in i.volumes for i in inputs)]
    records = []
    for item in inputs:
        rec: dict[str, Any] = {"bids_name": item.scan.bids_name, **D.id_columns(item.scan)}
        if has_ses and "session_id" not in rec:
            rec["session_id"] = np.nan
        rec["age"] = covariates.at[item.scan.bids_name, "age"]
        rec["sex"] = covariates.at[item.scan.bids_name, "sex"]
        rec.update({n: item.iqms.get(n, np.nan) for n in iqm_names})
        rec.update({r: item.volumes.get(r, np.nan) for r in regions})
        records.append(rec)
    cols = ["bids_name", "participant_id"] + (["session_id"] if has_ses else [])
    cols += ["age", "sex", *iqm_names, *regions]
    return pd.DataFrame.from_records(records, columns=cols)


def precheck_rows(table: pd.DataFrame, model: Any) -> dict[str, str]:
    """Rows the core would refuse, found in one vectorized pass (bids_name → reason).

    The core validates a whole table and stops at the first bad row; one call costs ~0.3 s
    whatever its size, so the core's own one-pass check sets bad scans aside first.
    """
    from neuroharmony_bids.harmonize.apply import invalid_rows

    names = table["bids_name"].astype(str).to_numpy()
    return {names[pos]: reason for pos, reason in invalid_rows(table, model).items()}


def harmonize_rows(
    table: pd.DataFrame, model: Any, harmonize_table: Callable
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Harmonize all rows at once; if the batch is refused, bisect to isolate the bad rows.

    Without a site column every scan is harmonized on its own, so splitting the batch does not
    change any result; k bad rows cost O(k log n) calls instead of n.
    """
    failed = precheck_rows(table, model)
    if failed:
        table = table[~table["bids_name"].isin(list(failed))].reset_index(drop=True)
        if table.empty:
            return table, failed

    def attempt(part: pd.DataFrame) -> list[pd.DataFrame]:
        try:
            return [harmonize_table(part.reset_index(drop=True), model)]
        except NeuroharmonyError as exc:
            if len(part) == 1:
                failed[str(part["bids_name"].iloc[0])] = str(exc)
                return []
        mid = len(part) // 2
        return attempt(part.iloc[:mid]) + attempt(part.iloc[mid:])

    pieces = attempt(table)
    if not pieces:
        return table.iloc[0:0].copy(), failed
    return (pieces[0] if len(pieces) == 1 else pd.concat(pieces, ignore_index=True)), failed


# --------------------------------------------------------------------------- main entry


def run_participant(settings: Settings, logger: logging.Logger | None = None) -> RunResult:
    """The participant level (see the module docstring). Returns what happened per scan."""
    log = logger or LOGGER
    out = settings.output_dir
    t0 = time.monotonic()
    started = time.time()
    layout = load_layout(settings.bids_dir)
    scans = find_scans(
        settings.bids_dir, settings.participant_label, settings.session_label, layout=layout
    )
    log.info("%d T1w scan(s) selected (indexing took %.1f s)", len(scans), time.monotonic() - t0)
    result = RunResult("participant", total=len(scans))
    harmonize_table, _, _ = harmonization_core()
    model, info = load_model_and_info(settings)
    ident = D.model_identity(info)
    log.info(
        "model: %s (version %s, sha256 %s)",
        ident.get("name"), ident.get("version"), str(ident.get("sha256"))[:16],
    )  # fmt: skip
    description = D.dataset_description(
        settings.bids_dir,
        out,
        info,
        container=(settings.environ or {}).get("NEUROHARMONY_CONTAINER"),
    )
    D.write_dataset_files(out, description, overwrite=settings.overwrite)

    pending = []
    for scan in scans:
        if not settings.overwrite and D.is_done(out, scan):
            result.skipped.append(scan.bids_name)
        else:
            pending.append(scan)
    if result.skipped:
        log.info(
            "%d scan(s) already have outputs and are skipped (--overwrite recomputes them)",
            len(result.skipped),
        )
    if not pending:
        _remove_stale_temps(out, scans, started, log)
        return result

    plans = locate_inputs(settings, pending, scans_per_subject(layout))
    if any(p.needs_mriqc or p.needs_recon_all for p in plans):
        license_file = check_tools(settings, plans)
        run_tools(settings, [p for p in plans if p.needs_mriqc or p.needs_recon_all],
                  license_file, log)  # fmt: skip
        redo = locate_inputs(settings, [p.scan for p in plans], scans_per_subject(layout))
        plans = redo

    covs = read_covariates(
        settings.bids_dir,
        pending,
        age_column=settings.age_column,
        sex_column=settings.sex_column,
        sex_mapping=settings.sex_mapping_dict,
    )
    required = required_iqms(model)
    progress = Progress("participant", len(pending), log)
    inputs: list[ScanInputs] = []
    group_tables: dict[Path, pd.DataFrame] = {}
    for plan in plans:
        name = plan.scan.bids_name
        if name in covs.errors:
            _fail(result, out, plan.scan, covs.errors[name], 65, log)
            progress.update()
            continue
        try:
            item = parse_scan(plan, required, group_tables)
            inputs.append(item)
            for warning in item.warnings:
                result.warnings.append(warning)
                log.warning("%s: %s", name, warning)
        except NeuroharmonyError as exc:
            _fail(result, out, plan.scan, str(exc), exc.exit_code, log)
            progress.update()
    if inputs:
        table = build_table(inputs, covs.table)
        t1 = time.monotonic()
        harmonized, row_failures = harmonize_rows(table, model, harmonize_table)
        log.debug("harmonized %d scans in %.2f s", len(harmonized), time.monotonic() - t1)
        by_name = {str(b): i for i, b in enumerate(harmonized["bids_name"])}
        model_meta = {k: v for k, v in ident.items() if k in ("name", "version", "sha256", "path")}
        jobs = []
        for item in inputs:
            scan = item.scan
            if scan.bids_name in row_failures:
                _fail(result, out, scan, row_failures[scan.bids_name], 65, log)
                progress.update()
                continue
            provenance = dict(item.provenance)
            provenance["Sources"] = [f"bids:raw:{scan.relpath(settings.bids_dir)}"]
            provenance["Scanner"] = dict(scan.metadata)
            provenance["Covariates"] = {
                "age": float(covs.table.at[scan.bids_name, "age"]),
                "sex": covs.table.at[scan.bids_name, "sex"],
            }
            provenance["Model"] = model_meta
            hrow = harmonized.iloc[by_name[scan.bids_name]].to_dict()
            jobs.append((scan, item.volumes, hrow, provenance))
        write_outputs(out, jobs, result, progress)
        if settings.participant_reports and result.succeeded:
            _participant_reports(settings, table, harmonized, model, inputs, result, log)
    _remove_stale_temps(out, scans, started, log)
    result.outputs["output_dir"] = str(out)
    return result


def _remove_stale_temps(
    out: Path, scans: Sequence[Scan], started: float, log: logging.Logger
) -> None:
    """Delete temporary files a killed earlier run left in this run's folders."""
    folders = {out, D.logs_dir(out) / "failed"} | {D.scan_dir(out, s) for s in scans}
    removed = [p for f in sorted(folders) for p in D.remove_stale_temps(f, started)]
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run", len(removed))


def write_outputs(
    out: Path,
    jobs: Sequence[tuple[Scan, dict[str, float], dict[str, Any], dict[str, Any]]],
    result: RunResult,
    progress: Progress,
    threads: int = 8,
) -> None:
    """Write the per-scan files from a few threads: each atomic write waits on fsync/rename,
    which release the GIL, so overlapping them is what makes 1,000 scans take seconds."""

    def job(args: tuple[Scan, dict[str, float], dict[str, Any], dict[str, Any]]) -> str:
        scan, volumes, hrow, provenance = args
        D.write_scan_outputs(out, scan, volumes, hrow, provenance)
        failures.clear_failure(out, scan)
        return scan.bids_name

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for name in pool.map(job, jobs):
            result.succeeded.append(name)
            progress.update()


def _fail(
    result: RunResult, out: Path, scan: Scan, reason: str, code: int, log: logging.Logger
) -> None:
    result.failed[scan.bids_name] = reason
    failures.write_failure(out, scan, reason, code)
    log.warning("%s failed: %s", scan.bids_name, reason)


def _participant_reports(
    settings: Settings,
    table: pd.DataFrame,
    harmonized: pd.DataFrame,
    model: Any,
    inputs: Sequence[ScanInputs],
    result: RunResult,
    log: logging.Logger,
) -> None:
    """Per-scan HTML reports (written by the reports package when it is installed)."""
    try:
        from neuroharmony_bids.reports.participant import write_participant_report
    except ImportError as exc:
        msg = f"per-scan reports skipped: the reports package is not available ({exc})"
        result.warnings.append(msg)
        log.warning("%s", msg)
        return
    done = set(result.succeeded)
    raw_idx = {str(b): i for i, b in enumerate(table["bids_name"])}
    harm_idx = {str(b): i for i, b in enumerate(harmonized["bids_name"])}
    progress = Progress("participant reports", len(done), log)
    for item in inputs:
        name = item.scan.bids_name
        if name not in done:
            continue
        raw_row = table.iloc[raw_idx[name]].copy()
        for key, value in item.scan.metadata.items():
            raw_row[key] = value
        try:
            write_participant_report(
                D.report_path(settings.output_dir, item.scan),
                raw_row,
                harmonized.iloc[harm_idx[name]],
                model,
            )
        except Exception as exc:  # a report must not undo the scan's data outputs
            msg = f"{name}: report not written ({type(exc).__name__}: {exc})"
            result.warnings.append(msg)
            log.warning("%s", msg)
        progress.update()


__all__ = [
    "ScanInputs",
    "ScanPlan",
    "build_table",
    "check_tools",
    "harmonization_core",
    "harmonize_rows",
    "init_tools_wf",
    "load_model_and_info",
    "locate_inputs",
    "parse_scan",
    "plugin_settings",
    "precheck_rows",
    "required_iqms",
    "run_participant",
    "run_tools",
]
