"""The group report: what harmonization did to this dataset's site effects, biology and quality.

Researchers judge a harmonization by looking at it, so the report puts raw and harmonized
side by side and says plainly when something could not be shown and why.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from neuroharmony_bids.atomic import write_text
from neuroharmony_bids.bids.layout import scanner_site
from neuroharmony_bids.errors import DataError
from neuroharmony_bids.harmonize.features import (
    ETIV,
    NEUROHARMONY_REGIONS,
    canonical_region,
)
from neuroharmony_bids.reports import figures
from neuroharmony_bids.reports.html import Section, esc, fmt, key_values, note, render, table
from neuroharmony_bids.reports.model_summary import model_section

#: The site classifier sees at most this many scans per site (drawn with ``AUC_SEED``): its
#: multinomial fit grows faster than linearly with the scans, so a cap keeps its cost flat
#: however large the dataset; the report says how many scans it used. F-tests and figures
#: use every scan.
AUC_MAX_PER_SITE = 50
AUC_SEED = 0


def shown_sites(table_: pd.DataFrame) -> tuple[pd.Series | None, str]:
    """The site the report shows for each scan, and how it was found: the table's ``site``
    column (the group level filled it by ``workflows.group.site_labels``), else the scanner
    (``bids.layout.scanner_site``, the one site-from-scanner rule); missing = ``unknown``."""
    if "site" in table_ and table_["site"].notna().any():
        return table_["site"].fillna("unknown").astype(str), "the table's 'site' column"
    labels, source = scanner_site(table_)
    if labels is not None:
        return labels.fillna("unknown").astype(str), source
    return None, "no 'site' column and " + source


def shown_regions(raw: pd.DataFrame, harmonized: pd.DataFrame, model: Any) -> list[str]:
    """The regions the report shows: columns of both tables that the model harmonizes, in
    the user's spelling (FreeSurfer 6 or 7), eTIV left out (it scales, it is not compared).

    Not :func:`neuroharmony_bids.harmonize.table.region_columns`, which maps each model region
    to the user's column for harmonizing."""
    known = list(getattr(model, "regions_", None) or NEUROHARMONY_REGIONS)
    known_set = {canonical_region(r) for r in known}
    return [
        c
        for c in raw.columns
        if c in harmonized.columns and canonical_region(str(c)) in known_set and c != ETIV
    ]


def _align(raw: pd.DataFrame, harmonized: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Raw and harmonized tables row-aligned (the harmonizer keeps rows in order)."""
    if len(raw) != len(harmonized):
        keys = [k for k in ("bids_name",) if k in raw and k in harmonized] or [
            k for k in ("participant_id", "session_id") if k in raw and k in harmonized
        ]
        if not keys:
            raise DataError(
                f"group report: raw table has {len(raw)} rows and harmonized has "
                f"{len(harmonized)}; they must describe the same scans"
            )
        pairs = (
            raw[keys]
            .assign(_r=np.arange(len(raw)))
            .merge(harmonized[keys].assign(_h=np.arange(len(harmonized))), on=keys)
        )
        raw, harmonized = raw.iloc[pairs["_r"]], harmonized.iloc[pairs["_h"]]
    return raw.reset_index(drop=True), harmonized.reset_index(drop=True)


def _summary_section(
    raw: pd.DataFrame,
    harmonized: pd.DataFrame,
    failed: pd.DataFrame | None,
    sites: pd.Series | None,
    site_source: str,
    regions: Sequence[str],
) -> Section:
    status = harmonized.get("nh_status", pd.Series(dtype=str)).astype(str)
    oor = pd.to_numeric(harmonized.get("nh_out_of_range", pd.Series(dtype=float)), errors="coerce")
    pairs: dict[str, Any] = {
        "Scans in the tables": len(raw),
        "Participants": raw["participant_id"].nunique() if "participant_id" in raw else "n/a",
        "Harmonized (nh_status = harmonized)": int((status == "harmonized").sum()),
        "Left raw (nh_status = unharmonized)": int((status == "unharmonized").sum()),
        "Out of the training range (nh_out_of_range = 1)": int((oor == 1).sum()),
        "Failed (not in the tables)": 0 if failed is None else len(failed),
        "Regions harmonized": len(regions),
        "Sites": "n/a" if sites is None else sites.nunique(),
        "Site taken from": site_source,
    }
    if "age" in raw:
        age = pd.to_numeric(raw["age"], errors="coerce")
        pairs["Age range (years)"] = f"{fmt(age.min(), 3)} – {fmt(age.max(), 3)}"
    if "sex" in raw:
        counts = raw["sex"].astype(str).value_counts()
        pairs["Sex"] = ", ".join(f"{k}: {v}" for k, v in counts.sort_index().items())
    body = key_values(pairs)
    if sites is not None:
        counts = sites.value_counts().sort_index()
        body += table(counts.items(), ("site", "scans"), caption="Scans per site")
    return Section("summary", "Summary", body)


def _metrics_block(
    raw: pd.DataFrame, harmonized: pd.DataFrame, regions: Sequence[str], sites: pd.Series
) -> str:
    """Site-classifier AUC and significant-site-effect counts from the shared metrics module."""
    try:
        from neuroharmony_bids.harmonize import metrics
    except ImportError:
        return note(
            "Site-effect statistics (site-classifier AUC, number of regions with a significant "
            "site effect) are not available in this version: the metrics module is missing."
        )
    return _metrics_html(metrics, raw, harmonized, regions, sites)


def _metrics_html(
    metrics: Any,
    raw: pd.DataFrame,
    harmonized: pd.DataFrame,
    regions: Sequence[str],
    sites: pd.Series,
) -> str:
    """Render the shared measures; say why when the data cannot support them."""
    cov_cols = [c for c in ("age", "sex") if c in raw]
    frame = pd.concat(
        {
            "raw": raw[list(regions)].apply(pd.to_numeric, errors="coerce"),
            "harm": harmonized[list(regions)].apply(pd.to_numeric, errors="coerce"),
        },
        axis=1,
    )
    covariates = raw[cov_cols].copy()
    if "age" in covariates:
        covariates["age"] = pd.to_numeric(covariates["age"], errors="coerce")
    if "sex" in covariates:
        covariates["sex"] = covariates["sex"].astype(str).str.upper().where(raw["sex"].notna())
    ok = frame.notna().all(axis=1) & covariates.notna().all(axis=1)
    dropped = int((~ok).sum())
    labels = sites[ok].astype(str).to_numpy()
    counts = pd.Series(labels).value_counts()
    if len(counts) < 2:
        return note("Fewer than two sites have complete data: site-effect statistics skipped.")
    cov = covariates[ok].reset_index(drop=True)
    before = frame.loc[ok, "raw"].reset_index(drop=True)
    after = frame.loc[ok, "harm"].reset_index(drop=True)
    try:
        f_before = metrics.residual_site_effect(before, labels, cov)
        f_after = metrics.residual_site_effect(after, labels, cov)
        auc_kw = {"max_per_site": AUC_MAX_PER_SITE, "seed": AUC_SEED, "tol": 1e-3}
        auc_before = metrics.site_auc(before, labels, cov, **auc_kw)
        auc_after = metrics.site_auc(after, labels, cov, **auc_kw)
    except DataError as exc:
        return note(f"Site-effect statistics could not be computed: {exc}")
    n_auc = len(metrics.subsample_per_site(labels, AUC_MAX_PER_SITE, AUC_SEED))
    auc_scans = (
        f"all {len(labels)} scans"
        if n_auc == len(labels)
        else f"{n_auc} of {len(labels)} scans: at most {AUC_MAX_PER_SITE} per site, drawn at "
        f"random with seed {AUC_SEED}"
    )
    n_sig = (int(f_before["significant"].sum()), int(f_after["significant"].sum()))
    rows = [
        (
            f"Site-classifier AUC (mean one-vs-rest, 5-fold CV on {auc_scans}; 0.5 = chance)",
            auc_before,
            auc_after,
        ),
        (
            f"Regions with a significant site effect (F-test, Bonferroni over {len(regions)} "
            "regions, α = 0.05)",
            n_sig[0],
            n_sig[1],
        ),
        (
            "Median share of residual variance explained by site (partial η²)",
            float(np.median(f_before["eta2_partial"])),
            float(np.median(f_after["eta2_partial"])),
        ),
    ]
    out = [
        "<p>Both measures first remove age, age² and sex (fitted within sites), so they ask "
        "whether a scan's site can still be told from its volumes once biology is accounted "
        "for. Computed by <code>neuroharmony_bids.harmonize.metrics</code>, the same code as "
        "the benchmarks.</p>",
        table(rows, ("measure", "raw", "harmonized")),
    ]
    small = counts[counts < 10]
    if len(small):
        out.append(
            note(
                f"{len(small)} of {len(counts)} sites have fewer than 10 scans "
                f"({', '.join(f'{k}: {v}' for k, v in small.items())}): with so few scans the "
                "F-tests have little power (a real site effect may not reach significance after "
                "Bonferroni) and the AUC is noisy. The heatmap and box plots show the effect "
                "sizes."
            )
        )
    if dropped:
        out.append(
            note(
                f"{dropped} scan(s) with a missing volume, age or sex were left out of these tests."
            )
        )
    worst = f_before.sort_values("stat", ascending=False).head(10)
    out.append(
        "<details><summary>Regions with the strongest site effect before harmonization"
        "</summary>"
        + table(
            (
                (r, w["stat"], w["p_adj"], f_after.at[r, "stat"], f_after.at[r, "p_adj"])
                for r, w in worst.iterrows()
            ),
            ("region", "F raw", "p (Bonferroni) raw", "F harmonized", "p (Bonferroni) harmonized"),
        )
        + "</details>"
    )
    return "\n".join(out)


def _site_section(
    raw: pd.DataFrame,
    harmonized: pd.DataFrame,
    regions: Sequence[str],
    sites: pd.Series | None,
    site_source: str,
    raw_keys: Mapping[str, pd.Series],
    harm_keys: Mapping[str, pd.Series],
    renderer: figures.FigureRenderer,
) -> Section:
    title = "Site effects before and after"
    if sites is None:
        return Section(
            "site-effects",
            title,
            note(
                f"No site information: {site_source}. Site effects cannot be measured; add a "
                "'site' column to participants.tsv or keep the scanner fields in the T1w JSON "
                "sidecars."
            ),
        )
    counts = sites.value_counts()
    if len(counts) < 2:
        return Section(
            "site-effects",
            title,
            note(
                f"All {len(sites)} scans come from one site ({counts.index[0]}), so there is no "
                "between-site difference in this dataset to show or test. Harmonization still "
                "maps each scan towards the model's reference; see the quality section."
            ),
        )
    parts = [
        "<p>Each cell is the mean, over a site's scans, of a region's z-scored volume after "
        "removing age, age² and sex. Red/blue cells mean the site's volumes are larger/smaller "
        "than the dataset's; after harmonization the columns should fade towards white.</p>"
    ]
    if len(regions):
        raw_z = figures.site_mean_z(raw, regions, sites)
        harm_z = figures.site_mean_z(harmonized, regions, sites)
        parts.append(
            renderer.img(
                figures.site_heatmap(raw_z, harm_z),
                "Heatmap of site-mean z-scores, raw and harmonized",
            )
        )
        mean_abs = pd.DataFrame(
            {
                "raw": raw_z.abs().mean(axis=1),
                "harmonized": harm_z.abs().mean(axis=1),
            }
        )
        parts.append(
            table(
                ((s, int(counts[s]), r["raw"], r["harmonized"]) for s, r in mean_abs.iterrows()),
                ("site", "scans", "mean |z| raw", "mean |z| harmonized"),
                caption="Average size of each site's deviation over all regions",
            )
        )
    if raw_keys:
        parts.append("<h3>Key structures by site</h3>")
        parts.append(
            renderer.img(
                figures.key_region_boxplots(dict(raw_keys), dict(harm_keys), sites),
                "Box plots by site of key structures, raw and harmonized",
            )
        )
    parts.append("<h3>Site-effect statistics</h3>")
    parts.append(_metrics_block(raw, harmonized, regions, sites))
    return Section("site-effects", title, "\n".join(parts))


def _biology_section(
    raw: pd.DataFrame,
    sites: pd.Series | None,
    raw_keys: Mapping[str, pd.Series],
    harm_keys: Mapping[str, pd.Series],
    renderer: figures.FigureRenderer,
) -> Section:
    title = "Biology kept: age curves"
    if "age" not in raw or "sex" not in raw or not raw_keys:
        missing = [c for c in ("age", "sex") if c not in raw] or ["key structures"]
        return Section("biology", title, note(f"Cannot draw age curves: missing {missing}."))
    sex = raw["sex"].astype(str).str.upper()
    site_v = sites if sites is not None else pd.Series("all", index=raw.index)
    body = (
        "<p>Volume against age per sex, coloured by site, with a quadratic trend (black). "
        "Harmonization should remove site offsets while keeping the age trend and the sex "
        "difference.</p>"
        + renderer.img(
            figures.age_curves(dict(raw_keys), dict(harm_keys), raw["age"], sex, site_v),
            "Age curves of key structures per sex, raw and harmonized",
        )
    )
    return Section("biology", title, body)


def _quality_section(
    raw: pd.DataFrame,
    harmonized: pd.DataFrame,
    model: Any,
    failed: pd.DataFrame | None,
    drift: Any,
    renderer: figures.FigureRenderer,
) -> Section:
    parts: list[str] = []
    if drift is not None:
        parts.append("<h3>IQM drift</h3>")
        css = "bad" if drift.shifted else "ok"
        parts.append(f'<p class="{css}">{esc(drift.message())}</p>')
    iqm_range = dict(getattr(model, "iqm_range_", None) or {})
    iqms = [n for n in (getattr(model, "iqms_", None) or list(iqm_range)) if n in iqm_range]
    prefixed = {n: f"iqm_{n}" for n in iqms if n not in raw and f"iqm_{n}" in raw}
    shown = raw.rename(columns={v: k for k, v in prefixed.items()})
    present = [n for n in iqms if n in shown]
    if present:
        parts.append(
            "<p>Where this dataset's MRIQC image quality metrics fall in the range seen in the "
            "model's training data: one row per IQM, darker = more scans; the green lines are "
            "the training minimum (0) and maximum (1); each label counts the scans outside.</p>"
        )
        parts.append(
            renderer.img(
                figures.iqm_distributions(shown, iqm_range, present),
                "IQM distributions against the model's training range",
            )
        )
    else:
        parts.append(note("No IQM of the model's feature set is present in the table."))

    parts.append("<h3>Out-of-range scans</h3>")
    oor = pd.to_numeric(
        harmonized.get("nh_out_of_range", pd.Series(0, index=harmonized.index)), errors="coerce"
    )
    status = harmonized.get("nh_status", pd.Series("", index=harmonized.index)).astype(str)
    flagged = harmonized[(oor == 1) | (status == "unharmonized")]
    if len(flagged):
        cols = [
            c
            for c in (
                "participant_id",
                "session_id",
                "site",
                "nh_status",
                "nh_confidence",
                "nh_out_of_range_features",
            )
            if c in flagged
        ]
        parts.append(
            "<p>These scans lie outside the training distribution in the listed features "
            "(IQMs, age or eTIV). Their correction was shrunk (<code>nh_confidence</code> &lt; 1) "
            "or not applied (<code>nh_status = unharmonized</code>).</p>"
        )
        parts.append(
            table(
                flagged[cols].itertuples(index=False, name=None),
                cols,
                flags=list(flagged["nh_status"].astype(str) == "unharmonized")
                if "nh_status" in flagged
                else None,
            )
        )
    else:
        parts.append('<p class="ok">No scan is outside the training range.</p>')

    parts.append("<h3>Failed scans</h3>")
    if failed is not None and len(failed):
        cols = [c for c in ("participant_id", "session_id", "reason") if c in failed]
        parts.append(table(failed[cols].itertuples(index=False, name=None), cols))
    else:
        parts.append('<p class="ok">No scan failed.</p>')
    return Section("quality", "Quality: IQMs, out-of-range and failed scans", "\n".join(parts))


def _uncertainty_section(model: Any, sites: pd.Series | None) -> Section:
    """Per scanner: how sure its correction is, and how many more scans would halve that."""
    title = "How sure the corrections are, per scanner"
    if sites is None or not hasattr(model, "scanner_uncertainty"):
        return Section("uncertainty", title, note("No site labels: cannot group scans by scanner."))
    rows = []
    single = model.scanner_uncertainty(1)
    for site, n in sites.value_counts().sort_index().items():
        joint = model.scanner_uncertainty(int(n))
        more = model.scans_to_halve(int(n))
        rows.append(
            (
                site,
                int(n),
                float(single["sd_pct"].median()),
                float(joint["sd_pct"].median()),
                float(joint["sd_mm3"].median()),
                "more than 100,000" if more is None else more,
            )
        )
    body = [
        "<p>The posterior SD of each scanner's correction (median over regions, in % of the "
        "region's reference volume and in mm³). A scan harmonized on its own carries the "
        "single-scan uncertainty; the scans of one scanner harmonized together "
        "(<code>group_desc-jointharmonized_morph.tsv</code>) carry the joint one, which "
        "shrinks as the scanner contributes more scans. The last column is how many more scans "
        "of that scanner would halve it.</p>",
        table(
            rows,
            (
                "scanner",
                "scans",
                "SD single scan (%)",
                "SD joint (%)",
                "SD joint (mm³)",
                "more scans to halve the joint SD",
            ),
        ),
    ]
    return Section("uncertainty", title, "\n".join(body))


@threadpool_limits.wrap(limits=1, user_api="blas")  # small matrices: threads only cost (metrics)
def build_group_report(
    raw: pd.DataFrame,
    harmonized: pd.DataFrame,
    model: Any,
    failed: pd.DataFrame | None = None,
    model_info: Mapping[str, Any] | None = None,
    drift: Any = None,
    nprocs: int = 1,
) -> str:
    """The group report as one self-contained HTML string.

    ``drift``: a :class:`~neuroharmony_bids.harmonize.drift.DriftReport` for this dataset.
    ``nprocs`` > 1: figures are drawn in that many forked processes while the rest of the
    report is built (the same bytes; figures.FigureRenderer).
    """
    renderer = figures.FigureRenderer(workers=nprocs if nprocs > 1 else 0)
    raw, harmonized = _align(raw, harmonized)
    regions = shown_regions(raw, harmonized, model)
    sites, site_source = shown_sites(raw)
    if sites is None:
        sites, site_source = shown_sites(harmonized)
    model_regions = {canonical_region(r) for r in (getattr(model, "regions_", None) or [])}
    use_total = "TotalGrayVol" in model_regions or (
        "TotalGrayVol" in raw
        and "TotalGrayVol" in harmonized
        and not np.allclose(
            pd.to_numeric(raw["TotalGrayVol"], errors="coerce"),
            pd.to_numeric(harmonized["TotalGrayVol"], errors="coerce"),
            equal_nan=True,
        )
    )
    raw_keys = figures.key_region_series(raw, prefer_total_gray=use_total)
    harm_keys = figures.key_region_series(harmonized, prefer_total_gray=use_total)
    sections = [
        _summary_section(raw, harmonized, failed, sites, site_source, regions),
        _site_section(raw, harmonized, regions, sites, site_source, raw_keys, harm_keys, renderer),
        _biology_section(raw, sites, raw_keys, harm_keys, renderer),
        _quality_section(raw, harmonized, model, failed, drift, renderer),
        _uncertainty_section(model, sites),
        model_section(model, model_info),
    ]
    page = render(
        "Neuroharmony group report",
        f"{len(raw)} scans · {len(regions)} regions · site from {site_source}",
        sections,
    )
    return renderer.fill(page)


def write_group_report(
    path: str | os.PathLike,
    raw: pd.DataFrame,
    harmonized: pd.DataFrame,
    model: Any,
    failed: pd.DataFrame | None = None,
    model_info: Mapping[str, Any] | None = None,
    drift: Any = None,
    nprocs: int = 1,
) -> Path:
    """Write the group report HTML atomically (a reader never sees a half-written report)."""
    html = build_group_report(raw, harmonized, model, failed, model_info, drift, nprocs=nprocs)
    return write_text(path, html)


__all__ = ["build_group_report", "esc", "shown_sites", "write_group_report"]
