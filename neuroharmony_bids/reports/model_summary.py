"""The "model used" section shared by group and participant reports.

A harmonized volume is only interpretable together with the model that produced it, so
both reports name the model, its hash, what it was trained on and how well it did.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from neuroharmony_bids.reports.html import Section, esc, fmt, key_values, table

#: Keys of a model-info dict shown first, in this order, when present.
_HEADLINE = ("name", "path", "sha256", "version", "neuroharmony_version", "created", "schema")


def gather_model_info(model: Any, model_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Merge an explicit info dict (``io.model_info``) with what the fitted model carries."""
    info: dict[str, Any] = {}
    for attr in ("info_", "model_info_", "metadata_"):
        value = getattr(model, attr, None)
        if isinstance(value, Mapping):
            info.update(value)
    if model_info:
        info.update(model_info)
    if "training_summary" not in info and getattr(model, "training_summary_", None) is not None:
        info["training_summary"] = model.training_summary_
    if "cv_metrics" not in info and getattr(model, "cv_metrics_", None) is not None:
        info["cv_metrics"] = model.cv_metrics_
    for attr, key in (("regions_", "regions"), ("iqms_", "iqms"), ("age_range_", "age_range")):
        value = getattr(model, attr, None)
        if key not in info and value is not None:
            info[key] = value
    return info


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts → dotted keys, so any summary shape renders as a readable table."""
    if isinstance(value, Mapping):
        out: list[tuple[str, Any]] = []
        for k, v in value.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(value, (list, tuple)) and len(value) > 12:
        return [(prefix, f"{len(value)} items: " + ", ".join(map(str, value[:8])) + ", …")]
    if isinstance(value, (list, tuple)):
        return [(prefix, ", ".join(fmt(v) if isinstance(v, float) else str(v) for v in value))]
    return [(prefix, value)]


def model_section(model: Any, model_info: Mapping[str, Any] | None = None) -> Section:
    """Name, hash, training cohort summary and cross-validated metrics of ``model``."""
    info = gather_model_info(model, model_info)
    headline = {k: info[k] for k in _HEADLINE if k in info}
    for k in ("regions", "iqms"):
        if k in info and info[k] is not None:
            headline[f"number of {k}"] = len(info[k])
    if "age_range" in info and info["age_range"] is not None:
        lo, hi = list(info["age_range"])[:2]
        headline["training age range (years)"] = f"{fmt(float(lo), 3)} – {fmt(float(hi), 3)}"
    parts = [key_values(headline) if headline else "<p>No model metadata available.</p>"]
    training = info.get("training_summary")
    if training:
        parts.append("<h3>Training cohort</h3>")
        parts.append(table(_flatten(training), ("field", "value")))
    cv = info.get("cv_metrics")
    if cv:
        parts.append("<h3>Cross-validated metrics (model card)</h3>")
        parts.append(table(_flatten(cv), ("metric", "value")))
    if "iqms" in info and info["iqms"] is not None:
        parts.append(
            "<details><summary>IQMs the model uses</summary><p>"
            + esc(", ".join(map(str, info["iqms"])))
            + "</p></details>"
        )
    return Section("model", "The model", "\n".join(parts))
