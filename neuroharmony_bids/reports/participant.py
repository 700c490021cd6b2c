"""The participant report: one scan's volumes and IQMs against the model's training cohort.

A single harmonized number means little on its own; placing it in the age- and sex-matched
reference range, next to whether the scan's image quality was within what the model has
seen, tells the reader how far to trust it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neuroharmony_bids.atomic import write_text
from neuroharmony_bids.harmonize.features import ETIV, canonical_region, parse_sex
from neuroharmony_bids.reports import figures
from neuroharmony_bids.reports.html import Section, esc, fmt, key_values, note, render, table
from neuroharmony_bids.reports.model_summary import model_section


def _number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _scan_label(row: pd.Series) -> str:
    parts = [str(row[k]) for k in ("participant_id", "session_id") if k in row and pd.notna(row[k])]
    return " ".join(parts) or "scan"


def _etiv(row: pd.Series) -> float | None:
    for key in (ETIV, "eTIV", "EstimatedTotalIntraCranialVol_eTIV"):
        if key in row:
            return _number(row[key])
    return None


def _scan_section(raw_row: pd.Series, harm_row: pd.Series, model: Any = None) -> Section:
    pairs: dict[str, Any] = {}
    for key in ("participant_id", "session_id", "site", "Manufacturer", "ManufacturersModelName"):
        if key in raw_row and pd.notna(raw_row[key]):
            pairs[key] = raw_row[key]
    for key in ("age", "sex"):
        pairs[key] = raw_row.get(key)
    pairs["eTIV (mm³)"] = _etiv(raw_row)
    found = raw_row.get("freesurfer_version")
    pairs["FreeSurfer version (found / model trained on)"] = (
        f"{found if isinstance(found, str) and found else 'unknown'} / "
        f"{getattr(model, 'freesurfer_version_', None) or 'unrecorded'}"
    )
    for key in (
        "nh_status",
        "nh_confidence",
        "nh_out_of_range",
        "nh_out_of_range_features",
        "nh_n_regions",
        "nh_regions_flagged",
        "nh_iqms_missing",
    ):
        if key in harm_row:
            pairs[key] = harm_row[key]
    body = key_values(pairs)
    status = str(harm_row.get("nh_status", ""))
    if status == "unharmonized":
        body += note(
            "This scan was left unharmonized: it lies far outside the model's training "
            "distribution, so the harmonized volumes below equal the raw ones."
        )
    elif str(harm_row.get("nh_out_of_range", "0")) in ("1", "1.0", "True"):
        body += note(
            "Some features of this scan are outside the training range "
            f"({harm_row.get('nh_out_of_range_features', '')}); the correction was shrunk "
            f"to nh_confidence = {fmt(_number(harm_row.get('nh_confidence')), 3)}."
        )
    return Section("scan", "Scan", body)


def _volume_section(raw_row: pd.Series, harm_row: pd.Series, model: Any) -> Section:
    title = "Volumes against the age- and sex-matched reference"
    age = _number(raw_row.get("age"))
    try:
        sex = parse_sex(pd.Series([raw_row.get("sex")])).iloc[0]
    except Exception:  # noqa: BLE001 - any unreadable sex means no matched range
        sex = None
    if age is None or sex is None or not hasattr(model, "reference_range"):
        return Section(
            "volumes",
            title,
            note("No age/sex for this scan (or the model has no reference): cannot match a range."),
        )
    reference = model.reference_range(age, sex, _etiv(raw_row))
    lookup = figures.canonical_lookup(raw_row.index)
    regions = [r for r in reference.index if canonical_region(str(r)) in lookup]
    reference = reference.loc[regions]
    cols = [lookup[canonical_region(str(r))] for r in regions]
    raw_v = pd.Series(pd.to_numeric(raw_row[cols], errors="coerce").to_numpy(float), index=regions)
    harm_v = pd.Series(
        pd.to_numeric(harm_row.reindex(cols), errors="coerce").to_numpy(float), index=regions
    )
    outside = (harm_v < reference["lower"]) | (harm_v > reference["upper"])
    correction = raw_v - harm_v
    deviation = raw_v - reference["mean"]
    with np.errstate(divide="ignore", invalid="ignore"):
        share = 100.0 * correction / deviation
    sd = _posterior_sd(harm_row, model, regions, cols)
    body = [
        f"<p>Reference: the model's training cohort (harmonized volumes) at age {fmt(age, 3)}, "
        f"sex {sex}; the green band is its 95 % range. {int(outside.sum())} of {len(regions)} "
        "harmonized volumes fall outside it (highlighted below); about 5 % are expected by "
        "chance.</p>",
        figures.svg_to_img(
            figures.participant_volumes(raw_v, harm_v, reference, cols),
            "Raw and harmonized volumes against the reference range",
        ),
        "<p>How much of this scan's deviation from the reference mean was attributed to the "
        "scanner, per region: the correction (raw − harmonized) as a share of (raw − reference "
        f"mean); median {fmt(float(np.nanmedian(share)), 3)} %. The rest is kept as this "
        "person's own anatomy. The posterior SD says how sure the correction is (mm³): with "
        "one scan it is large; more scans of the same scanner, harmonized together, shrink "
        "it.</p>",
        "<details><summary>Table of volumes (mm³)</summary>",
        table(
            (
                (
                    c,
                    raw_v[r],
                    harm_v[r],
                    reference.at[r, "mean"],
                    reference.at[r, "lower"],
                    reference.at[r, "upper"],
                    correction[r],
                    share[r] if np.isfinite(share[r]) else None,
                    sd.get(r),
                )
                for r, c in zip(regions, cols, strict=True)
            ),
            (
                "region",
                "raw",
                "harmonized",
                "reference mean",
                "lower 2.5 %",
                "upper 97.5 %",
                "correction",
                "% of deviation attributed to the scanner",
                "posterior SD",
            ),
            flags=list(outside),
        ),
        "</details>",
    ]
    return Section("volumes", title, "\n".join(body))


def _posterior_sd(
    harm_row: pd.Series, model: Any, regions: list[str], cols: list[str]
) -> dict[str, float]:
    """Per region, the correction's posterior SD (mm³): the row's ``<region>_sd`` column when
    the tables carry it, else the model's single-scan value."""
    out = {r: _number(harm_row.get(f"{c}_sd")) for r, c in zip(regions, cols, strict=True)}
    if any(v is not None for v in out.values()) or not hasattr(model, "scanner_uncertainty"):
        return {r: v for r, v in out.items() if v is not None}
    if str(harm_row.get("nh_status", "")) == "unharmonized":
        return {}
    single = model.scanner_uncertainty(1)["sd_mm3"]
    return {r: float(single[r]) for r in regions if r in single.index}


def _iqm_section(raw_row: pd.Series, harm_row: pd.Series, model: Any) -> Section:
    title = "Image quality against the training range"
    iqm_range: Mapping[str, Any] = getattr(model, "iqm_range_", None) or {}
    values = {}
    for name in iqm_range:
        for key in (name, f"iqm_{name}"):
            if key in raw_row and _number(raw_row[key]) is not None:
                values[name] = float(raw_row[key])
                break
    if not values:
        return Section("iqms", title, note("No MRIQC IQM of the model's feature set was found."))
    flagged = set(str(harm_row.get("nh_out_of_range_features", "") or "").split(";")) - {""}
    rows, flags = [], []
    for name, v in values.items():
        low, high = (float(x) for x in iqm_range[name])
        out = v < low or v > high or name in flagged
        rows.append((name, v, low, high, "OUT OF RANGE" if out else "ok"))
        flags.append(out)
    body = [
        f"<p>{sum(flags)} of {len(rows)} IQMs are outside the range of the model's training "
        "scans (orange). Out-of-range IQMs mean the model extrapolates for this scan.</p>",
        figures.svg_to_img(
            figures.participant_iqms(pd.Series(values), iqm_range),
            "IQMs against the training range",
        ),
        table(rows, ("IQM", "value", "training min", "training max", ""), flags=flags),
    ]
    used = str(harm_row.get("nh_features_used", "") or "")
    if used:
        body.append(
            f'<p class="muted">Features used by the prediction: {esc(used.replace(";", ", "))}</p>'
        )
    return Section("iqms", title, "\n".join(body))


def build_participant_report(
    raw_row: pd.Series,
    harmonized_row: pd.Series,
    model: Any,
    model_info: Mapping[str, Any] | None = None,
) -> str:
    """The participant report as one self-contained HTML string."""
    sections = [
        _scan_section(raw_row, harmonized_row, model),
        _volume_section(raw_row, harmonized_row, model),
        _iqm_section(raw_row, harmonized_row, model),
        model_section(model, model_info),
    ]
    label = _scan_label(raw_row)
    return render(f"Neuroharmony report: {label}", "Single-scan harmonization", sections)


def write_participant_report(
    path: str | os.PathLike,
    raw_row: pd.Series,
    harmonized_row: pd.Series,
    model: Any,
    model_info: Mapping[str, Any] | None = None,
) -> Path:
    """Write one scan's report atomically (safe for SLURM arrays writing into one folder)."""
    return write_text(path, build_participant_report(raw_row, harmonized_row, model, model_info))
