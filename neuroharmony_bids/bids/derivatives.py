"""The output folder: BIDS derivative names, dataset-level files and per-scan tables.

Per scan (``sub-X/[ses-Y/]anat/``)::

    sub-X[_ses-Y][_acq-A][_run-N]_desc-raw_morph.tsv         one row: FreeSurfer volumes + eTIV
    sub-X[_ses-Y][_acq-A][_run-N]_desc-raw_morph.json        data dictionary + provenance
    sub-X[_ses-Y][_acq-A][_run-N]_desc-harmonized_morph.tsv  harmonized volumes + nh_* flags
    sub-X[_ses-Y][_acq-A][_run-N]_desc-harmonized_morph.json

``_morph.tsv`` is the suffix XCP-D and BEP011 (tabular morphometry) use; it is not yet in the
BIDS schema, so ``.bidsignore`` lists it and the validator accepts the folder. Region names
are FreeSurfer 7 / asegstats2table spellings (FreeSurfer 6 ``Left-Thalamus-Proper`` becomes
``Left-Thalamus``) so that tables of FS6 and FS7 subjects line up.

Dataset-level files (``dataset_description.json``, ``descriptions.tsv``, ``README.md``,
``.bidsignore``) are deterministic: 16 processes writing the same folder write identical bytes
through atomic renames, so none can leave a corrupt or mixed file.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neuroharmony_bids._version import __version__
from neuroharmony_bids.atomic import TMP_PREFIX, write_text
from neuroharmony_bids.bids.layout import SCANNER_FIELDS, Scan, entity_keys
from neuroharmony_bids.errors import NeuroharmonyError, UsageError
from neuroharmony_bids.harmonize.features import (
    ASEG_REGIONS,
    DK_REGIONS,
    ETIV,
    EXTRA_REGIONS,
    FLAG_COLUMNS,
    canonical_region,
)
from neuroharmony_bids.tabular import HARMONIZED_DECIMALS

PIPELINE_NAME = "neuroharmony-bids"
CODE_URL = "https://github.com/neuroharmony-bids/neuroharmony-bids"
BIDS_VERSION = "1.10.0"

#: Every ``desc-`` label this pipeline writes, with its meaning (→ descriptions.tsv).
DESCRIPTIONS: dict[str, str] = {
    "raw": "FreeSurfer regional volumes (mm^3) as measured, before harmonization, "
    "read from aseg.stats and lh/rh.aparc.stats",
    "harmonized": "FreeSurfer regional volumes (mm^3) after Neuroharmony single-scan "
    "harmonization from MRIQC image-quality metrics, with nh_* quality flags",
    "jointharmonized": "Group level only: FreeSurfer regional volumes (mm^3) harmonized jointly "
    "per site (empirical Bayes on each site's location and scale against the model's "
    "reference), with nh_* quality flags",
}

#: Region columns written, in this order (those present in the FreeSurfer outputs).
REGION_ORDER: list[str] = ASEG_REGIONS + DK_REGIONS + EXTRA_REGIONS + [ETIV]

#: The harmonizer's per-scan flag columns (defined once, by the core).
NH_COLUMNS: list[str] = list(FLAG_COLUMNS)

#: A harmonized region's posterior SD column is the region's column plus this suffix
#: (``Left-Hippocampus_sd``): the one naming rule for every table this app writes.
SD_SUFFIX = "_sd"


def sd_column(region: str) -> str:
    """The column holding ``region``'s posterior SD (mm³) in harmonized tables."""
    return region + SD_SUFFIX


def sd_columns(columns: Sequence[str]) -> list[str]:
    """The posterior-SD columns among ``columns``, in :data:`REGION_ORDER`."""
    present = set(columns)
    return [sd_column(r) for r in REGION_ORDER if sd_column(r) in present]


_NH_DICTIONARY: dict[str, dict[str, Any]] = {
    "nh_status": {
        "Description": "Whether this scan's volumes were harmonized",
        "Levels": {
            "harmonized": "the model's correction was applied (scaled by nh_confidence)",
            "unharmonized": "left as measured: the scan is far outside the training "
            "distribution in the features listed in nh_out_of_range_features",
        },
    },
    "nh_confidence": {
        "Description": "Fraction (0 to 1) of the predicted correction that was applied; "
        "below 1 when the scan is near or beyond the training range",
    },
    "nh_out_of_range": {
        "Description": "1 if any model input (IQM, age, eTIV), the regional profile or the "
        "FreeSurfer version is outside what the model was trained on",
        "Levels": {"0": "all inputs inside the training range", "1": "some input outside"},
    },
    "nh_out_of_range_features": {
        "Description": "Semicolon-separated names of the inputs outside the training range "
        "(n/a when none)",
    },
    "nh_features_used": {
        "Description": "Semicolon-separated MRIQC IQMs the model used to predict the correction",
    },
    "nh_n_regions": {
        "Description": "Number of regions the model harmonized for this scan (regions left "
        "unharmonized are named in nh_regions_flagged)"
    },
    "nh_regions_flagged": {
        "Description": "Semicolon-separated regions far outside the training distribution "
        "(person and scanner variation together), or whose volume is missing, zero or negative, "
        "or would be harmonized to 0 mm³ or less: ignored when the other regions' scanner "
        "offset is estimated; the last three are written unharmonized (n/a when none)",
    },
    "nh_iqms_missing": {
        "Description": "Semicolon-separated core MRIQC IQMs the model needed but MRIQC could "
        "not compute for this scan (NaN, null or -1 in its output); the correction was "
        "predicted from the IQMs present, or from the regional profile when too few remained "
        "(n/a when none)",
    },
}

BIDSIGNORE = """\
# Files of BEP011-style tabular morphometry and run records, not (yet) in the BIDS schema.
*_morph.tsv
*_morph.json
*_report.html
group_*
logs/
models/
# the default work folder (the pybids index, Nipype's working files): bids-validator-deno
# 2.x still reports "work/" itself as NOT_INCLUDED with a trailing slash, not without
work
"""

README = """\
# neuroharmony-bids derivatives

Regional FreeSurfer volumes of single T1w scans, raw and harmonized with Neuroharmony
(single-scan harmonization from MRIQC image-quality metrics).

- `sub-*/[ses-*/]anat/*_desc-raw_morph.tsv`: volumes (mm^3) as FreeSurfer measured them.
- `sub-*/[ses-*/]anat/*_desc-harmonized_morph.tsv`: harmonized volumes and `nh_*` flags.
- Each TSV has a JSON data dictionary with units, the model, the IQMs used and the scanner.
- `descriptions.tsv` defines the `desc-` labels; `group_*.tsv` are written at group level.
- `sourcedata/` holds MRIQC and FreeSurfer outputs when this pipeline ran those tools.
- `logs/` records every run (command line, versions, timing) and failed scans.
"""


def scan_dir(output_dir: str | os.PathLike, scan: Scan) -> Path:
    """``output_dir/sub-X[/ses-Y]/anat``."""
    return Path(output_dir) / scan.rel_dir


def morph_path(output_dir: str | os.PathLike, scan: Scan, desc: str, ext: str = ".tsv") -> Path:
    """Path of a per-scan table or its sidecar."""
    if desc not in DESCRIPTIONS:
        raise ValueError(f"unknown desc {desc!r}; add it to DESCRIPTIONS first")
    return scan_dir(output_dir, scan) / f"{scan.prefix}_desc-{desc}_morph{ext}"


def scan_outputs(output_dir: str | os.PathLike, scan: Scan) -> dict[str, Path]:
    """The four files a finished scan has."""
    return {
        f"{desc}_{ext[1:]}": morph_path(output_dir, scan, desc, ext)
        for desc in ("raw", "harmonized")
        for ext in (".tsv", ".json")
    }


def logs_dir(output_dir: str | os.PathLike) -> Path:
    """``output_dir/logs``: run logs, the failure log, citation boilerplate."""
    return Path(output_dir) / "logs"


def report_path(output_dir: str | os.PathLike, scan: Scan) -> Path:
    """Per-scan HTML report."""
    return scan_dir(output_dir, scan) / f"{scan.prefix}_report.html"


def missing_outputs(output_dir: str | os.PathLike, scan: Scan, report: bool = False) -> list[str]:
    """Which of the scan's outputs do not exist yet (``report``: the HTML report counts too).

    Files are written atomically, so an existing file is complete; a run stopped between a
    scan's data files and its report leaves only the report missing. They are written without
    an fsync each (:func:`write_scan_outputs`), so an OS crash may leave one empty: an empty
    file counts as missing (none of them is ever empty when written).
    """
    paths = dict(scan_outputs(output_dir, scan))
    if report:
        paths["report"] = report_path(output_dir, scan)
    return [name for name, path in paths.items() if not _nonempty_file(path)]


def _nonempty_file(path: Path) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size > 0


def is_done(output_dir: str | os.PathLike, scan: Scan, report: bool = False) -> bool:
    """All the scan's outputs exist (the four files, and the report when ``report``)."""
    return not missing_outputs(output_dir, scan, report)


# --------------------------------------------------------------------------- dataset level


def dataset_description(
    bids_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    model_info: Mapping[str, Any],
    container: str | None = None,
) -> dict[str, Any]:
    """``dataset_description.json`` content (deterministic: no dates, no host names)."""
    bids_dir, output_dir = Path(bids_dir).resolve(), Path(output_dir).resolve()
    generated: dict[str, Any] = {
        "Name": PIPELINE_NAME,
        "Version": __version__,
        "CodeURL": CODE_URL,
        "Description": "Single-scan harmonization of FreeSurfer regional volumes from MRIQC "
        "image-quality metrics (Neuroharmony)",
    }
    if container:
        kind, _, tag = container.partition("://")
        generated["Container"] = {"Type": kind, "Tag": tag} if tag else {"Tag": container}
    try:
        source_name = json.loads((bids_dir / "dataset_description.json").read_text()).get("Name")
    except (OSError, json.JSONDecodeError, AttributeError):
        source_name = None
    raw_link = os.path.relpath(bids_dir, output_dir)
    source: dict[str, Any] = {"URL": raw_link}
    if source_name:
        source["Name"] = str(source_name)
    model = model_identity(model_info)
    return {
        "Name": "Neuroharmony harmonized FreeSurfer volumes",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "SourceDatasets": [source],
        "DatasetLinks": {"raw": raw_link},
        "NeuroharmonyModel": model,
    }


def model_identity(info: Mapping[str, Any]) -> dict[str, Any]:
    """Name, version, sha256, file and training size of a model, from ``model_info()``."""
    meta = info.get("metadata") or {}
    summary = info.get("training_summary") or {}
    out = {
        "name": info.get("name")
        or meta.get("name")
        or (Path(str(info["path"])).stem if info.get("path") else None),
        "version": info.get("version") or info.get("package_version"),
        "sha256": info.get("sha256"),
        "path": _model_path_label(info["path"]) if info.get("path") else None,
        "n_training_scans": summary.get("n_scans") if isinstance(summary, Mapping) else None,
    }
    return {k: v for k, v in out.items() if v is not None}


def _model_path_label(path: Any) -> str:
    """Shipped model: its file name; a user model: its path as given."""
    text = str(path)
    marker = os.sep + "neuroharmony_bids" + os.sep + "data" + os.sep
    return "neuroharmony_bids/data/" + text.split(marker, 1)[1] if marker in text else text


def write_output(path: str | os.PathLike, text: str, *, durable: bool = True) -> Path:
    """Atomic write; an OSError (disk full, quota, permissions) becomes an error naming the
    file, with the exit code of a runtime failure (1). No partial file is left.

    ``durable=False`` skips the fsync (see :mod:`neuroharmony_bids.atomic`)."""
    try:
        return write_text(path, text, durable=durable)
    except OSError as exc:
        raise NeuroharmonyError(
            f"cannot write {path}: {exc.strerror or exc}. Free disk space (or raise the "
            f"quota / fix permissions) and re-run; scans already finished are kept"
        ) from None


def remove_stale_temps(folder: str | os.PathLike, older_than: float) -> list[Path]:
    """Delete temporary files of atomic writes in ``folder`` last modified before
    ``older_than`` (a time.time() value): leftovers of a killed run. Newer ones may belong to a
    writer that is still running and are left alone."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(TMP_PREFIX):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < older_than:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def _write_if_changed(path: Path, text: str) -> Path:
    try:
        if path.read_text(encoding="utf-8") == text:
            return path
    except (OSError, UnicodeDecodeError):
        pass
    return write_output(path, text)


def write_dataset_files(
    output_dir: str | os.PathLike, description: Mapping[str, Any], overwrite: bool = False
) -> Path:
    """Write dataset_description.json, descriptions.tsv, README.md and .bidsignore.

    An existing dataset_description.json from another model or version is a usage error
    (mixing harmonizations in one folder would be silent corruption) unless ``overwrite``.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "dataset_description.json"
    text = json.dumps(description, indent=2, sort_keys=True) + "\n"
    _check_existing_description(path, json.loads(text), overwrite)
    _write_if_changed(path, text)
    desc = pd.DataFrame(
        {"desc_id": [f"desc-{k}" for k in DESCRIPTIONS], "description": list(DESCRIPTIONS.values())}
    )
    desc_text = desc.to_csv(sep="\t", index=False, lineterminator="\n")
    _write_if_changed(output_dir / "descriptions.tsv", desc_text)
    _write_if_changed(output_dir / "README.md", README)
    _write_if_changed(output_dir / ".bidsignore", BIDSIGNORE)
    return path


def _check_existing_description(path: Path, new: dict[str, Any], overwrite: bool) -> None:
    """Refuse (64) a folder of another dataset always, and our results of another model or
    version unless ``overwrite``."""
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return
    if existing == new:
        return
    if not isinstance(existing, dict):
        existing = {}
    generated = existing.get("GeneratedBy")
    first = generated[0] if isinstance(generated, list) and generated else {}
    first = first if isinstance(first, dict) else {}
    if first.get("Name") != PIPELINE_NAME:
        raise UsageError(
            f"{path.parent} holds another dataset ({path} names "
            f"{first.get('Name') or existing.get('Name') or 'no pipeline'}, not "
            f"{PIPELINE_NAME}); it is never written into, whatever the flags. Use a new output "
            f"folder"
        )
    if overwrite:
        return
    old = existing.get("NeuroharmonyModel") or {}
    model = new.get("NeuroharmonyModel") or {}
    raise UsageError(
        f"{path.parent} already holds results of {PIPELINE_NAME} {first.get('Version')} with "
        f"model {old.get('name')} (sha256 {str(old.get('sha256'))[:12]}...); this run uses "
        f"{__version__} with model {model.get('name')} (sha256 "
        f"{str(model.get('sha256'))[:12]}...) or another input dataset. Use a new output "
        f"folder, or --overwrite to replace them"
    )


def read_dataset_description(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The output folder's dataset_description.json, or None."""
    try:
        return json.loads((Path(output_dir) / "dataset_description.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


# --------------------------------------------------------------------------- per scan


def canonical_volumes(volumes: Mapping[str, float]) -> dict[str, float]:
    """Volumes keyed by canonical (FreeSurfer 7) names, restricted to known regions + eTIV."""
    canon = {canonical_region(str(k)): float(v) for k, v in volumes.items()}
    return {r: canon[r] for r in REGION_ORDER if r in canon}


def id_columns(scan: Scan) -> dict[str, str]:
    """``participant_id``, then one column per entity the scan has, in BIDS order
    (``session_id`` = ``ses-1``, ``acq_id`` = ``acq-mprage``, ``run_id`` = ``run-2``, ...).

    Rows are identified by the full entities, so several T1w of one person stay apart.
    """
    out = {"participant_id": scan.participant_id}
    for key, value in scan.entities:
        out[entity_column(key)] = f"{key}-{value}"
    return out


def entity_column(key: str) -> str:
    """Table column of a BIDS entity key: ``ses`` → ``session_id``, ``acq`` → ``acq_id``."""
    return "session_id" if key == "ses" else f"{key}_id"


#: Identifier columns of every table, in order (participant, then BIDS entities).
ID_COLUMNS: list[str] = ["participant_id"] + [entity_column(k) for _, k in entity_keys()]


def _region_description(name: str) -> str:
    if name == ETIV:
        return "Estimated total intracranial volume (eTIV), from the aseg.stats header"
    if name.startswith(("lh_", "rh_")) and name.endswith("_volume"):
        hemi, label = name[:2], name[3:-7]
        side = "left" if hemi == "lh" else "right"
        return (
            f"Grey-matter volume of the {side} {label} (Desikan-Killiany atlas), GrayVol of "
            f"{hemi}.aparc.stats"
        )
    if name in EXTRA_REGIONS:
        return f"{name}, from the aseg.stats header measures or table"
    return f"Volume of {name} (aseg.stats Volume_mm3; FreeSurfer 6 spelling mapped to 7)"


def column_dictionary(columns: Sequence[str]) -> dict[str, dict[str, Any]]:
    """BIDS data dictionary entries for the given table columns."""
    out: dict[str, dict[str, Any]] = {}
    for col in columns:
        if col == "participant_id":
            out[col] = {"Description": "BIDS participant label (sub-<label>)"}
        elif col in ID_COLUMNS:
            key = col[: -len("_id")] if col != "session_id" else "ses"
            out[col] = {"Description": f"BIDS {key} entity of the T1w image ({key}-<label>)"}
        elif col == "bids_name":
            out[col] = {"Description": "The scan's BIDS name (MRIQC's bids_name)"}
        elif col == "age":
            out[col] = {"Description": "Age at scan", "Units": "year"}
        elif col == "sex":
            out[col] = {"Description": "Sex", "Levels": {"M": "male", "F": "female"}}
        elif col == "site":
            out[col] = {"Description": "Site (from --site-column or scanner metadata)"}
        elif col in _NH_DICTIONARY:
            out[col] = dict(_NH_DICTIONARY[col])
        elif col in SCANNER_FIELDS:
            out[col] = {"Description": f"{col} from the T1w JSON sidecar"}
        elif col in REGION_ORDER:
            out[col] = {"Description": _region_description(col), "Units": "mm^3"}
        elif col.endswith(SD_SUFFIX) and col[: -len(SD_SUFFIX)] in REGION_ORDER:
            out[col] = {
                "Description": f"Posterior standard deviation of the harmonized "
                f"{col[: -len(SD_SUFFIX)]} volume: the uncertainty of the scanner correction "
                f"(n/a where the region was not harmonized)",
                "Units": "mm^3",
            }
        else:
            out[col] = {"Description": f"{col} (MRIQC image-quality metric)"}
    return out


def _json_value(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def format_tsvs(
    rows: Sequence[Mapping[str, Any]], rounded: Mapping[str, int] | None = None
) -> list[str]:
    """One-row TSVs (header + row) of many rows, written by the group tables' writer
    (:func:`neuroharmony_bids.tabular.format_block`: shortest round-trip floats, ``true`` /
    ``false``, ``n/a`` for missing or empty text, quoting only where needed), so that a per-scan table and
    the group table holding its row spell every value alike. One pyarrow call per distinct
    header, not one per scan; the writer formats each row on its own, so a row's text does not
    depend on the others. ``rounded``: {column: decimals} of number columns written as
    ``numpy.round`` gives them (the writer's own rounding, in one vectorized pass)."""
    from neuroharmony_bids.tabular import format_block

    out: list[str] = [""] * len(rows)
    by_header: dict[tuple[str, ...], list[int]] = {}
    for i, row in enumerate(rows):
        by_header.setdefault(tuple(row), []).append(i)
    for columns, where in by_header.items():
        header = "\t".join(columns) + "\n"
        frame = pd.DataFrame.from_records(
            [tuple(rows[i].values()) for i in where], columns=list(columns)
        )
        for name in frame.select_dtypes(include="object").columns:  # BIDS: no empty cells
            frame[name] = frame[name].mask(frame[name].eq(""), None)
        digits = {c: d for c, d in (rounded or {}).items() if c in frame.columns} or None
        lines = None
        try:
            text = bytes(format_block(frame, "\t", digits)[0]).decode("utf-8")
            lines = text.split("\n")[:-1]
        except (TypeError, ValueError):  # a column mixing types (pyarrow's errors are these)
            pass
        if lines is None or len(lines) != len(where):  # a quoted line break, or mixed types
            lines = [
                bytes(format_block(frame.iloc[[k]], "\t", digits)[0]).decode("utf-8")[:-1]
                for k in range(len(where))
            ]
        for i, line in zip(where, lines, strict=True):
            out[i] = header + line + "\n"
    return out


def format_tsv(row: Mapping[str, Any]) -> str:
    """A one-row TSV (header + row), deterministic (see :func:`format_tsvs`)."""
    return format_tsvs([row])[0]


_DICT_CACHE: dict[tuple[str, ...], str] = {}


def _json_items(extra: Mapping[str, Any]) -> str:
    """The top-level items of ``json.dumps(extra, indent=2)`` without the braces: each item's
    text does not depend on the others, so a block shared by two sidecars is encoded once.

    NaN is ``null`` and numpy numbers are plain numbers (:func:`_json_value`); json's encoder
    does that itself for the usual sidecar (no NaN), so the walk over every value is only
    taken when it meets one."""
    if not extra:
        return ""
    try:
        text = json.dumps(extra, indent=2, allow_nan=False, default=_json_number)
    except ValueError:  # a NaN somewhere: null, as _json_value writes it
        text = json.dumps(_json_value(dict(extra)), indent=2)
    return text[2:-2]


def _json_number(value: Any) -> Any:
    """json's hook for what it cannot encode: numpy numbers (the rest stays an error)."""
    if isinstance(value, (np.integer, np.floating)):
        return _json_value(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _sidecar_text(columns: Sequence[str], *items: str) -> str:
    """``json.dumps({**column_dictionary(columns), **extra}, indent=2)`` from the dictionary
    part (identical for every scan, encoded once) and :func:`_json_items` blocks."""
    key = tuple(columns)
    body = _DICT_CACHE.get(key)
    if body is None:
        body = _DICT_CACHE[key] = json.dumps(column_dictionary(columns), indent=2)[2:-2]
    return "{\n" + ",\n".join(b for b in (body, *items) if b) + "\n}\n"


def scan_rows(
    scan: Scan, raw: Mapping[str, float], harmonized: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The one-row raw and harmonized tables of a scan: identifiers, regions in
    :data:`REGION_ORDER`, then (harmonized) their posterior SDs and the ``nh_*`` flags.

    ``raw``/``harmonized`` map canonical region names (and, for harmonized, ``nh_*``) to
    values. Values are as given: :func:`format_scan_tsvs` writes the harmonized volumes and
    SDs rounded (:data:`HARMONIZED_ROUNDING`) and the raw volumes as FreeSurfer gave them."""
    ids = id_columns(scan)
    regions = [r for r in REGION_ORDER if r in raw]
    raw_row = {**ids, **{r: raw[r] for r in regions}}
    harm_row = {**ids, **{r: float(harmonized.get(r, np.nan)) for r in regions}}
    sds = (sd_column(r) for r in regions)  # in REGION_ORDER, as sd_columns() orders them
    harm_row.update({c: float(harmonized[c]) for c in sds if c in harmonized})
    harm_row.update({c: harmonized.get(c, np.nan) for c in NH_COLUMNS})
    return raw_row, harm_row


#: Harmonized volumes and their posterior SDs are written rounded to ``HARMONIZED_DECIMALS``
#: (``numpy.round``), as the table CLI writes them: {column: decimals}.
HARMONIZED_ROUNDING: dict[str, int] = {
    c: HARMONIZED_DECIMALS for r in REGION_ORDER for c in (r, sd_column(r))
}


def format_scan_tsvs(
    rows: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
) -> list[tuple[str, str]]:
    """The raw and harmonized TSV texts of many scans' :func:`scan_rows`, formatted in two
    calls of :func:`format_tsvs` (harmonized volumes and SDs rounded in one vectorized pass,
    not value by value)."""
    raw = format_tsvs([r for r, _ in rows])
    harmonized = format_tsvs([h for _, h in rows], HARMONIZED_ROUNDING)
    return list(zip(raw, harmonized, strict=True))


def write_scan_outputs(
    output_dir: str | os.PathLike,
    scan: Scan,
    raw: Mapping[str, float],
    harmonized: Mapping[str, Any],
    provenance: Mapping[str, Any],
    tsv: tuple[str, str] | None = None,
) -> dict[str, Path]:
    """Write the four per-scan files atomically; the harmonized TSV is written last.

    No fsync per file (it cost 4 of the 5 ms per scan): readers and a killed run still see
    each file whole or not at all; after an OS crash a file may be empty, and
    :func:`missing_outputs` then counts it as missing, so a re-run recomputes the scan.

    ``tsv``: the two tables' text, :func:`format_scan_tsvs` of :func:`scan_rows`, when the caller
    formatted many scans at once. ``provenance`` holds what the JSON sidecars carry besides
    the dictionary: source files, scanner metadata, covariates, IQMs, FreeSurfer/MRIQC
    versions and the model.
    """
    paths = scan_outputs(output_dir, scan)
    if tsv is None:
        raw_text, harm_tsv = format_scan_tsvs([scan_rows(scan, raw, harmonized)])[0]
    else:
        raw_text, harm_tsv = tsv
    raw_columns = raw_text.split("\n", 1)[0].split("\t")
    harm_columns = harm_tsv.split("\n", 1)[0].split("\t")
    common = {
        "Sources": list(provenance.get("Sources", [])),
        **{
            k: provenance["Scanner"][k]
            for k in SCANNER_FIELDS
            if k in provenance.get("Scanner", {})
        },
        "Covariates": provenance.get("Covariates", {}),
        "ImageQualityMetrics": provenance.get("ImageQualityMetrics", {}),
        "FreeSurfer": provenance.get("FreeSurfer", {}),
    }
    model = dict(provenance.get("Model", {}))
    harm_json = {
        "Model": model,
        "Harmonization": {
            "Status": harmonized.get("nh_status"),
            "Confidence": harmonized.get("nh_confidence"),
            "OutOfRange": harmonized.get("nh_out_of_range"),
            "OutOfRangeFeatures": _split(harmonized.get("nh_out_of_range_features")),
            "IQMsUsed": _split(harmonized.get("nh_features_used")),
            "IQMsMissing": _split(harmonized.get("nh_iqms_missing")),
            "RegionsFlagged": _split(harmonized.get("nh_regions_flagged")),
            "RegionsHarmonized": harmonized.get("nh_n_regions"),
            "FreeSurferVersion": {
                "Found": provenance.get("FreeSurfer", {}).get("Release"),
                "ModelTrainedOn": model.get("freesurfer_version"),
            },
            "PosteriorSD": f"per harmonized region, in the <region>{SD_SUFFIX} columns (mm^3)",
        },
    }
    shared = _json_items(common)  # the raw sidecar's extras, then the harmonized one's
    write_output(paths["raw_json"], _sidecar_text(raw_columns, shared), durable=False)
    write_output(paths["raw_tsv"], raw_text, durable=False)
    harm_text = _sidecar_text(harm_columns, shared, _json_items(harm_json))
    write_output(paths["harmonized_json"], harm_text, durable=False)
    write_output(paths["harmonized_tsv"], harm_tsv, durable=False)
    return paths


def _split(value: Any) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return [v for v in str(value).split(";") if v]


__all__ = [
    "BIDSIGNORE",
    "DESCRIPTIONS",
    "NH_COLUMNS",
    "PIPELINE_NAME",
    "REGION_ORDER",
    "SD_SUFFIX",
    "canonical_volumes",
    "ID_COLUMNS",
    "column_dictionary",
    "entity_column",
    "dataset_description",
    "format_tsv",
    "format_scan_tsvs",
    "format_tsvs",
    "HARMONIZED_ROUNDING",
    "id_columns",
    "is_done",
    "missing_outputs",
    "logs_dir",
    "model_identity",
    "morph_path",
    "read_dataset_description",
    "remove_stale_temps",
    "report_path",
    "scan_dir",
    "scan_outputs",
    "scan_rows",
    "sd_column",
    "sd_columns",
    "write_dataset_files",
    "write_output",
    "write_scan_outputs",
]
