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
from neuroharmony_bids.errors import NeuroharmonyError, UsageError  # noqa: E402
from neuroharmony_bids.settings import Settings  # noqa: E402
from neuroharmony_bids.workflows.results import fmt_duration  # noqa: E402

LOGGER_NAME = "neuroharmony_bids"


def check_paths(settings: Settings) -> None:
    """Usage checks on the folders: input exists, output outside the input dataset (except
    under ``bids_dir/derivatives/<name>``) and writable."""
    bids_dir = settings.bids_dir.resolve()
    out = settings.output_dir.resolve()
    if not bids_dir.is_dir():
        raise UsageError(f"bids_dir {settings.bids_dir}: no such folder")
    derivatives = bids_dir / "derivatives"
    if out == bids_dir or out == derivatives:
        raise UsageError(
            f"output_dir {settings.output_dir} is the input dataset's "
            f"{'root' if out == bids_dir else 'derivatives folder'}; use a subfolder such as "
            f"{derivatives / 'neuroharmony'} or a folder outside the dataset"
        )
    if out.is_relative_to(bids_dir) and not out.is_relative_to(derivatives):
        raise UsageError(
            f"output_dir {settings.output_dir} is inside the input dataset {bids_dir}; the "
            f"outputs would corrupt it. Use {derivatives / 'neuroharmony'} or a folder outside "
            f"the dataset"
        )
    if bids_dir.is_relative_to(out):
        raise UsageError(
            f"output_dir {settings.output_dir} contains the input dataset {bids_dir}; choose a "
            f"separate folder"
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
        if work.is_relative_to(bids_dir) and not work.is_relative_to(derivatives):
            raise UsageError(
                f"--work-dir {settings.work_dir} is inside the input dataset; use a scratch "
                f"folder outside it"
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
    for handler in list(logger.handlers):
        try:
            handler.flush()
            if isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
                handler.close()
        except OSError:  # a full disk must not turn a clear error into a traceback
            logger.removeHandler(handler)


def _to_log_file(logger: logging.Logger, level: int, message: str) -> None:
    """Record a message in the log file only (the console gets the one-paragraph version)."""
    record = logger.makeRecord(logger.name, level, __file__, 0, message, None, None)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            try:
                handler.handle(record)
            except OSError:
                pass


def _write_citation(settings, logger: logging.Logger) -> None:
    """logs/CITATION.md and .bib: the group level names every FreeSurfer/MRIQC version found;
    a participant job writes them only when missing (no scan of the whole output folder)."""
    from neuroharmony_bids.reports.citation import versions_from_outputs, write_citation

    logs = settings.output_dir / "logs"
    group = settings.analysis_level == "group"
    if group or not (logs / "CITATION.md").exists():
        write_citation(logs, versions_from_outputs(settings.output_dir, scan_sidecars=group))
        logger.info("citation boilerplate: %s", logs / "CITATION.md")


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
            from neuroharmony_bids.bids.validate import validate_dataset

            t0 = time.monotonic()
            warnings = validate_dataset(settings.bids_dir)
            logger.info(
                "BIDS validation passed (%d warnings) in %.1f s",
                len(warnings),
                time.monotonic() - t0,
            )
        if settings.analysis_level == "participant":
            from neuroharmony_bids.workflows.participant import run_participant

            result = run_participant(settings, logger=logger)
        else:
            from neuroharmony_bids.workflows.group import run_group

            result = run_group(settings, logger=logger)
        _write_citation(settings, logger)
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


__all__ = ["check_paths", "main", "run", "setup_logging", "versions"]
