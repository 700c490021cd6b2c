"""Command line of the BIDS App: argparse only (options, aliases, help) → a frozen Settings.

Every option has help text and a plain ``dest`` so that a Boutiques descriptor can be generated
from :func:`build_parser`. Integer/float options use ``type=int``/``float`` (ranges are checked
in :func:`settings_from_args`) for the same reason.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from neuroharmony_bids._version import __version__
from neuroharmony_bids.cli.labels import clean_labels, parse_sex_mapping
from neuroharmony_bids.cli.table import non_negative_float
from neuroharmony_bids.errors import UsageError
from neuroharmony_bids.settings import Settings

PROG = "neuroharmony-bids"

DESCRIPTION = (
    "Harmonize FreeSurfer regional volumes of single T1w scans with MRIQC image-quality "
    "metrics (Neuroharmony). Participant level: for every T1w scan, read (or compute) MRIQC "
    "IQMs and FreeSurfer volumes, harmonize them and write BIDS derivatives. Group level: "
    "collect all scans into group tables and a report; optionally train a dataset-specific "
    "model. Never uses the network."
)

EPILOG = (
    "Exit codes: 0 success; 1 some scans failed or an unexpected error (see output_dir/logs); "
    "16 invalid BIDS dataset; 18 the filters selected no scan; 64 usage error; 65 malformed "
    "input data or model file; 66 a required input or tool is missing."
)


class _Parser(argparse.ArgumentParser):
    """argparse that exits with the BIDS-Apps usage code 64 (not 2) on bad arguments."""

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(64, f"{self.prog}: error: {message} (exit code 64)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``neuroharmony-bids`` / ``run.py`` argument parser."""
    p = _Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG)
    p.add_argument(
        "bids_dir",
        help="The root folder of the input BIDS dataset (with dataset_description.json).",
    )
    p.add_argument(
        "output_dir",
        help="Where the derivatives are written. Outside the input dataset, or inside its "
        "derivatives/ folder (e.g. bids_dir/derivatives/neuroharmony).",
    )
    p.add_argument(
        "analysis_level",
        choices=["participant", "group"],
        help="participant: harmonize each T1w scan; group: aggregate participant outputs "
        "(run after all participants).",
    )
    g = p.add_argument_group("Selecting scans")
    g.add_argument(
        "--participant-label",
        "--participant_label",
        dest="participant_label",
        nargs="+",
        metavar="LABEL",
        help="Process only these participants (labels with or without 'sub-'). Default: all.",
    )
    g.add_argument(
        "--session-label",
        "--session_label",
        dest="session_label",
        nargs="+",
        metavar="LABEL",
        help="Process only these sessions (labels with or without 'ses-'). Default: all.",
    )
    g = p.add_argument_group("Existing derivatives and tools")
    g.add_argument(
        "--mriqc-dir",
        dest="mriqc_dir",
        metavar="PATH",
        help="Existing MRIQC outputs to reuse (sub-X_T1w.json files or group_T1w.tsv). Also "
        "searched: output_dir/sourcedata/mriqc and bids_dir/derivatives/mriqc.",
    )
    g.add_argument(
        "--freesurfer-dir",
        dest="freesurfer_dir",
        metavar="PATH",
        help="Existing FreeSurfer SUBJECTS_DIR to reuse (subjects named sub-X, sub-X_ses-Y or "
        "the full scan name). Also searched: output_dir/sourcedata/freesurfer and "
        "bids_dir/derivatives/freesurfer.",
    )
    g.add_argument(
        "--fs-license-file",
        dest="fs_license_file",
        metavar="PATH",
        help="FreeSurfer license file, needed only to run recon-all. Default: $FS_LICENSE, "
        "then $FREESURFER_HOME/license.txt.",
    )
    g = p.add_argument_group("Harmonization")
    g.add_argument(
        "--model",
        dest="model",
        metavar="PATH",
        help="Harmonization model file (e.g. one trained with --train, under "
        "output_dir/models/). Default: the model shipped with neuroharmony-bids.",
    )
    g.add_argument(
        "--age-column",
        dest="age_column",
        default="age",
        metavar="NAME",
        help="Column of participants.tsv / sessions.tsv holding age in years (default: age).",
    )
    g.add_argument(
        "--sex-column",
        dest="sex_column",
        default="sex",
        metavar="NAME",
        help="Column of participants.tsv / sessions.tsv holding sex (default: sex).",
    )
    g.add_argument(
        "--sex-mapping",
        dest="sex_mapping",
        nargs="+",
        metavar="CODE=SEX",
        help="How to read numeric sex codes, e.g. --sex-mapping 1=M 2=F. Without it only "
        "M/F/male/female are accepted.",
    )
    g.add_argument(
        "--profile-weight",
        dest="profile_weight",
        type=non_negative_float,
        default=None,
        metavar="W",
        help="How far a scan's own regional profile may move its scanner estimate (default: the model's, 1). 0: IQM prior only, keeps all of a person's anatomy, removes least site effect; 2: removes more site effect and keeps about 95 %% of a 10 %% atrophy (worst region about 85 %%); the shipped default keeps about 97 %% (worst region 90 %%). See docs/faq.md.",
    )
    g.add_argument(
        "--train",
        dest="train",
        action="store_true",
        help="Group level: fit a dataset-specific model on this dataset's raw volumes and save "
        "it with a model card under output_dir/models/ (use it later with --model).",
    )
    g.add_argument(
        "--site-column",
        dest="site_column",
        metavar="NAME",
        help="Column of participants.tsv / sessions.tsv naming each scan's site (for --train "
        "and the group report). Default: the scanner from the sidecars (Manufacturer, "
        "ManufacturersModelName, DeviceSerialNumber).",
    )
    g = p.add_argument_group("Resources and execution")
    g.add_argument(
        "-w",
        "--work-dir",
        dest="work_dir",
        metavar="PATH",
        help="Scratch folder for MRIQC/FreeSurfer runs through Nipype (default: "
        "output_dir/work). Not used when only existing derivatives are read.",
    )
    g.add_argument(
        "--nprocs",
        "--n_cpus",
        "--n-cpus",
        dest="nprocs",
        type=int,
        default=None,
        metavar="N",
        help="Maximum number of processes (Nipype MultiProc and MRIQC). Default: the CPUs "
        "available to this process.",
    )
    g.add_argument(
        "--omp-nthreads",
        dest="omp_nthreads",
        type=int,
        default=None,
        metavar="N",
        help="Threads per process for MRIQC and recon-all (default: min(8, nprocs)).",
    )
    g.add_argument(
        "--mem-gb",
        "--mem_gb",
        dest="mem_gb",
        type=float,
        default=None,
        metavar="GB",
        help="Memory limit in GB given to the Nipype plugin and to MRIQC.",
    )
    g.add_argument(
        "--use-plugin",
        dest="use_plugin",
        metavar="FILE",
        help="Nipype plugin settings (YAML with 'plugin' and 'plugin_args', e.g. MultiProc or "
        "SLURMGraph) for running MRIQC/recon-all.",
    )
    g.add_argument(
        "--skip-bids-validation",
        "--skip_bids_validator",
        dest="skip_bids_validation",
        action="store_true",
        help="Do not run the BIDS validator (bids-validator-deno) on the input dataset.",
    )
    g.add_argument(
        "--overwrite",
        dest="overwrite",
        action="store_true",
        help="Recompute scans that already have outputs (default: they are skipped), and "
        "replace outputs made with another model or version.",
    )
    g.add_argument(
        "--no-participant-reports",
        dest="no_participant_reports",
        action="store_true",
        help="Do not write the per-scan HTML reports (the slowest part on large datasets).",
    )
    g = p.add_argument_group("Messages")
    g.add_argument(
        "--verbose",
        dest="verbose",
        action="store_true",
        help="Print debugging messages (the log file in output_dir/logs always has them).",
    )
    g.add_argument(
        "-q",
        "--quiet",
        dest="quiet",
        action="store_true",
        help="Print only warnings and errors.",
    )
    p.add_argument(
        "-v",
        "--version",
        action="version",
        version=f"{PROG} {__version__}",
        help="Print the version and exit.",
    )
    return p


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser().absolute() if value else None


def settings_from_args(
    args: argparse.Namespace, argv: Sequence[str] = (), environ: dict[str, str] | None = None
) -> Settings:
    """Build the frozen Settings from parsed arguments (labels cleaned, numbers checked)."""
    environ = dict(os.environ if environ is None else environ)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    nprocs = args.nprocs if args.nprocs is not None else max(1, cpus or 1)
    if nprocs < 1:
        raise UsageError(f"--nprocs {args.nprocs}: must be at least 1")
    omp = args.omp_nthreads if args.omp_nthreads is not None else min(8, nprocs)
    if omp < 1:
        raise UsageError(f"--omp-nthreads {args.omp_nthreads}: must be at least 1")
    if args.mem_gb is not None and args.mem_gb <= 0:
        raise UsageError(f"--mem-gb {args.mem_gb}: must be positive")
    if args.verbose and args.quiet:
        raise UsageError("--verbose and --quiet contradict each other; give one")
    for flag, value in (("--age-column", args.age_column), ("--sex-column", args.sex_column)):
        if not str(value).strip():
            raise UsageError(f"{flag}: give a column name")
    if args.train and args.analysis_level != "group":
        raise UsageError("--train is a group-level option: run `... group --train`")
    use_plugin = _path(args.use_plugin)
    if use_plugin is not None and not use_plugin.is_file():
        raise UsageError(f"--use-plugin {args.use_plugin}: no such file")
    model = _path(args.model)
    if model is not None and not model.exists():
        raise UsageError(
            f"--model {args.model}: no such file. Models trained with --train are under "
            f"output_dir/models/; omit --model to use the shipped model"
        )
    for flag, value in (("--mriqc-dir", args.mriqc_dir), ("--freesurfer-dir", args.freesurfer_dir)):
        if value and not Path(value).expanduser().is_dir():
            raise UsageError(f"{flag} {value}: no such folder")
    return Settings(
        bids_dir=_path(args.bids_dir),  # type: ignore[arg-type]
        output_dir=_path(args.output_dir),  # type: ignore[arg-type]
        analysis_level=args.analysis_level,
        participant_label=clean_labels(args.participant_label, "sub"),
        session_label=clean_labels(args.session_label, "ses"),
        work_dir=_path(args.work_dir),
        nprocs=nprocs,
        omp_nthreads=omp,
        mem_gb=args.mem_gb,
        skip_bids_validation=bool(args.skip_bids_validation),
        fs_license_file=_path(args.fs_license_file),
        mriqc_dir=_path(args.mriqc_dir),
        freesurfer_dir=_path(args.freesurfer_dir),
        model=model,
        use_plugin=use_plugin,
        overwrite=bool(args.overwrite),
        train=bool(args.train),
        site_column=args.site_column,
        age_column=args.age_column,
        sex_column=args.sex_column,
        sex_mapping=tuple(sorted(parse_sex_mapping(args.sex_mapping).items())),
        profile_weight=args.profile_weight,
        participant_reports=not args.no_participant_reports,
        verbosity=1 if args.verbose else (-1 if args.quiet else 0),
        argv=tuple(argv),
        environ=environ,
    )


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Parse a command line (without the program name) into Settings."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return settings_from_args(build_parser().parse_args(argv), [PROG, *argv])


__all__ = ["build_parser", "parse_settings", "settings_from_args"]
