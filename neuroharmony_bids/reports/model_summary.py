"""The "model used" section shared by group and participant reports.

A harmonized volume is only interpretable together with the model that produced it, so
both reports name the model, its hash, what it was trained on and how well it did.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from neuroharmony_bids.reports.html import Section, esc, fmt, key_values, table


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
        if value is not None and not isinstance(info.get(key), Mapping):
            info[key] = value  # the fitted model is the truth for what it uses (a file's
            # core/full IQM sets are the same IQMs, named by set)
    return info


def _num(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "?"


def _get(d: Any, *keys: str, default: Any = "?") -> Any:
    for k in keys:
        d = d.get(k) if isinstance(d, Mapping) else None
    return default if d is None else d


def _words(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def _text(value: Any) -> str:
    """A free-form summary value on one line: ``{"GE": 172}`` → ``GE: 172``."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_text(v)}" for k, v in value.items())
    if isinstance(value, list | tuple) and len(value) > 8:
        return f"{len(value)} items: " + "; ".join(map(_text, value[:3])) + "; …"
    if isinstance(value, list | tuple):
        return "; ".join(map(_text, value))
    return fmt(value) if isinstance(value, float) else str(value)


def model_rows(info: Mapping[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """What is shown about a model, as (label, text) rows under three headings.

    The one owner of *what* a report or ``neuroharmony info`` says about a model: identity,
    training cohort and leave-one-site-out figures. ``info`` is :func:`gather_model_info`'s
    (or ``harmonize.io.model_info``'s) dict; free-form parts a model lacks are left out or ``?``.
    """
    meta = info.get("metadata") if isinstance(info.get("metadata"), Mapping) else {}
    ident: list[tuple[str, str]] = []
    for label, key in (("model", "name"), ("description", "description"), ("file", "path"),
                       ("sha256", "sha256")):  # fmt: skip
        value = info.get(key, meta.get(key))
        if value not in (None, ""):
            ident.append((label, str(value)))
    if info.get("format"):
        ident.append(
            ("format", f"{info['format']} schema {info.get('schema_version', '?')}, written by "
                       f"neuroharmony-bids {info.get('package_version', '?')}")
        )  # fmt: skip
    for key in _PROVENANCE:
        if meta.get(key) not in (None, ""):
            ident.append((key, _text(meta[key])))

    summ = info.get("training_summary") or {}
    cohort: list[tuple[str, str]] = []
    if summ:
        cohort.append(
            ("training cohort", f"{_get(summ, 'n_scans')} scans, {_get(summ, 'n_sites')} sites, "
             f"ages {_num(_get(summ, 'age', 'min'), '.1f')}-{_num(_get(summ, 'age', 'max'), '.1f')}"
             f", sex F={_get(summ, 'sex', 'F', default=0)} M={_get(summ, 'sex', 'M', default=0)}")
        )  # fmt: skip
        sites = _get(summ, "sites", default=None)
        if isinstance(sites, Mapping):
            cohort.append(("sites", ", ".join(f"{k} ({v})" for k, v in sites.items())))
        shown = {"n_scans", "n_sites", "age", "sex", "sites"}
        cohort += [(str(k), _text(v)) for k, v in summ.items() if k not in shown]
    if info.get("age_range") is not None and not summ:
        lo, hi = list(info["age_range"])[:2]
        cohort.append(("training age range (years)", f"{fmt(float(lo), 3)} – {fmt(float(hi), 3)}"))
    if info.get("design"):
        cohort.append(("protected", ", ".join(map(str, info["design"]))))
    if info.get("regions") is not None:
        cohort.append((f"regions ({len(info['regions'])})", _words(info["regions"])))
    iqms = info.get("iqms")
    if isinstance(iqms, Mapping):
        cohort.append(("IQMs (core)", _words(iqms.get("core", []))))
        cohort.append(("IQMs (full)", f"{len(iqms.get('full', []))} IQMs"))
    elif iqms is not None:
        cohort.append((f"IQMs ({len(iqms)})", _words(iqms)))
    for name, cv in (info.get("iqm_prior_cv") or {}).items():
        if isinstance(cv, Mapping):
            cohort.append(
                (f"IQM prior {name}", f"{cv.get('chosen', '?')}, LOSO MSE gain vs no prior "
                 f"{_num(cv.get('gain_vs_zero'), '+.3f')} "
                 f"({_num(cv.get('calibrated_gain_vs_zero'), '+.3f')} after calibration)")
            )  # fmt: skip

    loso: list[tuple[str, str]] = []
    cv = info.get("cv_metrics") if isinstance(info.get("cv_metrics"), Mapping) else {}
    summary = cv.get("summary")
    for method, m in (summary or {}).items() if isinstance(summary, Mapping) else ():
        if isinstance(m, Mapping):
            text = (
                f"sig={_num(m.get('n_significant'), '.0f')} auc={_num(m.get('auc'), '.3f')} "
                f"r2={_num(m.get('r2'), '.3f')} mae%={_num(m.get('mae_pct'), '.2f')} "
                f"dage_r={_num(m.get('age_r_change'), '.3f')}"
            )
            if "retention" in m:
                text += (
                    f" retention={_num(m.get('retention'), '.3f')} "
                    f"(worst region {_num(m.get('retention_worst'), '.3f')})"
                )
            loso.append((str(method), text))
    loso += [(str(k), _text(v)) for k, v in cv.items() if k not in ("summary", "per_site")]
    return {"model": ident, "training": cohort, "loso": loso}


#: Provenance keys of a model's metadata shown when present, in this order.
_PROVENANCE = (
    "training_table", "training_table_sha256", "training_rows_dropped", "training_dataset",
    "site_from", "freesurfer_version", "mriqc_version", "license",
)  # fmt: skip
#: Values longer than this (a list of 107 regions) are folded away in the HTML.
_LONG = 300
#: What each block of :func:`model_rows` is called, in the text and the HTML.
_HEADINGS = {
    "training": "Training cohort",
    "loso": "Leave-one-site-out (sum of significant regions; mean AUC, R², MAE%, Δage r)",
}


def model_text(info: Mapping[str, Any]) -> str:
    """:func:`model_rows` as plain text (``neuroharmony info``): one ``label: value`` a line."""
    blocks = model_rows(info)
    lines = [f"{label + ':':<17} {value}" for label, value in blocks["model"] + blocks["training"]]
    lines.append(
        "nh_features_used: 'core' or 'full' in `neuroharmony harmonize` outputs (the sets above)"
    )
    if blocks["loso"]:
        lines.append(_HEADINGS["loso"][0].lower() + _HEADINGS["loso"][1:] + ":")
        lines += [f"  {method:<12} {text}" for method, text in blocks["loso"]]
    return "\n".join(lines)


def _html_rows(rows: list[tuple[str, str]]) -> str:
    """Rows as a label/value table; a long value (a region list) is folded away."""
    body = key_values({label: value for label, value in rows if len(value) <= _LONG})
    for label, value in rows:
        if len(value) > _LONG:
            body += f"<details><summary>{esc(label)}</summary><p>{esc(value)}</p></details>"
    return body


def _per_site(cv: Any) -> str:
    """Leave-one-site-out figures of each held-out site, folded away (HTML only: long)."""
    per_site = cv.get("per_site") if isinstance(cv, Mapping) else None
    if not (
        isinstance(per_site, list) and per_site and all(isinstance(r, Mapping) for r in per_site)
    ):
        return ""
    cols = list(dict.fromkeys(k for r in per_site for k in r))
    return (
        "<details><summary>Per held-out site</summary>"
        + table(([r.get(c) for c in cols] for r in per_site), cols)
        + "</details>"
    )


def model_section(model: Any, model_info: Mapping[str, Any] | None = None) -> Section:
    """:func:`model_rows` of ``model`` as the reports' "The model" section."""
    info = gather_model_info(model, model_info)
    blocks = model_rows(info)
    parts = [
        _html_rows(blocks["model"]) if blocks["model"] else "<p>No model metadata available.</p>"
    ]
    if blocks["training"]:
        parts += [f"<h3>{_HEADINGS['training']}</h3>", _html_rows(blocks["training"])]
    if blocks["loso"]:
        parts.append("<h3>Leave-one-site-out metrics (model card)</h3>")
        parts.append(
            "<p>Each training site held out in turn and harmonized by a model refitted on the "
            "others: <code>sig</code> region × site cells still differing from the reference, "
            "<code>auc</code> site-vs-rest classifier (0.5 = chance), <code>r2</code>/"
            "<code>mae%</code> agreement with ComBat fitted with that site, <code>dage_r</code> "
            "change of within-site age correlations, <code>retention</code> share of a known "
            "anatomical change kept.</p>"
        )
        parts.append(table(blocks["loso"], ("method", "figures")))
        parts.append(_per_site(info.get("cv_metrics")))
    return Section("model", "The model", "\n".join(p for p in parts if p))
