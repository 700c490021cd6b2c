"""The tools a scan still needs, MRIQC (IQMs) and recon-all (volumes), as one Nipype workflow.

Steps, with why:

1. :func:`locate_inputs`: each scan's IQMs and FreeSurfer subject among existing outputs (the
   ``precomputed`` ones). A FreeSurfer folder recon-all did not finish is never read: ours
   (``OUTPUT_DIR/sourcedata/freesurfer``) is resumed, anybody else's is reported.
2. :func:`check_tools`: exit 66 naming the tool when one that must run is not installed.
3. :func:`init_tools_wf` (shaped like sMRIPrep's ``init_surface_recon_wf``): ``inputnode`` →
   one pybids index → MRIQC per batch of participants, and recon-all per scan → ``outputnode``.
   Nodes exist only for what is missing.
4. :func:`run_tools`: runs it with the chosen plugin and takes the results from the workflow
   itself (Nipype's status callback hands over each finished node's outputs), so nothing looks
   on disk for what the workflow just produced. A failed node becomes a per-scan failure that
   quotes the tool's last lines; its crash file is in ``OUTPUT_DIR/logs/crash``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuroharmony_bids.bids import derivatives as D
from neuroharmony_bids.bids.layout import Scan, freesurfer_subject_candidates
from neuroharmony_bids.errors import MissingInputError, NeuroharmonyError, UsageError
from neuroharmony_bids.interfaces import freesurfer as fs
from neuroharmony_bids.io import mriqc_json
from neuroharmony_bids.settings import Settings
from neuroharmony_bids.workflows.results import few

LOGGER = logging.getLogger("neuroharmony_bids")

#: Participants per MRIQC call. Every call pays MRIQC's start-up (templates, loading the
#: index) and runs its participants in parallel with ``--nprocs``; a batch is also what one
#: SLURMGraph job runs.
MRIQC_BATCH_SIZE = 16

#: Lines of a failed tool's output quoted in the per-scan failure message.
TAIL_LINES = 4


@dataclass
class ScanPlan:
    """Where one scan's inputs are, or why a tool cannot give them."""

    scan: Scan
    iqm_source: mriqc_json.IQMSource | None = None
    fs_subject_dir: Path | None = None
    #: our own unfinished FreeSurfer subject, to resume
    fs_resume: fs.SubjectState | None = None
    #: why this scan cannot get its inputs (the scan fails with it and ``failure_code``:
    #: 1 when a tool failed, 66 when an existing input cannot be used)
    failure: str | None = None
    failure_code: int = 1

    @property
    def needs_mriqc(self) -> bool:
        return self.failure is None and self.iqm_source is None

    @property
    def needs_recon_all(self) -> bool:
        return self.failure is None and self.fs_subject_dir is None


# --------------------------------------------------------------------------- locating inputs


def locate_inputs(
    settings: Settings, scans: Sequence[Scan], subject_counts: Mapping[str, int]
) -> list[ScanPlan]:
    """Find each scan's MRIQC IQMs and finished FreeSurfer subject among existing outputs."""
    mriqc_dirs = settings.mriqc_dirs()
    fs_dirs = settings.freesurfer_dirs()
    own = own_subjects_dir(settings)
    group_tables: dict[Path, Any] = {}
    plans = []
    for scan in scans:
        plan = ScanPlan(scan)
        plan.iqm_source = mriqc_json.find_iqm_source(
            mriqc_dirs, scan.bids_name, scan.rel_dir, group_tables
        )
        names = freesurfer_subject_candidates(scan, subject_counts.get(scan.subject, 0) == 1)
        unfinished: fs.SubjectState | None = None
        for fdir in fs_dirs:
            for name in names:
                state = fs.subject_state(fdir / name)
                if state.complete:
                    plan.fs_subject_dir = state.path
                    break
                if state.status != "absent" and unfinished is None:
                    unfinished = state
            if plan.fs_subject_dir is not None:
                break
        if plan.fs_subject_dir is None and unfinished is not None:
            _plan_unfinished(plan, unfinished, own)
        plans.append(plan)
    return plans


def own_subjects_dir(settings: Settings) -> Path:
    """The SUBJECTS_DIR this app runs recon-all into (and may resume in)."""
    return settings.output_dir / "sourcedata" / "freesurfer"


def _plan_unfinished(plan: ScanPlan, state: fs.SubjectState, own: Path) -> None:
    ours = state.path.name == plan.scan.prefix and _same_dir(state.path.parent, own)
    sd, name = state.path.parent, state.path.name
    if ours and state.status != "running":
        plan.fs_resume = state
        return
    if state.status == "running":
        how = (
            f"wait until it finishes; if no recon-all runs on it any more, delete "
            f"{state.path / 'scripts'}/IsRunning* and run again"
        )
    else:
        how = (
            f"finish it (recon-all -s {name} -sd {sd} -all, without -i), or remove that "
            f"folder or point --freesurfer-dir elsewhere so that recon-all runs here"
        )
    plan.failure = (
        f"FreeSurfer subject {state.path} is {state.status} ({state.detail}); a subject "
        f"recon-all did not finish is not read. To fix: {how}"
    )
    plan.failure_code = MissingInputError.exit_code


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


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
        from neuroharmony_bids.interfaces.mriqc import mriqc_status

        why = mriqc_status()
        if why:
            problems.append(
                f"MRIQC IQMs are missing for {len(need_mq)} scan(s) ({few(need_mq)}); searched "
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
                f"FreeSurfer stats are missing for {len(need_fs)} scan(s) ({few(need_fs)}); "
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


# --------------------------------------------------------------------------- the workflow


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


def mriqc_batches(labels: Sequence[str], size: int = MRIQC_BATCH_SIZE) -> list[list[str]]:
    """Participant labels in sorted batches of at most ``size`` (one MRIQC call each)."""
    ordered = sorted(set(labels))
    size = max(1, int(size))
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def node_name(prefix: str, ident: str) -> str:
    """A Nipype node name (letters, digits, underscores) for one tool call."""
    return f"{prefix}_{re.sub(r'[^A-Za-z0-9]', '_', ident)}"


def init_tools_wf(
    *,
    scans: Sequence[Scan],
    precomputed: Mapping[str, Mapping[str, Any]],
    bids_dir: Path,
    mriqc_dir: Path,
    subjects_dir: Path,
    work_dir: Path,
    license_file: Path | None = None,
    session_label: Sequence[str] = (),
    nprocs: int = 1,
    omp_nthreads: int = 1,
    mem_gb: float | None = None,
    mriqc_batch_size: int = MRIQC_BATCH_SIZE,
    name: str = "tools_wf",
):
    """MRIQC and recon-all for the ``scans`` whose outputs are not in ``precomputed``.

    ``precomputed`` maps ``"mriqc"`` and ``"freesurfer"`` to the scans (by BIDS name) that
    already have IQMs / a finished FreeSurfer subject; no node is made for them. The dataset is
    indexed once (``mriqc_bids_db``) for every MRIQC call's ``--bids-database-dir``.

    Inputs: ``bids_dir``, ``mriqc_dir`` (MRIQC's output folder), ``subjects_dir``.
    Outputs: ``iqm_files`` (the IQM JSONs MRIQC wrote), ``subjects_dir`` and ``subject_ids``
    (the FreeSurfer subjects recon-all finished).
    """
    from nipype.interfaces import utility as niu
    from nipype.interfaces.freesurfer import ReconAll
    from nipype.pipeline import engine as pe

    work_dir = Path(work_dir)
    nprocs, omp = max(1, int(nprocs)), max(1, int(omp_nthreads))
    wf = pe.Workflow(name=name, base_dir=str(work_dir))
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["bids_dir", "mriqc_dir", "subjects_dir"]), name="inputnode"
    )
    inputnode.inputs.bids_dir = str(bids_dir)
    inputnode.inputs.mriqc_dir = str(mriqc_dir)
    inputnode.inputs.subjects_dir = str(subjects_dir)
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["iqm_files", "subjects_dir", "subject_ids"]),
        name="outputnode",
    )
    wf.add_nodes([inputnode, outputnode])

    have_iqms = precomputed.get("mriqc", {})
    batches = mriqc_batches([s.subject for s in scans if s.bids_name not in have_iqms],
                            mriqc_batch_size)  # fmt: skip
    if batches:
        from neuroharmony_bids.interfaces.mriqc import MRIQC, BIDSDatabase

        Path(mriqc_dir).mkdir(parents=True, exist_ok=True)
        index = pe.Node(
            BIDSDatabase(database_dir=str(work_dir / "mriqc_bids_db")), name="mriqc_bids_db"
        )
        merge_iqms = pe.Node(niu.Merge(len(batches), ravel_inputs=True), name="merge_iqm_files")
        wf.connect(inputnode, "bids_dir", index, "bids_dir")
        for k, batch in enumerate(batches, start=1):
            mriqc = pe.Node(
                MRIQC(
                    participant_label=batch,
                    work_dir=str(work_dir / "mriqc" / f"batch_{k:03d}"),
                    nprocs=nprocs,
                    omp_nthreads=omp,
                ),
                name=node_name("mriqc_batch", f"{k:03d}"),
                n_procs=nprocs,
                mem_gb=mem_gb or 8.0,
            )
            if session_label:
                mriqc.inputs.session_id = list(session_label)
            if mem_gb:
                mriqc.inputs.mem_gb = float(mem_gb)
            wf.connect([
                (inputnode, mriqc, [("bids_dir", "bids_dir"), ("mriqc_dir", "output_dir")]),
                (index, mriqc, [("database_dir", "bids_database_dir")]),
                (mriqc, merge_iqms, [("iqm_files", f"in{k}")]),
            ])  # fmt: skip
        wf.connect(merge_iqms, "out", outputnode, "iqm_files")

    have_fs = precomputed.get("freesurfer", {})
    need_fs = [s for s in scans if s.bids_name not in have_fs]
    if need_fs:
        Path(subjects_dir).mkdir(parents=True, exist_ok=True)
        merge_ids = pe.Node(niu.Merge(len(need_fs)), name="merge_subject_ids")
        for k, scan in enumerate(need_fs, start=1):
            recon = pe.Node(
                ReconAll(
                    directive="all",
                    subject_id=scan.prefix,
                    T1_files=[str(scan.path)],
                    openmp=omp,
                    environ={"FS_LICENSE": str(license_file or "")},
                ),  # fmt: skip
                name=node_name("recon_all", scan.prefix),
                n_procs=omp,
                mem_gb=5.0,
            )
            recon.interface._always_run = True  # made only for a missing subject (as sMRIPrep)
            wf.connect([
                (inputnode, recon, [("subjects_dir", "subjects_dir")]),
                (recon, merge_ids, [("subject_id", f"in{k}")]),
            ])  # fmt: skip
        wf.connect([
            (inputnode, outputnode, [("subjects_dir", "subjects_dir")]),
            (merge_ids, outputnode, [("out", "subject_ids")]),
        ])  # fmt: skip
    return wf


# --------------------------------------------------------------------------- running it


@dataclass
class ToolRun:
    """What the finished and the failed nodes of one tools run handed back."""

    iqm_files: dict[str, Path] = field(default_factory=dict)  # bids name → IQM JSON
    subject_dirs: dict[str, Path] = field(default_factory=dict)  # subject id → folder
    failures: dict[str, str] = field(default_factory=dict)  # node name → message
    labels: dict[str, list[str]] = field(default_factory=dict)  # failed MRIQC node → labels
    subjects: dict[str, str] = field(default_factory=dict)  # failed recon-all node → subject

    def record(self, node: Any, status: str) -> None:
        """Nipype status callback (called in the main process for every node)."""
        if status not in ("end", "exception"):
            return
        try:
            result = node.result
        except Exception:  # no result file (e.g. the node could not even start)
            result = None
        outputs = getattr(result, "outputs", None)
        if status == "end" and outputs is not None:
            for path in getattr(outputs, "iqm_files", None) or []:
                self.iqm_files[Path(path).name[: -len(".json")]] = Path(path)
            # a recon-all node (subject_id), or the outputnode (subject_ids) once all ended
            sd = getattr(outputs, "subjects_dir", None)
            ids = getattr(outputs, "subject_id", None) or getattr(outputs, "subject_ids", None)
            if isinstance(sd, str):
                for sid in [ids] if isinstance(ids, str) else ids or []:
                    self.subject_dirs[str(sid)] = Path(sd) / str(sid)
            return
        if status == "exception":
            self.failures[node.name] = _failure_message(node, result)
            ran = dict(getattr(result, "inputs", None) or {})
            if "participant_label" in ran:
                from neuroharmony_bids.interfaces.mriqc import iqm_files

                labels = list(ran["participant_label"])
                self.labels[node.name] = labels
                # MRIQC finishes the other participants of the batch when one crashes
                sessions = ran.get("session_id") or ()
                sessions = () if not isinstance(sessions, (list, tuple)) else sessions
                for path in iqm_files(ran["output_dir"], labels, sessions):
                    self.iqm_files.setdefault(Path(path).name[: -len(".json")], Path(path))
            elif "subject_id" in ran:
                self.subjects[node.name] = str(ran["subject_id"])


def _tail(text: Any, n: int = TAIL_LINES) -> list[str]:
    """The last ``n`` lines of a tool's output, led by its last ``ERROR`` lines (recon-all
    prints its error a few lines before its closing banner)."""
    lines = [ln.strip() for ln in str(text or "").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()][-2:]
    tail = [ln for ln in lines[-n:] if ln not in errors]
    return errors + tail


def _failure_message(node: Any, result: Any) -> str:
    """``<tool> failed (exit code N): <its last lines>``, from the node's result record."""
    tool = type(node.interface).__name__
    tool = {"MRIQC": "MRIQC", "ReconAll": "recon-all"}.get(tool, tool)
    runtime = getattr(result, "runtime", None)
    code = getattr(runtime, "returncode", None)
    # recon-all reports on stdout (its stderr holds the odd shell warning), MRIQC on stderr:
    # quote the stream that says more about errors
    streams = [_tail(getattr(runtime, "stderr", "")), _tail(getattr(runtime, "stdout", ""))]
    lines = max(streams, key=lambda ls: (sum("error" in ln.lower() for ln in ls), bool(ls)))
    if not lines:
        lines = _tail(getattr(runtime, "traceback", "") or getattr(node, "_traceback", ""), 2)
    where = f"exit code {code}" if isinstance(code, int) else "no exit code"
    return f"{tool} failed ({where}): " + " | ".join(lines or ["no output"])


def prepare_resume(plans: Sequence[ScanPlan], log: logging.Logger) -> None:
    """Make our unfinished subjects resumable: remove the IsRunning files of a killed run
    (recon-all refuses to start while they exist); remove a folder recon-all cannot resume
    (it never imported the input), so that it starts again with ``-i``."""
    for plan in plans:
        state = plan.fs_resume
        if state is None:
            continue
        if state.status == "interrupted":
            removed = fs.remove_isrunning(state)
            log.warning("%s: removed %s left by an interrupted recon-all (%s); resuming it",
                        state.path, ", ".join(p.name for p in removed), state.detail)  # fmt: skip
        if state.resumable:
            log.info("%s: recon-all %s (%s); resuming it", state.path, state.status, state.detail)
        else:
            shutil.rmtree(state.path)
            log.warning("%s: recon-all %s before importing the T1w (%s); starting it again",
                        state.path, state.status, state.detail)  # fmt: skip


def run_tools(
    settings: Settings, plans: Sequence[ScanPlan], license_file: Path | None, log: logging.Logger
) -> None:
    """Run the tools workflow and hand its results to the plans; a scan whose tool failed gets
    ``plan.failure`` with the tool's own last lines."""
    todo = [p for p in plans if p.needs_mriqc or p.needs_recon_all]
    if not todo:
        return
    prepare_resume(todo, log)
    mriqc_dir = settings.output_dir / "sourcedata" / "mriqc"
    wf = init_tools_wf(
        scans=[p.scan for p in todo],
        precomputed={
            "mriqc": {p.scan.bids_name: p.iqm_source for p in todo if not p.needs_mriqc},
            "freesurfer": {
                p.scan.bids_name: p.fs_subject_dir for p in todo if not p.needs_recon_all
            },
        },
        bids_dir=settings.bids_dir,
        mriqc_dir=mriqc_dir,
        subjects_dir=own_subjects_dir(settings),
        work_dir=settings.effective_work_dir,
        license_file=license_file,
        session_label=settings.session_label,
        nprocs=settings.nprocs,
        omp_nthreads=settings.omp_nthreads,
        mem_gb=settings.mem_gb,
    )
    crash_dir = D.logs_dir(settings.output_dir) / "crash"
    wf.config["execution"] = {
        "crashdump_dir": str(crash_dir),
        "crashfile_format": "txt",
        "stop_on_first_crash": "false",
        "remove_unnecessary_outputs": "false",
    }
    plugin, args = plugin_settings(settings)
    run = ToolRun()

    def status_callback(node: Any, status: str) -> None:  # a closure: Nipype may copy args
        run.record(node, status)

    args["status_callback"] = status_callback
    n_mq = sum(1 for n in wf.list_node_names() if n.startswith("mriqc_batch"))
    n_fs = sum(1 for n in wf.list_node_names() if n.startswith("recon_all"))
    log.info("running %d MRIQC call(s) and %d recon-all job(s) through Nipype (%s plugin); "
             "recon-all takes hours per scan", n_mq, n_fs, plugin)  # fmt: skip
    try:
        wf.run(plugin=plugin, plugin_args=args)
    except RuntimeError as exc:
        if not run.failures:
            raise NeuroharmonyError(
                f"the MRIQC/recon-all workflow could not run with the {plugin} plugin: {exc}"
            ) from exc
        log.warning("%d MRIQC/recon-all job(s) failed; crash files in %s",
                    len(run.failures), crash_dir)  # fmt: skip
    _hand_over(todo, run, plugin, crash_dir)


def _hand_over(plans: Sequence[ScanPlan], run: ToolRun, plugin: str, crash_dir: Path) -> None:
    """Give each plan what its tools produced, or the reason they did not."""
    failures = {node: msg + _crash_file(crash_dir, node) for node, msg in run.failures.items()}
    failed_labels = {lab: msg for node, msg in failures.items()
                     for lab in run.labels.get(node, [])}  # fmt: skip
    failed_subjects = {run.subjects[n]: msg for n, msg in failures.items() if n in run.subjects}
    index_failure = failures.get("mriqc_bids_db")
    queued = plugin.endswith("Graph")
    for plan in plans:
        scan = plan.scan
        if plan.needs_mriqc:
            path = run.iqm_files.get(scan.bids_name)
            if path is not None:
                plan.iqm_source = mriqc_json.IQMSource("json", path, scan.bids_name)
            elif scan.subject in failed_labels:
                plan.failure = failed_labels[scan.subject]
            elif index_failure:
                plan.failure = f"indexing the dataset for MRIQC failed: {index_failure}"
            elif queued:
                plan.failure = _queued_message(plugin)
            else:
                plan.failure = (
                    f"MRIQC wrote no IQMs for {scan.bids_name} (expected "
                    f"sourcedata/mriqc/{scan.rel_dir}/{scan.bids_name}.json); see {crash_dir}"
                )
        if plan.failure is None and plan.needs_recon_all:
            subject_dir = run.subject_dirs.get(scan.prefix)
            state = fs.subject_state(subject_dir) if subject_dir is not None else None
            if state is not None and state.complete:
                plan.fs_subject_dir = subject_dir
            elif scan.prefix in failed_subjects:
                plan.failure = failed_subjects[scan.prefix]
            elif queued:
                plan.failure = _queued_message(plugin)
            else:
                why = f"the subject is {state.status} ({state.detail})" if state else "no result"
                plan.failure = f"recon-all did not finish {scan.prefix}: {why}; see {crash_dir}"


def _crash_file(crash_dir: Path, node: str) -> str:
    """`` (crash file: <path>)`` of a failed node, the newest Nipype wrote for it."""
    found = sorted(crash_dir.glob(f"crash-*-{node}-*.txt"))
    return f" (crash file: {found[-1] if found else crash_dir})"


def _queued_message(plugin: str) -> str:
    return (
        f"MRIQC/recon-all were submitted as cluster jobs ({plugin}); run the participant level "
        f"again once they have finished (scripts/slurm_nipype_plugin.sbatch does)"
    )


__all__ = [
    "MRIQC_BATCH_SIZE",
    "ScanPlan",
    "ToolRun",
    "check_tools",
    "init_tools_wf",
    "locate_inputs",
    "mriqc_batches",
    "own_subjects_dir",
    "plugin_settings",
    "prepare_resume",
    "run_tools",
]
