"""MRIQC: read T1w image-quality metrics (IQMs), write them (fixtures), run ``mriqc``.

MRIQC 0.9 to 24 write one JSON per scan (``sub-X[_ses-Y][_run-Z]_T1w.json``) holding the IQMs
as top-level numbers plus ``bids_meta`` (entities and sidecar metadata) and ``provenance``
(md5sum, software, version, settings, warnings); the group level gathers them into
``group_T1w.tsv`` with a ``bids_name`` column. Older releases put the JSONs flat in
``<out>/derivatives/``, newer ones mirror the BIDS tree (``<out>/sub-X/[ses-Y/]anat/``); both
are searched. :func:`write_iqm_json` writes MRIQC 24's ``IQMFileSink`` layout (sorted keys,
two-space indent, trailing newline, serialized with orjson like MRIQC): the tests check it is
byte-identical to a file written by MRIQC's own sink.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from neuroharmony_bids.atomic import write_text
from neuroharmony_bids.errors import DataError, MissingInputError

#: Keys of an MRIQC JSON that are not IQMs.
META_KEYS = ("bids_meta", "provenance")

#: Non-Python executables MRIQC's T1w workflow calls (ANTs, AFNI).
MRIQC_DEPENDENCIES = ("antsRegistration", "N4BiasFieldCorrection", "3dFWHMx")

_FIX_HINT = (
    "Re-run MRIQC on this scan (the container has it), or point --mriqc-dir at a complete MRIQC "
    "output folder."
)


@dataclass(frozen=True)
class IQMSource:
    """Where a scan's IQMs are: an MRIQC JSON, or a row of a group TSV."""

    kind: str  # "json" or "tsv"
    path: Path
    bids_name: str


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, sub in value.items():
            _flatten(f"{prefix}_{key}" if prefix else str(key), sub, out)
    else:
        out[prefix] = value


def _check_iqms(values: Mapping[str, Any], required: Iterable[str], where: str) -> None:
    for name in required:
        if name not in values:
            raise DataError(f"{where}: IQM {name!r} is missing (the model needs it). {_FIX_HINT}")
        value = values[name]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise DataError(
                f"{where}: IQM {name!r} is empty/NaN; MRIQC could not compute it for this "
                f"scan. Check the scan (e.g. MRIQC's report) or re-run MRIQC. {_FIX_HINT}"
            )


def read_iqm_json(path: str | os.PathLike, required: Iterable[str] = ()) -> dict[str, float]:
    """Numeric IQMs of one MRIQC JSON (``bids_meta``/``provenance`` dropped, nested keys joined
    with ``_`` as MRIQC's group TSV does); a missing or NaN ``required`` IQM is a DataError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingInputError(f"MRIQC IQM file not found: {path}. {_FIX_HINT}") from None
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not a text (UTF-8) JSON file (byte {exc.start} cannot be decoded); the "
            f"file is corrupt. {_FIX_HINT}"
        ) from None
    except OSError as exc:
        raise MissingInputError(f"cannot read MRIQC IQM file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}, line {exc.lineno}: not valid JSON ({exc.msg}); the file is truncated or "
            f"corrupt. {_FIX_HINT}"
        ) from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object of IQMs, found {type(data).__name__}")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in META_KEYS:
            continue
        _flatten(key, value, flat)
    iqms: dict[str, float] = {}
    for key, value in flat.items():
        if isinstance(value, bool):
            continue
        if value is None:
            iqms[key] = float("nan")
        elif isinstance(value, (int, float)):
            iqms[key] = float(value)
    _check_iqms(iqms, required, str(path))
    return iqms


def read_iqm_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """``bids_meta`` and ``provenance`` of an MRIQC JSON (empty when absent or not objects:
    they are provenance only, never a reason to fail a scan)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if not isinstance(data, dict):
        data = {}
    return {k: dict(data[k]) if isinstance(data.get(k), dict) else {} for k in META_KEYS}


def read_group_tsv(path: str | os.PathLike) -> pd.DataFrame:
    """An MRIQC ``group_T1w.tsv`` indexed by ``bids_name`` (e.g. ``sub-01_ses-1_T1w``)."""
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t", na_values=["n/a", "NaN", "nan", ""])
    except FileNotFoundError:
        raise MissingInputError(f"MRIQC group table not found: {path}. {_FIX_HINT}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read as a TSV ({exc}). {_FIX_HINT}") from None
    if "bids_name" not in table.columns:
        raise DataError(
            f"{path}: no 'bids_name' column; MRIQC group tables name each scan in it "
            f"(e.g. sub-01_T1w). Is this an MRIQC group_T1w.tsv?"
        )
    table["bids_name"] = table["bids_name"].astype(str)
    dup = table["bids_name"][table["bids_name"].duplicated()]
    if len(dup):
        raise DataError(f"{path}: bids_name {dup.iloc[0]!r} appears more than once")
    return table.set_index("bids_name")


def iqms_from_group_row(
    table: pd.DataFrame, bids_name: str, path: str | os.PathLike, required: Iterable[str] = ()
) -> dict[str, float]:
    """The numeric IQMs of one ``bids_name`` row of a group table."""
    if bids_name not in table.index:
        raise MissingInputError(f"{path}: no row with bids_name {bids_name!r}. {_FIX_HINT}")
    row = table.loc[bids_name]
    iqms = {}
    for key, value in row.items():
        num = pd.to_numeric(value, errors="coerce")
        if isinstance(value, str) and pd.isna(num):
            continue
        iqms[str(key)] = float(num)
    line = int(table.index.get_loc(bids_name)) + 2
    _check_iqms(iqms, required, f"{path}, line {line} ({bids_name})")
    return iqms


def candidate_json_paths(mriqc_dir: Path, bids_name: str, rel_dir: str) -> list[Path]:
    """Where MRIQC versions put a scan's JSON, most recent layout first."""
    return [
        mriqc_dir / rel_dir / f"{bids_name}.json",
        mriqc_dir / f"{bids_name}.json",
        mriqc_dir / "derivatives" / f"{bids_name}.json",
    ]


def find_iqm_source(
    mriqc_dirs: Sequence[Path],
    bids_name: str,
    rel_dir: str,
    group_tables: Mapping[Path, pd.DataFrame] | None = None,
) -> IQMSource | None:
    """The first MRIQC JSON, else group-TSV row, holding ``bids_name`` in ``mriqc_dirs``.

    ``group_tables`` caches parsed ``group_T1w.tsv`` files (path → table) across scans.
    """
    for mdir in mriqc_dirs:
        for cand in candidate_json_paths(mdir, bids_name, rel_dir):
            if cand.is_file():
                return IQMSource("json", cand, bids_name)
    for mdir in mriqc_dirs:
        tsv = mdir / "group_T1w.tsv"
        if not tsv.is_file():
            continue
        if group_tables is not None:
            if tsv not in group_tables:
                group_tables[tsv] = read_group_tsv(tsv)  # type: ignore[index]
            table = group_tables[tsv]
        else:
            table = read_group_tsv(tsv)
        if bids_name in table.index:
            return IQMSource("tsv", tsv, bids_name)
    return None


def _md5(path: str | os.PathLike) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def render_iqm_json(
    iqms: Mapping[str, float],
    bids_meta: Mapping[str, Any] | None = None,
    mriqc_version: str = "24.0.2",
    provenance: Mapping[str, Any] | None = None,
    source_file: str | os.PathLike | None = None,
) -> str:
    """MRIQC JSON text (IQMFileSink layout); IQM keys may carry an ``iqm_`` prefix."""
    out: dict[str, Any] = {}
    for key, value in iqms.items():
        key = str(key)
        if key.startswith("iqm_"):
            key = key[4:]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            out[key] = None
        elif key.startswith("size_") and float(value).is_integer():
            out[key] = int(value)
        else:
            out[key] = float(value)
    meta = {"modality": "T1w"}
    meta.update(dict(bids_meta or {}))
    out["bids_meta"] = meta
    prov: dict[str, Any] = {
        "md5sum": _md5(source_file) if source_file else "",
        "settings": {"testing": False},
        "software": "mriqc",
        "version": mriqc_version,
        "warnings": {"large_rot_frame": False, "small_air_mask": False},
    }
    prov.update(dict(provenance or {}))
    out["provenance"] = prov
    try:  # MRIQC's own serializer and options (IQMFileSink), for byte-identical files
        import orjson
    except ImportError:  # same layout; small floats spelled 1e-06 instead of orjson's 1e-6
        return json.dumps(out, indent=2, sort_keys=True, allow_nan=False) + "\n"
    opts = orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE
    return orjson.dumps(out, option=opts | orjson.OPT_SERIALIZE_NUMPY).decode("utf-8")


def write_iqm_json(
    path: str | os.PathLike,
    iqms: Mapping[str, float],
    bids_meta: Mapping[str, Any] | None = None,
    mriqc_version: str = "24.0.2",
    provenance: Mapping[str, Any] | None = None,
    source_file: str | os.PathLike | None = None,
) -> Path:
    """Write one MRIQC-style T1w IQM JSON atomically (for tests, benchmarks and examples)."""
    return write_text(
        path, render_iqm_json(iqms, bids_meta, mriqc_version, provenance, source_file)
    )


# --------------------------------------------------------------------------- running mriqc


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
    "IQMSource",
    "META_KEYS",
    "candidate_json_paths",
    "find_iqm_source",
    "init_mriqc_node",
    "iqms_from_group_row",
    "mriqc_interface_class",
    "mriqc_status",
    "read_group_tsv",
    "read_iqm_json",
    "read_iqm_metadata",
    "render_iqm_json",
    "write_iqm_json",
]
