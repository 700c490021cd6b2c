"""The Markdown model card written beside a dataset-specific model (group level ``--train``).

What a user needs before trusting a model on new scanners: its training data, its ranges, its
leave-one-site-out figures (site effect removed and anatomy kept) and how to use it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from neuroharmony_bids.reports.markdown import code, escape


def model_card_text(
    path: Path,
    sha: str,
    model: Any,
    table: pd.DataFrame,
    bids_dir: os.PathLike | str,
    site_source: str,
) -> str:
    """The card for the model saved at ``path`` (sha256 ``sha``), trained on ``table``.

    Site names, the dataset path and sex labels come from the user's files: they are escaped so
    that they stay literal text in the Markdown (a ``|`` cannot break the table, nor a name
    become a link or HTML).
    """
    summary = getattr(model, "training_summary_", {}) or {}
    cv = getattr(model, "cv_metrics_", {}) or {}
    sites = table["site"].value_counts().sort_index()
    single = (cv.get("summary") or {}).get("single_scan") or {}
    kept = (
        f"Single-scan harmonization of an unseen site kept {single['retention']:.0%} of a known "
        f"change in a person's anatomy (worst region {single['retention_worst']:.0%}) at "
        f"profile_weight {model.profile_weight:g}; see the figures below."
        if "retention" in single
        else "No leave-one-site-out figures: anatomy retention was not measured."
    )
    lines = [
        f"# Model card: {escape(path.name)}",
        "",
        f"- File: {code(path.name)} (sha256 {code(sha)})",
        f"- Trained by `neuroharmony-bids` group level `--train` on {code(bids_dir)}",
        f"- Site of each scan: {escape(site_source)}",
        "",
        "## Training data",
        "",
        f"{len(table)} scans from {len(sites)} sites; age {table['age'].min():.1f} to "
        f"{table['age'].max():.1f} years; sex "
        + ", ".join(
            f"{escape(k)}: {v}" for k, v in table["sex"].value_counts().sort_index().items()
        )
        + ".",
        "",
        "| site | scans |",
        "|---|---|",
        *[f"| {escape(site)} | {count} |" for site, count in sites.items()],
        "",
        f"Regions harmonized: {len(getattr(model, 'regions_', []) or [])}. IQMs: "
        + ", ".join(escape(name) for name in getattr(model, "iqms_", []) or []),
        "",
        "## Training summary",
        "",
        "```json",
        json.dumps(summary, indent=2, sort_keys=True, default=str),
        "```",
        "",
        "## Leave-one-site-out quality",
        "",
        kept,
        "",
        "```json",
        json.dumps(cv, indent=2, sort_keys=True, default=str),
        "```",
        "",
        "## Use",
        "",
        code(f"neuroharmony-bids BIDS_DIR OUT_DIR participant --model {path}")
        + " harmonizes new scans "
        "(also from scanners not in the training data) to this model's reference. Scans outside "
        "the training ranges are flagged (`nh_out_of_range`) and, when far outside, left "
        "unharmonized. A model trained on few sites generalizes less well to new scanners than "
        "the shipped one: check the leave-one-site-out figures above. With few sites, the "
        "single-scan cross-region update cannot learn how site effects co-vary; harmonize "
        "several scans per scanner together (the joint path) where you can.",
        "",
    ]
    return "\n".join(lines)


def save_with_card(
    model: Any,
    path: Path,
    table: pd.DataFrame,
    *,
    dataset_name: str,
    bids_dir: os.PathLike | str,
    site_source: str,
) -> dict[str, Path]:
    """Save ``model`` at ``path`` and its Markdown card beside it (``<stem>_card.md``).

    The model file's metadata names the dataset and where sites came from, so that
    ``neuroharmony info`` and the reports of later runs can say what the model was trained on.
    """
    from neuroharmony_bids.atomic import write_text
    from neuroharmony_bids.harmonize.io import save_model

    metadata = {
        "name": path.stem.replace("_", "-"),
        "description": "Dataset-specific model trained by neuroharmony-bids group --train on "
        f"{dataset_name}",
        "training_dataset": dataset_name,
        "site_from": site_source,
    }
    sha = save_model(model, path, metadata=metadata)
    card = path.with_name(path.stem + "_card.md")
    write_text(card, model_card_text(path, sha, model, table, bids_dir, site_source))
    return {"model": path, "model_card": card}
