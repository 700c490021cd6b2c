"""Run settings: one frozen object built from the command line and passed explicitly.

No module reads global configuration; everything a workflow needs is a field here, which keeps
runs reproducible and tests independent of the environment.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Settings:
    """Everything one ``neuroharmony-bids`` run needs (paths resolved, labels cleaned)."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    participant_label: tuple[str, ...] = ()
    session_label: tuple[str, ...] = ()
    work_dir: Path | None = None
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float | None = None
    skip_bids_validation: bool = False
    fs_license_file: Path | None = None
    mriqc_dir: Path | None = None
    freesurfer_dir: Path | None = None
    model: Path | None = None
    use_plugin: Path | None = None
    overwrite: bool = False
    train: bool = False
    site_column: str | None = None
    age_column: str = "age"
    sex_column: str = "sex"
    sex_mapping: tuple[tuple[str, str], ...] = ()
    profile_weight: float | None = None
    participant_reports: bool = True
    verbosity: int = 0
    argv: tuple[str, ...] = ()
    environ: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def command_line(self) -> str:
        """The exact command line, shell-quoted (for logs and provenance)."""
        return " ".join(shlex.quote(a) for a in self.argv)

    @property
    def sex_mapping_dict(self) -> dict[str, str]:
        return dict(self.sex_mapping)

    @property
    def effective_work_dir(self) -> Path:
        """``-w`` or ``<output_dir>/work`` (tool runs, and the participant level's pybids index)."""
        return self.work_dir if self.work_dir is not None else self.output_dir / "work"

    def mriqc_dirs(self) -> list[Path]:
        """Where to look for MRIQC outputs, in order: ``--mriqc-dir``, our own
        ``sourcedata/mriqc``, then ``bids_dir/derivatives/mriqc``."""
        dirs = [self.mriqc_dir] if self.mriqc_dir else []
        dirs += [self.output_dir / "sourcedata" / "mriqc", self.bids_dir / "derivatives" / "mriqc"]
        return _existing_unique(dirs)

    def freesurfer_dirs(self) -> list[Path]:
        """Where to look for FreeSurfer subjects: ``--freesurfer-dir``, our own
        ``sourcedata/freesurfer``, then ``bids_dir/derivatives/freesurfer``."""
        dirs = [self.freesurfer_dir] if self.freesurfer_dir else []
        dirs += [
            self.output_dir / "sourcedata" / "freesurfer",
            self.bids_dir / "derivatives" / "freesurfer",
        ]
        return _existing_unique(dirs)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view (for the log)."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            if name == "environ":
                continue
            value = getattr(self, name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[name] = value
        return out


def _existing_unique(dirs: list[Path | None]) -> list[Path]:
    out: list[Path] = []
    for d in dirs:
        if d is None:
            continue
        d = Path(d)
        if d.is_dir() and all(not _same(d, o) for o in out):
            out.append(d)
    return out


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


__all__ = ["Settings"]
