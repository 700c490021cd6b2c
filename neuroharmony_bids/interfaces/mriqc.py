"""MRIQC as a tool: whether ``mriqc`` can run, its Nipype interface, and the shared pybids index.

The classes are defined at module level so that Nipype can pickle them (MultiProc, SLURMGraph)
and a crash file can name them. Importing this module imports Nipype (about a second), so the
workflows import it only when MRIQC must run.

Reading MRIQC's outputs is :mod:`neuroharmony_bids.io.mriqc_json`; fake outputs for tests are
:mod:`neuroharmony_bids.testing.mriqc_outputs`.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("NIPYPE_NO_ET", "1")

from nipype.interfaces.base import (  # noqa: E402
    BaseInterfaceInputSpec,
    CommandLine,
    CommandLineInputSpec,
    Directory,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

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


class _MRIQCInputSpec(CommandLineInputSpec):
    bids_dir = Directory(
        exists=True, mandatory=True, argstr="%s", position=0, desc="input BIDS dataset"
    )
    output_dir = Directory(mandatory=True, argstr="%s", position=1, desc="MRIQC output folder")
    analysis_level = traits.Enum(
        "participant", argstr="%s", position=2, usedefault=True, desc="analysis level"
    )
    participant_label = InputMultiObject(
        traits.Str, mandatory=True, argstr="--participant-label %s",
        desc="labels (without sub-) of the batch of participants this call processes",
    )  # fmt: skip
    session_id = InputMultiObject(traits.Str, argstr="--session-id %s", desc="sessions")
    modalities = InputMultiObject(
        traits.Str, ["T1w"], argstr="-m %s", usedefault=True, desc="modalities to run"
    )
    bids_database_dir = Directory(
        exists=True, argstr="--bids-database-dir %s",
        desc="pybids index of the dataset, built once (BIDSDatabase) and shared by every call",
    )  # fmt: skip
    no_sub = traits.Bool(True, argstr="--no-sub", usedefault=True, desc="no IQM upload")
    notrack = traits.Bool(True, argstr="--notrack", usedefault=True, desc="no telemetry")
    no_datalad_get = traits.Bool(
        True, argstr="--no-datalad-get", usedefault=True, desc="never fetch data"
    )
    nprocs = traits.Int(argstr="--nprocs %d", desc="processes")
    omp_nthreads = traits.Int(argstr="--omp-nthreads %d", desc="threads per process")
    mem_gb = traits.Float(argstr="--mem-gb %g", desc="memory limit (GB)")
    work_dir = Directory(argstr="-w %s", desc="MRIQC work directory (one per call)")


class _MRIQCOutputSpec(TraitedSpec):
    out_dir = Directory(desc="MRIQC output folder")
    iqm_files = traits.List(File(exists=True), desc="IQM JSON files of the batch's T1w scans")


class MRIQC(CommandLine):
    """``mriqc BIDS OUT participant --participant-label a b c -m T1w ...``: one batch per call.

    No upload, no telemetry, no DataLad fetches. Outputs are the T1w IQM JSONs MRIQC wrote for
    the batch (``OUT/sub-<label>/[ses-<s>/]anat/*_T1w.json``).
    """

    _cmd = "mriqc"
    input_spec = _MRIQCInputSpec
    output_spec = _MRIQCOutputSpec
    #: the node exists only when outputs are missing: never take a cached result for them
    _always_run = True

    def _list_outputs(self):
        sessions = self.inputs.session_id if isdefined(self.inputs.session_id) else ()
        files = iqm_files(self.inputs.output_dir, self.inputs.participant_label, sessions)
        return {"out_dir": str(self.inputs.output_dir), "iqm_files": files}


def iqm_files(
    output_dir: str | os.PathLike, labels: Sequence[str], sessions: Sequence[str] = ()
) -> list[str]:
    """The T1w IQM JSONs MRIQC wrote in ``output_dir`` for these participants (and sessions).

    Also meaningful after a failed call: MRIQC finishes the other participants when one crashes.
    """
    out_dir = Path(output_dir)
    files: list[str] = []
    for label in labels:
        for path in sorted(out_dir.glob(f"sub-{label}/**/anat/sub-{label}_*T1w.json")):
            if not sessions or any(f"_ses-{s}_" in path.name for s in sessions):
                files.append(str(path))
    return files


class _BIDSDatabaseInputSpec(BaseInterfaceInputSpec):
    bids_dir = Directory(exists=True, mandatory=True, desc="input BIDS dataset")
    database_dir = Directory(mandatory=True, desc="where to write the pybids index")


class _BIDSDatabaseOutputSpec(TraitedSpec):
    database_dir = Directory(exists=True, desc="the pybids index (for --bids-database-dir)")


#: What MRIQC 24's own indexer leaves out (``mriqc/config.py``, ``execution.init``): folders
#: that are not ``sub-*``, non-anat/func/dwi folders, and files of unsupported suffixes.
MRIQC_INDEX_IGNORE = (
    r"^(?!/sub-[a-zA-Z0-9]+)",
    r"^/sub-[a-zA-Z0-9]+(/ses-[a-zA-Z0-9]+)?/(beh|fmap|pet|perf|meg|eeg|ieeg|micr|nirs)",
    r"^.+(?<!(_T1w|_T2w|bold|_dwi))\.(json|nii|nii\.gz)$",
)


class BIDSDatabase(SimpleInterface):
    """Index the dataset once, as MRIQC would, for every MRIQC call's ``--bids-database-dir``.

    Given an existing index MRIQC loads it instead of indexing the dataset itself; given none,
    each call indexes only its own participants, and (when the folder does not exist) saves
    that partial index for the next call, which then finds none of its participants.
    """

    input_spec = _BIDSDatabaseInputSpec
    output_spec = _BIDSDatabaseOutputSpec
    #: the dataset may have changed since a cached index (Nipype hashes folder paths only)
    _always_run = True

    def _run_interface(self, runtime):
        from bids import BIDSLayout
        from bids.layout import BIDSLayoutIndexer

        target = Path(self.inputs.database_dir)
        indexer = BIDSLayoutIndexer(
            validate=False, ignore=[re.compile(p) for p in MRIQC_INDEX_IGNORE]
        )
        BIDSLayout(
            str(self.inputs.bids_dir),
            validate=False,
            database_path=str(target),
            reset_database=True,
            indexer=indexer,
        )
        self._results["database_dir"] = str(target)
        return runtime


__all__ = [
    "BIDSDatabase",
    "MRIQC",
    "MRIQC_DEPENDENCIES",
    "MRIQC_INDEX_IGNORE",
    "iqm_files",
    "mriqc_status",
]
