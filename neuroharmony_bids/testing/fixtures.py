"""Build small BIDS datasets with FreeSurfer and MRIQC derivatives from table rows.

Each row (one scan) of a DataFrame becomes: a tiny valid NIfTI T1w with a JSON sidecar carrying
scanner metadata, a ``participants.tsv`` row (and ``sessions.tsv`` when sessions are used),
``derivatives/freesurfer/<subject>/stats/{aseg,lh.aparc,rh.aparc}.stats`` rendered by
:func:`neuroharmony_bids.testing.freesurfer_outputs.write_subject_stats`, and an MRIQC IQM file
rendered by :func:`neuroharmony_bids.testing.mriqc_outputs.write_iqm_json`.

Rows can come from the shared ABIDE table (``SUB_ID``, ``SITE_ID``, ``vendor``, ``model``,
``AGE_AT_SCAN``, ``sex``, FreeSurfer volumes, ``iqm_*``) or from a simulator: the column names
are parameters. The images are placeholders (the volumes come from the table, not the image),
which is why these datasets are for tests, benchmarks and examples only.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from neuroharmony_bids.atomic import write_bytes, write_table, write_text
from neuroharmony_bids.harmonize.features import canonical_region
from neuroharmony_bids.harmonize.table import ZERO_ALLOWED
from neuroharmony_bids.harmonize.table import iqm_columns as _core_iqm_columns
from neuroharmony_bids.io.freesurfer_stats import ASEG_TABLE
from neuroharmony_bids.testing.freesurfer_outputs import write_subject_stats
from neuroharmony_bids.testing.mriqc_outputs import write_iqm_json

#: Non-volume columns of the shared ABIDE table (everything else numeric is a volume or IQM).
_ABIDE_NON_VOLUME = {
    "SUB_ID", "fs_subject", "SITE_ID", "site_mriqc", "vendor", "model", "AGE_AT_SCAN", "sex",
    "dx", "rater_1", "rater_2", "rater_3",
}  # fmt: skip

_ASEG_NAMES = {name for _, name in ASEG_TABLE} | {
    "Left-Thalamus-Proper",
    "Right-Thalamus-Proper",
}
_MEASURES = {
    "BrainSegVol", "BrainSegVolNotVent", "BrainSegVolNotVentSurf", "VentricleChoroidVol",
    "lhCortexVol", "rhCortexVol", "CortexVol", "lhCerebralWhiteMatterVol",
    "rhCerebralWhiteMatterVol", "CerebralWhiteMatterVol", "lhCorticalWhiteMatterVol",
    "rhCorticalWhiteMatterVol", "CorticalWhiteMatterVol", "SubCortGrayVol", "TotalGrayVol",
    "SupraTentorialVol", "SupraTentorialVolNotVent", "SupraTentorialVolNotVentVox", "MaskVol",
    "EstimatedTotalIntraCranialVol", "eTIV",
}  # fmt: skip
_DK_RE = re.compile(r"^[lr]h_[a-z]+_volume$")


@dataclass
class FixtureDataset:
    """What :func:`build_bids_dataset` wrote."""

    root: Path
    participants: list[str] = field(default_factory=list)
    bids_names: list[str] = field(default_factory=list)
    freesurfer_dir: Path | None = None
    mriqc_dir: Path | None = None


def volume_columns(columns: Sequence[str]) -> list[str]:
    """Columns that are FreeSurfer volumes (aseg structures, header measures, DK volumes)."""
    return [
        c
        for c in columns
        if c in _ASEG_NAMES or canonical_region(c) in _MEASURES or c in _MEASURES or _DK_RE.match(c)
    ]


def iqm_columns(columns: Sequence[str]) -> dict[str, str]:
    """{column: MRIQC IQM name}, recognised by the harmonizer's own rule (plain or ``iqm_``)."""
    return {col: name for name, col in _core_iqm_columns(list(columns)).items()}


def _label(value: object) -> str:
    text = re.sub(r"[^a-zA-Z0-9]", "", str(value))
    if not text:
        raise ValueError(f"cannot make a BIDS label from {value!r}")
    return text


_NIFTI_CACHE: dict[tuple[int, int, int], bytes] = {}


def tiny_t1w_bytes(shape: tuple[int, int, int] = (8, 8, 8), zooms: float = 4.0) -> bytes:
    """A small valid gzipped NIfTI-1 image (a bright ellipsoid on black), deterministic bytes."""
    if shape in _NIFTI_CACHE:
        return _NIFTI_CACHE[shape]
    import nibabel as nb

    grid = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1) / 2.0
    r2 = sum(((grid[i] - centre[i]) / (shape[i] / 2.5)) ** 2 for i in range(3))
    data = np.where(r2 < 1.0, 200, 5).astype(np.uint8)
    affine = np.diag([zooms, zooms, zooms, 1.0])
    img = nb.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    raw = io.BytesIO()
    raw.write(img.to_bytes())
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    _NIFTI_CACHE[shape] = buf.getvalue()
    return _NIFTI_CACHE[shape]


def _num(value: object) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if np.isnan(out) else out


def build_bids_dataset(
    root: str | os.PathLike,
    rows: pd.DataFrame,
    *,
    id_column: str = "SUB_ID",
    session_column: str | None = None,
    run_column: str | None = None,
    site_column: str | None = "SITE_ID",
    age_column: str = "AGE_AT_SCAN",
    sex_column: str = "sex",
    manufacturer_column: str | None = "vendor",
    model_column: str | None = "model",
    extra_participant_columns: Sequence[str] = (),
    field_strength: float = 3.0,
    fs_version: str = "6.0.0",
    mriqc_version: str = "24.0.2",
    mriqc_layout: str = "flat",
    freesurfer: bool = True,
    mriqc: bool = True,
    image_shape: tuple[int, int, int] = (8, 8, 8),
) -> FixtureDataset:
    """Write a BIDS dataset (plus ``derivatives/freesurfer`` and ``derivatives/mriqc``).

    ``mriqc_layout``: ``flat`` (``derivatives/mriqc/sub-X_T1w.json``), ``bids``
    (``derivatives/mriqc/sub-X/anat/sub-X_T1w.json``, MRIQC >= 0.15) or ``group``
    (``derivatives/mriqc/group_T1w.tsv`` only). Age and sex go to ``participants.tsv`` as
    ``age``/``sex`` (to ``sessions.tsv`` too when sessions are used); the site column, when
    given, becomes ``site``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if mriqc_layout not in ("flat", "bids", "group"):
        raise ValueError(f"mriqc_layout must be flat, bids or group, not {mriqc_layout!r}")
    vol_cols = volume_columns(list(rows.columns))
    iqm_cols = iqm_columns(list(rows.columns))
    fs_dir = root / "derivatives" / "freesurfer"
    mq_dir = root / "derivatives" / "mriqc"
    nifti = tiny_t1w_bytes(image_shape)
    out = FixtureDataset(root=root)

    write_text(
        root / "dataset_description.json",
        json.dumps(
            {
                "Name": "neuroharmony-bids test dataset (placeholder images, tabular volumes)",
                "BIDSVersion": "1.10.0",
                "DatasetType": "raw",
                "License": "CC-BY-NC-SA-4.0",
                "Authors": ["neuroharmony-bids test fixtures"],
            },
            indent=2,
        )
        + "\n",
    )
    write_text(
        root / "README",
        "Test dataset built by neuroharmony_bids.testing.fixtures: tiny placeholder T1w images\n"
        "with FreeSurfer stats and MRIQC IQMs rendered from table rows. Not for science.\n",
    )

    participants: dict[str, dict[str, object]] = {}
    sessions: dict[str, list[dict[str, object]]] = {}
    group_rows: list[dict[str, object]] = []
    seen: set[str] = set()
    for _, row in rows.iterrows():
        sub = _label(row[id_column])
        ses = (
            _label(row[session_column])
            if session_column and pd.notna(row[session_column])
            else None
        )
        run = _label(row[run_column]) if run_column and pd.notna(row[run_column]) else None
        prefix = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + (f"_run-{run}" if run else "")
        if prefix in seen:
            raise ValueError(f"two rows make the same scan {prefix}; make {id_column} unique")
        seen.add(prefix)
        anat = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
        bids_name = f"{prefix}_T1w"
        rel_dir = anat.relative_to(root).as_posix()
        t1w = anat / f"{bids_name}.nii.gz"
        write_bytes(t1w, nifti)

        sidecar: dict[str, object] = {"MagneticFieldStrength": field_strength}
        if manufacturer_column and pd.notna(row.get(manufacturer_column)):
            sidecar["Manufacturer"] = str(row[manufacturer_column])
        if model_column and pd.notna(row.get(model_column)):
            sidecar["ManufacturersModelName"] = str(row[model_column])
        if site_column and pd.notna(row.get(site_column)):
            sidecar["DeviceSerialNumber"] = _label(row[site_column])
            sidecar["InstitutionName"] = str(row[site_column])
        sidecar["SoftwareVersions"] = "placeholder"
        write_text(anat / f"{bids_name}.json", json.dumps(sidecar, indent=2, sort_keys=True) + "\n")

        age = _num(row.get(age_column))
        sex = row.get(sex_column)
        prow = participants.setdefault(f"sub-{sub}", {"participant_id": f"sub-{sub}"})
        if ses is None or "age" not in prow:
            prow["age"] = age
        prow["sex"] = None if sex is None or pd.isna(sex) else str(sex)
        if site_column and pd.notna(row.get(site_column)):
            prow["site"] = str(row[site_column])
        for col in extra_participant_columns:
            prow[col] = row.get(col)
        if ses:
            sessions.setdefault(sub, []).append({"session_id": f"ses-{ses}", "age": age})

        volumes = {c: float(row[c]) for c in vol_cols if pd.notna(row[c])}
        if freesurfer and volumes:
            write_subject_stats(fs_dir / prefix, volumes, fs_version=fs_version)
        iqms = {name: _num(row[c]) for c, name in iqm_cols.items()}
        if mriqc and iqms:
            meta = {"subject_id": sub, "modality": "T1w"}
            if ses:
                meta["session_id"] = ses
            if run:
                meta["run_id"] = run
            meta.update({k: v for k, v in sidecar.items() if k != "SoftwareVersions"})
            if mriqc_layout == "group":
                group_rows.append({"bids_name": bids_name, **iqms})
            else:
                target = (mq_dir / rel_dir) if mriqc_layout == "bids" else mq_dir
                write_iqm_json(
                    target / f"{bids_name}.json",
                    {k: (np.nan if v is None else v) for k, v in iqms.items()},
                    bids_meta=meta,
                    mriqc_version=mriqc_version,
                    source_file=t1w,
                )
        out.bids_names.append(bids_name)
        if f"sub-{sub}" not in out.participants:
            out.participants.append(f"sub-{sub}")

    ptable = pd.DataFrame(list(participants.values()))
    write_table(root / "participants.tsv", ptable)
    pjson = {
        "age": {"Description": "age of the participant", "Units": "year"},
        "sex": {"Description": "sex of the participant", "Levels": {"M": "male", "F": "female"}},
    }
    if "site" in ptable.columns:
        pjson["site"] = {"Description": "acquisition site"}
    for col in extra_participant_columns:
        pjson[col] = {"Description": f"{col} (copied from the source table)"}
    write_text(root / "participants.json", json.dumps(pjson, indent=2) + "\n")
    for sub, srows in sessions.items():
        write_table(root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv", pd.DataFrame(srows))
    if sessions:
        write_text(
            root / "sessions.json",
            json.dumps({"age": {"Description": "age at the session", "Units": "year"}}, indent=2)
            + "\n",
        )

    if freesurfer and vol_cols:
        out.freesurfer_dir = fs_dir
        _derivative_description(fs_dir, "FreeSurfer (synthetic stats files)", fs_version)
    if mriqc and iqm_cols:
        out.mriqc_dir = mq_dir
        _derivative_description(mq_dir, "MRIQC (synthetic IQM files)", mriqc_version)
        if group_rows:
            write_table(mq_dir / "group_T1w.tsv", pd.DataFrame(group_rows))
    return out


def _derivative_description(path: Path, name: str, version: str) -> None:
    write_text(
        path / "dataset_description.json",
        json.dumps(
            {
                "Name": name,
                "BIDSVersion": "1.10.0",
                "DatasetType": "derivative",
                "GeneratedBy": [
                    {
                        "Name": "neuroharmony_bids.testing.fixtures",
                        "Description": f"rendered in the {name.split()[0]} {version} layout",
                    }
                ],
            },
            indent=2,
        )
        + "\n",
    )


def failed_parcellation(rows: pd.DataFrame) -> pd.Series:
    """Rows with a zero/negative or missing Desikan-Killiany or aseg volume of the Neuroharmony
    set (failed FreeSurfer runs: ABIDE has a few; the app harmonizes such a scan with those
    regions flagged, and training refuses it). Zero is allowed where the core allows it."""
    from neuroharmony_bids.harmonize.features import NEUROHARMONY_REGIONS

    cols = [c for c in rows.columns if canonical_region(c) in set(NEUROHARMONY_REGIONS)]
    bad = pd.Series(False, index=rows.index)
    for c in cols:
        vals = pd.to_numeric(rows[c], errors="coerce")
        limit = vals < 0 if any(z in c for z in ZERO_ALLOWED) else vals <= 0
        bad |= vals.isna() | limit
    return bad


def abide_rows(
    table: pd.DataFrame,
    n: int | None = None,
    seed: int = 0,
    replace: bool = False,
    drop_failed: bool = False,
) -> pd.DataFrame:
    """Rows of the ABIDE table (resampled with new unique ``SUB_ID`` when ``replace``);
    ``drop_failed`` leaves out failed parcellations first."""
    if drop_failed:
        table = table[~failed_parcellation(table)]
    if n is None:
        return table.copy()
    picked = table.sample(n=n, replace=replace, random_state=seed).reset_index(drop=True)
    if replace or n > len(table):
        picked["SUB_ID"] = [f"{i:05d}{sid}" for i, sid in enumerate(picked["SUB_ID"])]
    return picked


def copy_rows_with(rows: pd.DataFrame, **columns: Mapping[int, object] | object) -> pd.DataFrame:
    """A copy of ``rows`` with some columns set (a scalar, or a {row position: value} map)."""
    out = rows.copy().reset_index(drop=True)
    for col, value in columns.items():
        if isinstance(value, Mapping):
            if col not in out.columns:
                out[col] = None
            out[col] = out[col].astype(object)
            for pos, v in value.items():
                out.loc[pos, col] = v
        else:
            out[col] = value
    return out


__all__ = [
    "FixtureDataset",
    "abide_rows",
    "build_bids_dataset",
    "copy_rows_with",
    "failed_parcellation",
    "iqm_columns",
    "tiny_t1w_bytes",
    "volume_columns",
]
