"""FreeSurfer as a tool: the license lookup, whether recon-all can run, the state of a subject.

recon-all itself runs through Nipype's ``ReconAll`` (:mod:`neuroharmony_bids.workflows.tools`).
What a subject folder's ``scripts/`` files mean (``IsRunning.*``, ``recon-all.done``,
``recon-all.error``) was read from FreeSurfer 7.3.2's ``recon-all`` and checked by running it.

Reading recon-all's outputs is :mod:`neuroharmony_bids.io.freesurfer_stats`; fake outputs for
tests are :mod:`neuroharmony_bids.testing.freesurfer_outputs`.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from neuroharmony_bids._version import __version__
from neuroharmony_bids.errors import UsageError
from neuroharmony_bids.io.freesurfer_stats import fastsurfer_dkt_paths, stats_paths

#: The container image that has FreeSurfer (and MRIQC) installed.
CONTAINER_IMAGE = f"ghcr.io/neuroharmony-bids/neuroharmony-bids:{__version__}"


def find_fs_license(
    flag: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None
) -> Path | None:
    """The FreeSurfer license: ``--fs-license-file``, then ``$FS_LICENSE``, then
    ``$FREESURFER_HOME/license.txt``. A flag or variable naming a missing file is an error."""
    environ = os.environ if environ is None else environ
    if flag:
        path = Path(flag).expanduser()
        if not path.is_file():
            raise UsageError(
                f"--fs-license-file {flag}: no such file. Get a free license at "
                f"https://surfer.nmr.mgh.harvard.edu/registration.html and pass its path."
            )
        return path.resolve()
    if environ.get("FS_LICENSE"):
        path = Path(environ["FS_LICENSE"]).expanduser()
        if not path.is_file():
            raise UsageError(
                f"$FS_LICENSE={environ['FS_LICENSE']} does not exist; fix the variable or "
                f"pass --fs-license-file"
            )
        return path.resolve()
    if environ.get("FREESURFER_HOME"):
        path = Path(environ["FREESURFER_HOME"]) / "license.txt"
        if path.is_file():
            return path.resolve()
    return None


def recon_all_status(license_file: Path | None) -> str | None:
    """None when recon-all can run; otherwise why not (for the exit-66 message)."""
    if shutil.which("recon-all") is None:
        return "FreeSurfer's recon-all is not on PATH"
    if license_file is None:
        return (
            "recon-all is installed but no FreeSurfer license was found (--fs-license-file, "
            "$FS_LICENSE, $FREESURFER_HOME/license.txt)"
        )
    return None


#: After this long without a write to ``scripts/recon-all.log``, an ``IsRunning`` file whose
#: process cannot be checked (another host) is taken as left by a killed run (sMRIPrep's
#: ``fs_isRunning`` uses the same 24 h).
STALE_AFTER_SECONDS = 24 * 3600


def _recon_all_stats(subject_dir: str | os.PathLike) -> list[Path]:
    """The stats files a complete recon-all leaves and this app reads (io's names)."""
    return list(stats_paths(subject_dir).values())


def _fastsurfer_stats(subject_dir: str | os.PathLike) -> list[Path]:
    """The stats files a complete FastSurfer run (segmentation + recon-surf) leaves: DKT
    cortical stats instead of recon-all's Desikan ones (Deep-MI/FastSurfer recon-surf.sh)."""
    return [stats_paths(subject_dir)["aseg"], *fastsurfer_dkt_paths(subject_dir).values()]


def _missing(paths: list[Path], files: set[str] | None = None) -> list[str]:
    """Names of ``paths`` that are not files (``files``: the folder's file names, listed once)."""
    if files is not None:
        return [p.name for p in paths if p.name not in files]
    return [p.name for p in paths if not p.is_file()]


def _files_in(folder: Path) -> set[str]:
    """The names of the regular files in ``folder`` (none if it is missing): one directory
    read instead of one ``stat`` per expected file, at 5,000 subjects per run."""
    try:
        with os.scandir(folder) as entries:
            return {e.name for e in entries if e.is_file()}
    except OSError:
        return set()


#: The stats file names a complete recon-all leaves and this app reads.
STATS_FILES = tuple(p.name for p in _recon_all_stats(""))


@dataclass(frozen=True)
class SubjectState:
    """What a FreeSurfer subject folder holds, judged from the files recon-all itself writes.

    ``status`` is one of ``absent``, ``complete`` (stats present and, when recon-all kept its
    log there, a ``recon-all.done`` of a finished run), ``running`` (an ``IsRunning`` file of a
    live process), ``interrupted`` (an ``IsRunning`` file left by a killed run), ``failed``
    (``recon-all.error``, or ``recon-all.done`` holding ``1`` as recon-all's error exit writes)
    or ``incomplete`` (anything else: stats missing, no done file after a logged run).
    """

    path: Path
    status: str
    detail: str = ""

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def resumable(self) -> bool:
        """Whether ``recon-all`` without ``-i`` can continue it (the input was imported)."""
        return (self.path / "mri" / "orig" / "001.mgz").is_file()


def _key_values(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        key, _, value = line.strip().partition(" ")
        if key.isupper() and key not in out:
            out[key] = value.strip()
    return out


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _running_state(subject_dir: Path, flags: list[Path], now: float) -> SubjectState:
    info = _key_values(flags[0])
    host, pid = info.get("HOST"), info.get("PROCESSID", "").split()
    log = subject_dir / "scripts" / "recon-all.log"
    age = now - (log.stat().st_mtime if log.is_file() else flags[0].stat().st_mtime)
    names = ", ".join(f.name for f in flags)
    if host == socket.gethostname() and pid and pid[0].isdigit():
        alive = _process_alive(int(pid[0]))
        status = "running" if alive else "interrupted"
        why = f"process {pid[0]} on this host is {'alive' if alive else 'gone'}"
    else:
        status = "running" if age < STALE_AFTER_SECONDS else "interrupted"
        why = f"started on host {host or 'unknown'}, log last written {age / 3600:.1f} h ago"
    return SubjectState(subject_dir, status, f"scripts/{names} ({why})")


def subject_state(subject_dir: str | os.PathLike, now: float | None = None) -> SubjectState:
    """Whether recon-all (or FastSurfer) finished on ``subject_dir``: never read a
    half-written subject."""
    subject_dir = Path(subject_dir)
    if not subject_dir.is_dir():
        return SubjectState(subject_dir, "absent")
    scripts = subject_dir / "scripts"
    # each folder read once (a directory listing, not a stat per expected file)
    try:
        with os.scandir(scripts) as entries:
            listing = {e.name: e for e in entries}
    except OSError:
        listing = {}
    flags = sorted(scripts / n for n in listing if fnmatch.fnmatchcase(n, "IsRunning*"))
    if flags:
        return _running_state(subject_dir, flags, time.time() if now is None else now)

    def has(name: str) -> bool:
        return name in listing and listing[name].is_file()

    error, done = scripts / "recon-all.error", scripts / "recon-all.done"
    done_info = _key_values(done) if has(done.name) else {}
    # a finished run's done file is "SUBJECT ..." key lines (END_TIME since FreeSurfer 6, DATE
    # before); recon-all's error exit writes just "1" in it
    if has(error.name) or (has(done.name) and "SUBJECT" not in done_info):
        cmd = _key_values(error).get("CMD", "") if has(error.name) else ""
        return SubjectState(
            subject_dir, "failed", "recon-all exited with errors" + (f" in: {cmd}" if cmd else "")
        )
    surf_log, surf_done = scripts / "recon-surf.log", scripts / "recon-surf.done"
    if has(surf_log.name) or has(surf_done.name):
        return _fastsurfer_state(subject_dir, surf_done)
    stats_files = _files_in(subject_dir / "stats")
    missing = _missing(_recon_all_stats(subject_dir), stats_files)
    fastsurfer_missing = _missing(_fastsurfer_stats(subject_dir), stats_files)
    if missing and not fastsurfer_missing and not has("recon-all.log"):
        return SubjectState(subject_dir, "complete", "FastSurfer stats (no run logs kept)")
    if missing:
        return SubjectState(subject_dir, "incomplete", f"stats/{', '.join(missing)} missing")
    if has("recon-all.log") and not done_info:
        return SubjectState(
            subject_dir, "incomplete", "recon-all logged a run but never finished it"
        )
    return SubjectState(subject_dir, "complete")


def _fastsurfer_state(subject_dir: Path, done: Path) -> SubjectState:
    """A FastSurfer subject: recon-surf.sh writes ``scripts/recon-surf.done`` (``SUBJECT ...``
    key lines) only at its very end; the recon-all steps it calls leave their own logs, which
    say nothing about the whole run."""
    missing = _missing(_fastsurfer_stats(subject_dir))
    if missing:
        return SubjectState(
            subject_dir, "incomplete", f"FastSurfer stats/{', '.join(missing)} missing"
        )
    if "SUBJECT" not in _key_values(done):
        return SubjectState(
            subject_dir,
            "incomplete",
            "FastSurfer's recon-surf.sh logged a run but never finished it (no "
            "scripts/recon-surf.done)",
        )
    return SubjectState(subject_dir, "complete", "FastSurfer")


def remove_isrunning(state: SubjectState) -> list[Path]:
    """Delete the ``IsRunning`` files of an interrupted run (recon-all refuses to start while
    they exist); never those of a live one."""
    if state.status != "interrupted":
        raise ValueError(f"{state.path}: recon-all is {state.status}; IsRunning files kept")
    removed = sorted((state.path / "scripts").glob("IsRunning*"))
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


__all__ = [
    "CONTAINER_IMAGE",
    "STALE_AFTER_SECONDS",
    "STATS_FILES",
    "SubjectState",
    "find_fs_license",
    "recon_all_status",
    "remove_isrunning",
    "subject_state",
]
