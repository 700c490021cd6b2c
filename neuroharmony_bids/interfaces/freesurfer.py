"""FreeSurfer as a tool: the license lookup, whether recon-all can run, the recon-all node.

Reading recon-all's outputs is :mod:`neuroharmony_bids.io.freesurfer_stats`; fake outputs for
tests are :mod:`neuroharmony_bids.testing.freesurfer_outputs`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from neuroharmony_bids._version import __version__
from neuroharmony_bids.errors import UsageError

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


def init_recon_all_node(
    name: str,
    t1w_file: str | os.PathLike,
    subject_id: str,
    subjects_dir: str | os.PathLike,
    license_file: str | os.PathLike,
    omp_nthreads: int = 1,
    mem_gb: float | None = None,
):
    """A Nipype node running ``recon-all -all`` on one T1w into ``subjects_dir/subject_id``."""
    from nipype.interfaces.freesurfer import ReconAll
    from nipype.pipeline import engine as pe

    Path(subjects_dir).mkdir(parents=True, exist_ok=True)
    node = pe.Node(
        ReconAll(
            directive="all",
            subject_id=subject_id,
            T1_files=[str(t1w_file)],
            subjects_dir=str(subjects_dir),
            openmp=max(1, int(omp_nthreads)),
        ),
        name=name,
        n_procs=max(1, int(omp_nthreads)),
        mem_gb=mem_gb or 4.0,
    )
    node.interface.inputs.environ = {"FS_LICENSE": str(license_file)}
    return node


__all__ = [
    "CONTAINER_IMAGE",
    "find_fs_license",
    "init_recon_all_node",
    "recon_all_status",
]
