"""The "model used" section shared by group and participant reports.

A harmonized volume is only interpretable together with the model that produced it, so
both reports name the model, its hash, what it was trained on and how well it did.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from neuroharmony_bids.reports.html import Section, esc, fmt, key_values, table

#: Keys of a model-info dict shown first, in this order, when present.
_HEADLINE = (
    "name", "description", "path", "sha256", "format", "schema_version", "package_version",
    "freesurfer_version", "mriqc_version", "license",
)  # fmt: skip


def gather_model_info(model: Any, model_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Merge an explicit info dict (``io.model_info``) with what the fitted model carries.

    ``metadata`` entries (name, description, licence, training software versions) are lifted
    to the top level so that both the shipped and user-trained models show their name.
    """
    info: dict[str, Any] = {}
    for attr in ("info_", "model_info_", "metadata_"):
        value = getattr(model, attr, None)
        if isinstance(value, Mapping):
            info.update(value)
    if model_info:
        info.update(model_info)
    meta = info.get("metadata")
    if isinstance(meta, Mapping):
        for key, value in meta.items():
            info.setdefault(str(key), value)
    if "training_summary" not in info and getattr(model, "training_summary_", None) is not None:
        info["training_summary"] = model.training_summary_
    if "cv_metrics" not in info and getattr(model, "cv_metrics_", None) is not None:
        info["cv_metrics"] = model.cv_metrics_
    for attr, key in (("regions_", "regions"), ("iqms_", "iqms"), ("age_range_", "age_range")):
        value = getattr(model, attr, None)
        if value is not None:
            info[key] = value  # the fitted model is the truth for what it uses
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


def _cv_tables(cv: Mapping[str, Any]) -> list[str]:
    """Leave-one-site-out figures: a method × metric summary, per-site rows folded away."""
    parts: list[str] = []
    summary = cv.get("summary")
    if (
        isinstance(summary, Mapping)
        and summary
        and all(isinstance(v, Mapping) for v in summary.values())
    ):
        metrics = sorted({m for v in summary.values() for m in v})
        parts.append(
            table(
                ([method, *(v.get(m) for m in metrics)] for method, v in summary.items()),
                ["method", *metrics],
            )
        )
    rest = {k: v for k, v in cv.items() if k not in ("summary", "per_site")}
    if rest:
        parts.append(table(_flatten(rest), ("field", "value")))
    per_site = cv.get("per_site")
    if isinstance(per_site, list) and per_site and all(isinstance(r, Mapping) for r in per_site):
        cols = list(dict.fromkeys(k for r in per_site for k in r))
        parts.append(
            "<details><summary>Per held-out site</summary>"
            + table(([r.get(c) for c in cols] for r in per_site), cols)
            + "</details>"
        )
    return parts


def model_section(model: Any, model_info: Mapping[str, Any] | None = None) -> Section:
    """Name, hash, training cohort summary and cross-validated metrics of ``model``."""
    info = gather_model_info(model, model_info)
    headline = {k: info[k] for k in _HEADLINE if k in info and info[k] not in (None, "")}
    for k in ("regions", "iqms"):
        if info.get(k) is not None:
            headline[f"number of {k}"] = len(info[k])
    if info.get("age_range") is not None:
        lo, hi = list(info["age_range"])[:2]
        headline["training age range (years)"] = f"{fmt(float(lo), 3)} – {fmt(float(hi), 3)}"
    parts = [key_values(headline) if headline else "<p>No model metadata available.</p>"]
    training = info.get("training_summary")
    if training:
        parts.append("<h3>Training cohort</h3>")
        parts.append(table(_flatten(training), ("field", "value")))
    cv = info.get("cv_metrics")
    if isinstance(cv, Mapping) and cv:
        parts.append("<h3>Leave-one-site-out metrics (model card)</h3>")
        parts.append(
            "<p>Each training site held out in turn and harmonized by a model refitted on the "
            "others: <code>auc</code> site-vs-rest classifier (0.5 = chance), "
            "<code>n_significant</code> region × site cells still differing from the reference, "
            "<code>r2</code>/<code>mae_pct</code> agreement with ComBat fitted with that site, "
            "<code>age_r_change</code> change of within-site age correlations.</p>"
        )
        parts += _cv_tables(cv)
    if info.get("iqms") is not None:
        parts.append(
            "<details><summary>IQMs the model uses</summary><p>"
            + esc(", ".join(map(str, info["iqms"])))
            + "</p></details>"
        )
    return Section("model", "The model", "\n".join(parts))
