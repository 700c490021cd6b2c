"""Entry point of the BIDS App: validate, dispatch participant/group, map errors to exit codes.

``main()`` never returns (it exits with the BIDS-Apps code); ``run()`` returns the code and is
what tests call. Every run logs to ``output_dir/logs/`` (exact command line, versions, timing);
errors print one paragraph on stderr saying what is wrong, where and how to fix it.
"""

from __future__ import annotations

import os

# Nipype checks for new releases over the network at import unless told not to.
os.environ.setdefault("NIPYPE_NO_ET", "1")

import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

from neuroharmony_bids._version import __version__  # noqa: E402
from neuroharmony_bids.bids.derivatives import PIPELINE_NAME  # noqa: E402
from neuroharmony_bids.errors import NeuroharmonyError, UsageError  # noqa: E402
from neuroharmony_bids.settings import Settings  # noqa: E402
from neuroharmony_bids.workflows.results import RunResult, fmt_duration  # noqa: E402

LOGGER_NAME = "neuroharmony_bids"


def input_folders(settings: Settings) -> list[tuple[str, Path]]:
    """Every folder this run reads and must never write into: (what, resolved path).

    The dataset, ``--mriqc-dir``, ``--freesurfer-dir``, and every other pipeline's folder in
    ``bids_dir/derivatives`` (``mriqc``, ``freesurfer``, ``fmriprep``, ...).
    """
    bids_dir = settings.bids_dir.resolve()
    out = [("the input dataset root", bids_dir)]
    for flag, value in (("--mriqc-dir", settings.mriqc_dir), ("--freesurfer-dir",
                                                              settings.freesurfer_dir)):  # fmt: skip
        if value is not None:
            out.append((f"the {flag} folder", Path(value).resolve()))
    derivatives = bids_dir / "derivatives"
    try:
        entries = sorted(p for p in derivatives.iterdir() if p.is_dir())
    except OSError:
        entries = []
    for entry in entries:
        if not _holds_our_outputs(entry):
            out.append((f"the input derivatives folder {entry.name}", entry.resolve()))
    return out


def _holds_our_outputs(folder: Path) -> bool:
    """An empty folder, one with only what a run writes before its dataset_description.json
    (``logs/``, ``work/``: a run that stopped at validation), or one whose
    dataset_description.json names this pipeline."""
    try:
        if {p.name for p in folder.iterdir()} <= {"logs", "work"}:
            return True
    except OSError:
        return False
    from neuroharmony_bids.bids.derivatives import read_dataset_description

    desc = read_dataset_description(folder)
    if desc is None:
        return False
    generated = desc.get("GeneratedBy") or [{}]
    return isinstance(generated, list) and bool(generated) and isinstance(generated[0], dict) \
        and generated[0].get("Name") == PIPELINE_NAME  # fmt: skip


def check_paths(settings: Settings) -> None:
    """Usage checks on the folders (exit 64, whatever the flags): the input exists; the output
    folder is, contains, or sits inside no input folder (only ``bids_dir/derivatives/<new
    name>`` inside the dataset); it is writable; a folder of another pipeline is never ours."""
    bids_dir = settings.bids_dir.resolve()
    out = settings.output_dir.resolve()
    if not bids_dir.is_dir():
        raise UsageError(f"bids_dir {settings.bids_dir}: no such folder")
    derivatives = bids_dir / "derivatives"
    suggestion = (
        f"Use a new folder such as {derivatives / 'neuroharmony'} or a folder outside the dataset"
    )
    if out == derivatives:
        raise UsageError(
            f"output_dir {settings.output_dir} is the input dataset's derivatives folder. "
            f"{suggestion}"
        )
    for what, folder in input_folders(settings):
        if folder == bids_dir and out.is_relative_to(derivatives):
            continue  # bids_dir/derivatives/<name>: checked against each pipeline's folder
        if folder.is_relative_to(out / "sourcedata"):
            continue  # tool outputs this app wrote itself (output_dir/sourcedata/...)
        if out == folder or out.is_relative_to(folder) or folder.is_relative_to(out):
            relation = (
                "is" if out == folder else "is inside" if out.is_relative_to(folder) else
                "contains"
            )  # fmt: skip
            raise UsageError(
                f"output_dir {settings.output_dir} {relation} {what} ({folder}); writing there "
                f"would change data this run reads (--overwrite does not change this). "
                f"{suggestion}"
            )
    for parent in [out, *out.parents]:
        if parent == derivatives or parent == parent.parent:
            break
        if (parent / "dataset_description.json").is_file() and not _holds_our_outputs(parent):
            raise UsageError(
                f"output_dir {settings.output_dir}: {parent} holds another dataset "
                f"(its dataset_description.json is not from {PIPELINE_NAME}); it is never "
                f"written into, whatever the flags. {suggestion}"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".nhtmp-probe-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(
            f"output_dir {settings.output_dir} is not writable ({exc.strerror}); choose a "
            f"folder you can write to, or fix its permissions"
        ) from None
    if settings.work_dir is not None:
        work = settings.work_dir.resolve()
        for what, folder in input_folders(settings):
            if work == folder or work.is_relative_to(folder):
                raise UsageError(
                    f"--work-dir {settings.work_dir} is inside {what} ({folder}); use a "
                    f"scratch folder outside it"
                )


def versions() -> dict[str, str]:
    """Versions of this package, Python and the libraries that shape the results."""
    from neuroharmony_bids.reports.citation import installed_versions

    return {**installed_versions(), "python": platform.python_version()}


class _LogFileHandler(logging.FileHandler):
    """A log file that goes quiet (instead of printing tracebacks) when the disk is full: the
    run's own error message says what happened."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging API)
        self.failed = True

    def flush(self) -> None:
        try:
            super().flush()
        except OSError:
            self.failed = True


def setup_logging(settings: Settings, log_dir: Path | None) -> tuple[logging.Logger, Path | None]:
    """Console handler at the chosen verbosity; DEBUG log file per run in ``log_dir``."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel({1: logging.DEBUG, 0: logging.INFO}.get(settings.verbosity, logging.WARNING))
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s: %(message)s", "%H:%M:%S"))
    logger.addHandler(console)
    log_file = None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        log_file = log_dir / f"{stamp}_{settings.analysis_level}_{os.getpid()}.log"
        fh = _LogFileHandler(log_file, encoding="utf-8")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(fh)
    nipype_level = logging.INFO if settings.verbosity > 0 else logging.WARNING
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        logging.getLogger(name).setLevel(nipype_level)
    return logger, log_file


def _close_logging(logger: logging.Logger) -> None:
    """Detach every handler of this run: a console handler left on the logger would write to
    the stderr of a finished run (a closed stream when the app runs in-process again)."""
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        try:
            handler.flush()
            if isinstance(handler, logging.FileHandler):
                handler.close()
        except (OSError, ValueError):  # a full disk or a closed stream: not worth a traceback
            pass


def _to_log_file(logger: logging.Logger, level: int, message: str) -> None:
    """Record a message in the log file only (the console gets the one-paragraph version)."""
    record = logger.makeRecord(logger.name, level, __file__, 0, message, None, None)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            try:
                handler.handle(record)
            except OSError:
                pass


def _write_citation(settings, logger: logging.Logger, result: RunResult | None = None) -> None:
    """logs/CITATION.md and .bib: the group level names every FreeSurfer/MRIQC version found
    (from the sidecars it read, ``result.scan_versions``, else by reading them); a participant
    job writes them only when missing (no scan of the whole output folder)."""
    from neuroharmony_bids.reports.citation import versions_from_outputs, write_citation

    logs = settings.output_dir / "logs"
    group = settings.analysis_level == "group"
    if group or not (logs / "CITATION.md").exists():
        scans = result.scan_versions if group and result is not None else None
        versions = versions_from_outputs(settings.output_dir, scan_sidecars=group, scans=scans)
        write_citation(logs, versions)
        logger.info("citation boilerplate: %s", logs / "CITATION.md")


def validate(settings: Settings, logger: logging.Logger) -> None:
    """BIDS validation once per dataset state: a stamp in ``output_dir/logs`` records the
    fingerprint of the last dataset that passed, so re-runs and the group level skip it."""
    from neuroharmony_bids.bids.validate import validate_once

    stamp = settings.output_dir / "logs" / "bids_validation.json"
    warnings, seconds = validate_once(settings.bids_dir, stamp)
    if warnings is None:
        logger.info(
            "BIDS validation skipped: the dataset is unchanged since it passed (%s; %.1f s "
            "to check)", stamp, seconds,
        )  # fmt: skip
    else:
        logger.info("BIDS validation passed (%d warnings) in %.1f s", len(warnings), seconds)


def run(argv: Sequence[str] | None = None) -> int:
    """Run the app on ``argv`` (without the program name); return the exit code."""
    from neuroharmony_bids.cli.parser import PROG, build_parser, settings_from_args

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help / --version (0) or argparse usage error (64)
        return int(exc.code or 0)
    started = time.monotonic()
    logger = logging.getLogger(LOGGER_NAME)
    log_file = None
    try:
        settings = settings_from_args(args, [PROG, *argv])
        check_paths(settings)
        logger, log_file = setup_logging(settings, settings.output_dir / "logs")
        logger.info("%s %s, %s level", PROG, __version__, settings.analysis_level)
        logger.debug("command line: %s", settings.command_line)
        logger.debug("working directory: %s", os.getcwd())
        logger.debug("versions: %s", json.dumps(versions(), sort_keys=True))
        logger.debug("settings: %s", json.dumps(settings.as_dict(), sort_keys=True))
        if log_file is not None:
            logger.info("log file: %s", log_file)
        if not settings.skip_bids_validation:
            validate(settings, logger)
        if settings.analysis_level == "participant":
            from neuroharmony_bids.workflows.participant import run_participant

            result = run_participant(settings, logger=logger)
        else:
            from neuroharmony_bids.workflows.group import run_group

            result = run_group(settings, logger=logger)
        _write_citation(settings, logger, result)
        elapsed = fmt_duration(time.monotonic() - started)
        logger.info("%s", result.summary())
        logger.info("finished in %s", elapsed)
        if result.failed:
            where = f" (details: {log_file})" if log_file else ""
            print(
                f"{PROG}: {len(result.failed)} of {result.total} scans failed{where}:\n"
                + "\n".join(f"  {name}: {why}" for name, why in list(result.failed.items())[:20])
                + ("\n  ..." if len(result.failed) > 20 else ""),
                file=sys.stderr,
            )
            return 1
        return 0
    except NeuroharmonyError as exc:
        _to_log_file(logger, logging.ERROR, f"{exc} (exit code {exc.exit_code})")
        _to_log_file(logger, logging.DEBUG, f"traceback:\n{traceback.format_exc()}")
        print(f"{PROG}: error: {exc} (exit code {exc.exit_code})", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # reading inputs or writing outputs failed at the system level
        where = exc.filename or "a file"
        msg = (
            f"cannot access {where}: {exc.strerror or exc}. Check free disk space, quotas and "
            f"permissions, then re-run (finished scans are kept)"
        )
        _to_log_file(logger, logging.ERROR, f"{msg}\n{traceback.format_exc()}")
        print(f"{PROG}: error: {msg} (exit code 1)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: say so, keep the traceback in the log
        _to_log_file(logger, logging.ERROR, f"traceback:\n{traceback.format_exc()}")
        where = f"; the traceback is in {log_file}" if log_file else ""
        print(
            f"{PROG}: unexpected error: {type(exc).__name__}: {exc}{where}. This is a bug in "
            f"{PROG} {__version__}: please report it with the log file (exit code 1)",
            file=sys.stderr,
        )
        if log_file is None:
            traceback.print_exc()
        return 1
    finally:
        _close_logging(logger)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry: run and exit with the BIDS-Apps exit code."""
    sys.exit(run(argv))


__all__ = ["check_paths", "input_folders", "main", "run", "setup_logging", "validate", "versions"]
