"""MRIQC as a tool: whether ``mriqc`` can run, its Nipype interface and node.

Reading MRIQC's outputs is :mod:`neuroharmony_bids.io.mriqc_json`; fake outputs for tests are
:mod:`neuroharmony_bids.testing.mriqc_outputs`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

#: Non-Python executables MRIQC's T1w workflow calls (ANTs, AFNI).
MRIQC_DEPENDENCIES = ("antsRegistration", "N4BiasFieldCorrection", "3dFWHMx")


def mriqc_status() -> str | None:
    """None when the ``mriqc`` command can run; otherwise why not (for exit-66 messages)."""
    if shutil.which("mriqc") is None:
        return "the mriqc command is not on PATH"
    missing = [exe for exe in MRIQC_DEPENDENCIES if shutil.which(exe) is None]
    if missing:
        return (
            "mriqc is installed but the tools it calls are not on PATH "
            f"({', '.join(missing)}: ANTs and AFNI)"
        )
    return None


def _mriqc_interface():
    from nipype.interfaces.base import (
        CommandLine,
        CommandLineInputSpec,
        Directory,
        File,
        InputMultiObject,
        TraitedSpec,
        traits,
    )

    class MRIQCInputSpec(CommandLineInputSpec):
        bids_dir = Directory(
            exists=True, mandatory=True, argstr="%s", position=0, desc="input BIDS dataset"
        )
        output_dir = Directory(mandatory=True, argstr="%s", position=1, desc="MRIQC output")
        analysis_level = traits.Enum(
            "participant", argstr="%s", position=2, usedefault=True, desc="analysis level"
        )
        participant_label = InputMultiObject(
            traits.Str, argstr="--participant-label %s", desc="subject labels (no sub-)"
        )
        session_id = InputMultiObject(traits.Str, argstr="--session-id %s", desc="sessions")
        run_id = InputMultiObject(traits.Str, argstr="--run-id %s", desc="runs")
        modalities = InputMultiObject(
            traits.Str, ["T1w"], argstr="-m %s", usedefault=True, desc="modalities to run"
        )
        no_sub = traits.Bool(True, argstr="--no-sub", usedefault=True, desc="no IQM upload")
        notrack = traits.Bool(True, argstr="--notrack", usedefault=True, desc="no telemetry")
        no_datalad_get = traits.Bool(
            True, argstr="--no-datalad-get", usedefault=True, desc="never fetch data"
        )
        nprocs = traits.Int(argstr="--nprocs %d", desc="processes")
        omp_nthreads = traits.Int(argstr="--omp-nthreads %d", desc="threads per process")
        mem_gb = traits.Float(argstr="--mem-gb %g", desc="memory limit (GB)")
        work_dir = Directory(argstr="-w %s", desc="MRIQC work directory")
        bids_database_dir = Directory(argstr="--bids-database-dir %s", desc="pybids cache")

    class MRIQCOutputSpec(TraitedSpec):
        out_dir = Directory(desc="MRIQC output folder")
        iqm_files = traits.List(File(exists=True), desc="IQM JSON files of the participants")

    class MRIQC(CommandLine):
        """Runs the real ``mriqc`` (participant level, T1w only, no upload, no network)."""

        _cmd = "mriqc"
        input_spec = MRIQCInputSpec
        output_spec = MRIQCOutputSpec

        def _list_outputs(self):
            out_dir = Path(self.inputs.output_dir)
            files: list[str] = []
            labels = self.inputs.participant_label or []
            for label in labels:
                files += sorted(str(p) for p in out_dir.glob(f"sub-{label}/**/*_T1w.json"))
            return {"out_dir": str(out_dir), "iqm_files": files}

    return MRIQC


def mriqc_interface_class():
    """The Nipype ``MRIQC`` CommandLine interface class (built lazily: Nipype is slow to import)."""
    global _MRIQC_CLASS
    if _MRIQC_CLASS is None:
        _MRIQC_CLASS = _mriqc_interface()
    return _MRIQC_CLASS


_MRIQC_CLASS = None


def init_mriqc_node(
    name: str,
    bids_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    participant_label: str,
    work_dir: str | os.PathLike,
    session_ids: Sequence[str] = (),
    nprocs: int = 1,
    omp_nthreads: int = 1,
    mem_gb: float | None = None,
):
    """A Nipype node running MRIQC on one participant's T1w scans into ``output_dir``."""
    from nipype.pipeline import engine as pe

    iface = mriqc_interface_class()(
        bids_dir=str(bids_dir),
        output_dir=str(output_dir),
        participant_label=[participant_label],
        nprocs=max(1, int(nprocs)),
        omp_nthreads=max(1, int(omp_nthreads)),
        work_dir=str(work_dir),
    )
    if session_ids:
        iface.inputs.session_id = list(session_ids)
    if mem_gb:
        iface.inputs.mem_gb = float(mem_gb)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    return pe.Node(iface, name=name, n_procs=max(1, int(nprocs)), mem_gb=mem_gb or 4.0)


__all__ = [
    "MRIQC_DEPENDENCIES",
    "init_mriqc_node",
    "mriqc_interface_class",
    "mriqc_status",
]
