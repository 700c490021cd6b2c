"""Report figures: matplotlib (Agg, no pyplot state) rendered to embedded base64 PNG.

Reports must open anywhere without the output folder beside them, so every figure is
embedded in the HTML as a ``data:`` URI rather than written as a separate file.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless clusters and containers have no display

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from neuroharmony_bids.harmonize.features import (  # noqa: E402
    DK_REGIONS,
    canonical_region,
)

#: Colour-blind-safe qualitative palette (Okabe-Ito) for sites.
PALETTE = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
]  # fmt: skip
RAW_COLOUR = "#999999"
HARM_COLOUR = "#0072B2"
SEX_COLOURS = {"M": "#0072B2", "F": "#D55E00"}

#: Key bilateral structures for box plots and age curves (canonical FreeSurfer 7 names).
KEY_STRUCTURES: dict[str, list[str]] = {
    "Hippocampus": ["Left-Hippocampus", "Right-Hippocampus"],
    "Thalamus": ["Left-Thalamus", "Right-Thalamus"],
    "Lateral ventricles": ["Left-Lateral-Ventricle", "Right-Lateral-Ventricle"],
}


def new_figure(width: float, height: float) -> Figure:
    """A figure not registered with pyplot, so reports never leak global state or memory.

    Margins are set in inches by :func:`margins` rather than by constrained layout, which
    took most of the report's run time on figures with a hundred tick labels.
    """
    return Figure(figsize=(width, height), dpi=100)


def margins(
    fig: Figure,
    nrows: int,
    ncols: int,
    left: float,
    right: float,
    top: float,
    bottom: float,
    hgap: float = 0.0,
    wgap: float = 0.0,
) -> None:
    """Place an ``nrows`` × ``ncols`` grid with margins and gaps given in inches."""
    width, height = fig.get_size_inches()
    ax_h = max((height - top - bottom - hgap * (nrows - 1)) / nrows, 0.1)
    ax_w = max((width - left - right - wgap * (ncols - 1)) / ncols, 0.1)
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        top=1 - top / height,
        bottom=bottom / height,
        hspace=hgap / ax_h,
        wspace=wgap / ax_w,
    )


def _longest(labels: Sequence[object]) -> int:
    return max((len(str(x)) for x in labels), default=1)


def _png(fig: Figure, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<img class="figure" alt="{html.escape(alt, quote=True)}" '
        f'src="data:image/png;base64,{data}">'
    )


#: Seconds to wait for a child's figure before drawing it in this process (a figure of 5,000
#: scans takes about a second; a stuck child should not hold the report for long).
_CHILD_TIMEOUT = 120.0


def _render_child(fig: Figure, conn: Any) -> None:
    """In a forked child: the figure's PNG (or the error) back through the pipe."""
    import gc

    # the collector would walk (and so copy, page by page) every object inherited from the
    # parent; the child lives for one figure
    gc.freeze()
    try:
        conn.send((True, _png(fig)))
    except BaseException as exc:  # the parent renders it itself
        conn.send((False, repr(exc)))
    finally:
        conn.close()


class FigureRenderer:
    """Renders a report's figures to ``<img>`` tags, each in a forked child process while the
    caller goes on building the rest of the report.

    Drawing and PNG-encoding a figure of thousands of points is most of a group report's time
    and is single-threaded in matplotlib (threads gain nothing: it holds the GIL). A forked
    child shares the built figure without pickling it; the PNG bytes are the same as drawn
    in-process. :meth:`img` returns a placeholder (an HTML comment) for the figure, and
    :meth:`fill` puts the images in place. With ``workers=0``, or where ``fork`` is not the
    safe default (macOS, Windows), or if a child fails, figures are drawn in this process.
    """

    def __init__(self, workers: int = 0) -> None:
        import multiprocessing as mp

        from neuroharmony_bids.forking import can_fork

        self.workers = max(int(workers), 0) if can_fork() else 0
        self._context = mp.get_context("fork") if self.workers else None
        self._figures: list[tuple[Figure, str]] = []
        self._running: dict[int, tuple[Any, Any]] = {}
        self._png: dict[int, bytes] = {}

    def img(self, fig: Figure, alt: str) -> str:
        """A placeholder for ``fig``'s ``<img>`` tag; its drawing starts now (in a child)."""
        key = len(self._figures)
        self._figures.append((fig, alt))
        if self._context is not None:
            while len(self._running) >= self.workers:
                self._collect(min(self._running))
            receive, send = self._context.Pipe(duplex=False)
            child = self._context.Process(target=_render_child, args=(fig, send), daemon=True)
            child.start()
            send.close()
            self._running[key] = (child, receive)
        return self._token(key)

    def _collect(self, key: int) -> None:
        child, receive = self._running.pop(key)
        ok, payload = False, None
        try:
            if receive.poll(_CHILD_TIMEOUT):  # a stuck child: drawn here instead
                ok, payload = receive.recv()
        except (EOFError, OSError):
            pass
        finally:
            receive.close()
            child.join(1.0)
            if child.is_alive():
                child.kill()
                child.join()
        if ok:
            self._png[key] = payload

    @staticmethod
    def _token(key: int) -> str:
        return f"<!--neuroharmony-figure-{key}-->"

    def fill(self, text: str) -> str:
        """``text`` with every placeholder replaced by its figure's ``<img>`` tag."""
        for key in sorted(self._running):
            self._collect(key)
        for key, (fig, alt) in enumerate(self._figures):
            png = self._png.get(key) or _png(fig)
            text = text.replace(self._token(key), _img(png, alt), 1)
        return text


def canonical_lookup(columns: Sequence[str]) -> dict[str, str]:
    """Map canonical region name → the column name as spelled in the table (FS6 or FS7)."""
    return {canonical_region(str(c)): str(c) for c in columns}


def key_region_series(table: pd.DataFrame, prefer_total_gray: bool = True) -> dict[str, pd.Series]:
    """Bilateral sums of the key structures present in ``table``, plus total grey matter.

    Total grey matter is ``TotalGrayVol`` when ``prefer_total_gray`` (the caller checks it was
    harmonized); otherwise the sum of the 68 Desikan-Killiany cortical volumes.
    """
    lookup = canonical_lookup(table.columns)
    out: dict[str, pd.Series] = {}
    for label, parts in KEY_STRUCTURES.items():
        cols = [lookup[p] for p in parts if p in lookup]
        if len(cols) == len(parts):
            out[label] = table[cols].apply(pd.to_numeric, errors="coerce").sum(axis=1, min_count=1)
    if prefer_total_gray and "TotalGrayVol" in lookup:
        out["Total grey matter"] = pd.to_numeric(table[lookup["TotalGrayVol"]], errors="coerce")
    else:
        dk = [lookup[r] for r in DK_REGIONS if r in lookup]
        if len(dk) == len(DK_REGIONS):
            out["Cortical grey matter (Σ 68 DK)"] = (
                table[dk].apply(pd.to_numeric, errors="coerce").sum(axis=1, min_count=len(dk))
            )
    return out


def _covariate_matrix(table: pd.DataFrame) -> np.ndarray:
    """Intercept, age, age², sex: the biology removed before showing site means."""
    cols = [np.ones(len(table))]
    if "age" in table:
        age = pd.to_numeric(table["age"], errors="coerce").to_numpy(float)
        if np.isfinite(age).all() and np.nanstd(age) > 0:
            centred = (age - age.mean()) / age.std()
            cols += [centred, centred**2]
    if "sex" in table:
        sex = (table["sex"].astype(str).str.upper() == "M").to_numpy(float)
        if 0 < sex.sum() < len(sex):
            cols.append(sex)
    return np.column_stack(cols)


def site_mean_z(table: pd.DataFrame, regions: Sequence[str], sites: pd.Series) -> pd.DataFrame:
    """Per-site mean of each region's z-scored residual after age, age² and sex.

    This is a picture, not a test: it shows where and how strongly sites differ, with the
    cohort's age/sex mix removed so that an older site does not look like a scanner effect.
    """
    x = _covariate_matrix(table)
    values = table[list(regions)].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    z = np.full_like(values, np.nan)
    finite = np.isfinite(values)
    complete = finite.all(axis=0)  # regions without a gap: one least-squares solve for all
    groups = [(np.flatnonzero(complete), np.ones(len(values), dtype=bool))]
    groups += [(np.array([j]), finite[:, j]) for j in np.flatnonzero(~complete)]
    for cols, ok in groups:
        if not len(cols) or ok.sum() <= x.shape[1]:
            continue
        y = values[:, cols]
        beta, *_ = np.linalg.lstsq(x[ok], y[ok], rcond=None)
        resid = y - x @ beta
        sd = np.nanstd(resid[ok], axis=0, ddof=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            z[:, cols] = np.where(sd > 0, resid / sd, np.nan)
    frame = pd.DataFrame(z, columns=list(regions), index=table.index)
    return frame.groupby(sites.to_numpy()).mean()


def short_region(name: str) -> str:
    """Compact label for crowded axes: ``lh_superiorfrontal_volume`` → ``lh superiorfrontal``."""
    name = name.replace("_volume", "").replace("_", " ")
    return name.replace("Left-", "L ").replace("Right-", "R ")


def site_heatmap(raw_z: pd.DataFrame, harm_z: pd.DataFrame) -> Figure:
    """Two stacked heatmaps (raw, harmonized) of site-mean z-scores on one colour scale."""
    n_sites, n_regions = raw_z.shape
    lim = float(np.nanmax(np.abs(np.concatenate([raw_z.to_numpy(), harm_z.to_numpy()]))))
    lim = max(lim, 0.1) if np.isfinite(lim) else 1.0
    labels = [short_region(r) for r in raw_z.columns]
    left = 0.3 + 0.06 * _longest(raw_z.index)
    bottom = 0.3 + 0.045 * _longest(labels)
    height = bottom + 0.35 + 0.4 + 2 * (0.22 * n_sites + 0.3)
    fig = new_figure(max(8.0, 0.11 * n_regions + left + 1.3), height)
    axes = fig.subplots(2, 1, sharex=True)
    margins(fig, 2, 1, left=left, right=1.3, top=0.3, bottom=bottom, hgap=0.4)
    for ax, frame, title in zip(axes, (raw_z, harm_z), ("Raw", "Harmonized"), strict=True):
        im = ax.imshow(frame.to_numpy(), aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_yticks(range(n_sites), [str(s) for s in frame.index], fontsize=7)
        ax.set_title(f"{title}: site mean of age/sex-adjusted z-score", fontsize=9, loc="left")
    axes[1].set_xticks(range(n_regions), labels, rotation=90, fontsize=5)
    width, _ = fig.get_size_inches()
    top, low = axes[0].get_position().y1, axes[1].get_position().y0
    cax = fig.add_axes((1 - 1.0 / width, low, 0.15 / width, top - low))
    fig.colorbar(im, cax=cax, label="site mean z")
    return fig


def _site_colours(sites: Sequence[str]) -> dict[str, str]:
    return {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(sites)}


def key_region_boxplots(
    raw: dict[str, pd.Series], harm: dict[str, pd.Series], sites: pd.Series
) -> Figure:
    """Box plot per site of each key structure, raw (grey) beside harmonized (blue)."""
    labels = [k for k in raw if k in harm]
    order = sorted(pd.unique(sites.astype(str)))
    nrows = max(len(labels), 1)
    tick_space = 0.25 + 0.05 * _longest(order)
    fig = new_figure(max(7.0, 0.55 * len(order) + 3), nrows * (1.9 + tick_space) + 0.3)
    axes = np.atleast_1d(fig.subplots(nrows, 1, squeeze=False)[:, 0])
    margins(fig, nrows, 1, left=0.9, right=0.2, top=0.3, bottom=tick_space, hgap=tick_space + 0.3)
    pos = np.arange(len(order), dtype=float)
    site_v = sites.astype(str).to_numpy()
    for ax, label in zip(axes, labels, strict=False):
        for shift, series, colour in (
            (-0.2, raw[label], RAW_COLOUR),
            (0.2, harm[label], HARM_COLOUR),
        ):
            data = [series[site_v == s].dropna().to_numpy() for s in order]
            keep = [i for i, d in enumerate(data) if len(d)]
            bp = ax.boxplot(
                [data[i] for i in keep],
                positions=pos[keep] + shift,
                widths=0.35,
                patch_artist=True,
                showfliers=True,
                flierprops={"markersize": 2},
            )
            for box in bp["boxes"]:
                box.set_facecolor(colour)
                box.set_alpha(0.7)
        ax.set_xticks(pos, order, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("mm³", fontsize=8)
        ax.set_title(label, fontsize=9, loc="left")
        ax.tick_params(axis="y", labelsize=7)
    from matplotlib.patches import Patch

    axes[0].legend(
        handles=[
            Patch(color=RAW_COLOUR, label="raw"),
            Patch(color=HARM_COLOUR, label="harmonized"),
        ],
        fontsize=7,
        loc="upper right",
    )
    return fig


def _smooth_curve(age: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Quadratic fit over the observed age span (enough points only): a readable trend line."""
    ok = np.isfinite(age) & np.isfinite(y)
    if ok.sum() < 6 or np.ptp(age[ok]) <= 0:
        return None
    coef = np.polyfit(age[ok], y[ok], 2 if ok.sum() >= 10 else 1)
    grid = np.linspace(age[ok].min(), age[ok].max(), 50)
    return grid, np.polyval(coef, grid)


def age_curves(
    raw: dict[str, pd.Series],
    harm: dict[str, pd.Series],
    age: pd.Series,
    sex: pd.Series,
    sites: pd.Series,
) -> Figure:
    """Volume against age for each key structure: rows structures, columns raw/harmonized × sex."""
    labels = [k for k in raw if k in harm]
    sexes = [s for s in ("F", "M") if (sex == s).any()]
    order = sorted(pd.unique(sites.astype(str)))
    colours = _site_colours(order)
    ncols = 2 * max(len(sexes), 1)
    nrows = max(len(labels), 1)
    fig = new_figure(3.0 * ncols + 0.6, 2.2 * nrows + 1.2)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    margins(fig, nrows, ncols, left=0.95, right=0.15, top=0.35, bottom=0.95, hgap=0.3, wgap=0.55)
    age_v = pd.to_numeric(age, errors="coerce").to_numpy(float)
    site_v = sites.astype(str).to_numpy()
    point_colour = np.array([colours[s] for s in site_v], dtype=object)
    for i, label in enumerate(labels):
        ylim = [np.inf, -np.inf]
        for k, s in enumerate(sexes):
            for c, (stage, series) in enumerate((("raw", raw[label]), ("harmonized", harm[label]))):
                ax = axes[i, 2 * k + c]
                m = sex.to_numpy() == s
                y = series.to_numpy(float)
                # one scatter per panel, coloured per point (a call per site was most of the
                # figure's time at 20 sites)
                ax.scatter(age_v[m], y[m], s=8, c=list(point_colour[m]), alpha=0.7, lw=0)
                curve = _smooth_curve(age_v[m], y[m])
                if curve is not None:
                    ax.plot(*curve, color="black", lw=1.2)
                if i == 0:
                    ax.set_title(f"{'female' if s == 'F' else 'male'} · {stage}", fontsize=9)
                if k == 0 and c == 0:
                    ax.set_ylabel(f"{label} (mm³)", fontsize=8)
                ax.tick_params(labelsize=7)
                if np.isfinite(y[m]).any():
                    ylim = [min(ylim[0], np.nanmin(y[m])), max(ylim[1], np.nanmax(y[m]))]
        if np.isfinite(ylim).all() and ylim[1] > ylim[0]:
            pad = 0.05 * (ylim[1] - ylim[0])
            for ax in axes[i]:
                ax.set_ylim(ylim[0] - pad, ylim[1] + pad)
    for ax in axes[-1]:
        ax.set_xlabel("age (years)", fontsize=8)
    if order:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], marker="o", ls="", color=colours[s], label=s) for s in order[:16]]
        fig.legend(
            handles=handles,
            loc="lower center",
            ncols=min(len(handles), 8),
            fontsize=7,
            frameon=False,
        )
    return fig


def iqm_distributions(
    table: pd.DataFrame, iqm_range: dict[str, Sequence[float]], iqms: Sequence[str]
) -> Figure:
    """One heat strip per IQM: where this dataset's scans fall in the model's training range.

    Each row is a histogram of the scans' position in that IQM's training range (0 = min,
    1 = max, between the green lines); the outer bins also hold everything further out.
    One axes for all IQMs: a histogram axes per IQM took most of the group report's time.
    Row labels give the number of scans outside the range.
    """
    iqms = list(iqms)
    edges = np.linspace(-0.5, 1.5, 41)
    counts = np.zeros((max(len(iqms), 1), len(edges) - 1))
    labels = []
    for i, name in enumerate(iqms):
        values = pd.to_numeric(table[name], errors="coerce").dropna().to_numpy(float)
        low, high = (float(v) for v in iqm_range[name])
        width = high - low if high > low else 1.0
        pos = np.clip((values - low) / width, edges[0], edges[-1])
        counts[i] = np.histogram(pos, bins=edges)[0]
        labels.append(f"{name} ({int(((values < low) | (values > high)).sum())} out)")
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    left = 0.3 + 0.055 * _longest(labels)
    fig = new_figure(left + 7.0, 0.15 * len(counts) + 1.3)
    ax = fig.subplots()
    margins(fig, 1, 1, left=left, right=1.2, top=0.3, bottom=0.65)
    im = ax.imshow(
        share,
        aspect="auto",
        cmap="Blues",
        norm=PowerNorm(0.5, vmin=0.0, vmax=max(float(share.max()), 1e-9)),  # spread rows show
        extent=(edges[0], edges[-1], len(counts) - 0.5, -0.5),
        interpolation="nearest",
    )
    for x in (0.0, 1.0):
        ax.axvline(x, color="#009E73", lw=1.5)
    ax.set_yticks(range(len(labels)), labels, fontsize=6)
    ax.set_xlabel(
        "position in the model's training range (0 = min, 1 = max; outer bins: beyond)", fontsize=8
    )
    ax.tick_params(axis="x", labelsize=7)
    width, _ = fig.get_size_inches()
    pos = ax.get_position()
    cax = fig.add_axes((1 - 0.9 / width, pos.y0, 0.15 / width, pos.height))
    fig.colorbar(im, cax=cax, label="share of scans")
    return fig


# --------------------------------------------------------------------------- per-scan charts
#
# Per-scan reports are written once per scan, so their charts are drawn as plain SVG (a few
# milliseconds) rather than with matplotlib (about a second each for a hundred labelled rows).


@dataclass(frozen=True)
class DotSeries:
    """One set of markers on a dot-range chart."""

    label: str
    values: np.ndarray
    colour: str
    hollow: bool = False
    radius: float = 3.0


def dot_range_svg(
    labels: Sequence[str],
    series: Sequence[DotSeries],
    band: tuple[float, float],
    domain: tuple[float, float],
    ticks: Sequence[float],
    xlabel: str,
    band_label: str,
    flags: Sequence[bool] | None = None,
    connect: bool = False,
) -> str:
    """An SVG chart, one row per label, markers placed on a shared axis over a shaded band.

    Values beyond ``domain`` are drawn at its edge as triangles pointing outwards, so a far
    outlier stays visible without squashing every other row.
    """
    row_h, top, bottom, right = 13, 26, 40, 20
    left = 12 + 6 * max((len(str(x)) for x in labels), default=1)
    width = 760
    plot_w = width - left - right
    height = top + row_h * max(len(labels), 1) + bottom
    lo, hi = domain

    def x_of(v: float) -> float:
        return left + (min(max(v, lo), hi) - lo) / (hi - lo) * plot_w

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Arial, sans-serif" '
        'font-size="9">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
    ]
    y0, y1 = top - 4, top + row_h * len(labels)
    out.append(
        f'<rect x="{x_of(band[0]):.1f}" y="{y0}" width="{x_of(band[1]) - x_of(band[0]):.1f}" '
        f'height="{y1 - y0}" fill="#009E73" fill-opacity="0.15"/>'
    )
    for t in ticks:
        x = x_of(t)
        out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y1}" stroke="#ddd"/>')
        out.append(
            f'<text x="{x:.1f}" y="{y1 + 13}" text-anchor="middle">{html.escape(f"{t:g}")}</text>'
        )
    out.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{y1 + 28}" text-anchor="middle">'
        f"{html.escape(xlabel)}</text>"
    )
    for i, name in enumerate(labels):
        yc = top + row_h * i + row_h / 2 - 2
        if flags is not None and flags[i]:
            out.append(
                f'<rect x="0" y="{yc - row_h / 2:.1f}" width="{left - 4}" height="{row_h}" '
                'fill="#fde3d3"/>'
            )
        out.append(
            f'<text x="{left - 6}" y="{yc + 3:.1f}" text-anchor="end">{html.escape(str(name))}</text>'
        )
        if connect and len(series) >= 2:
            a, b = series[0].values[i], series[1].values[i]
            if np.isfinite(a) and np.isfinite(b):
                out.append(
                    f'<line x1="{x_of(a):.1f}" y1="{yc:.1f}" x2="{x_of(b):.1f}" y2="{yc:.1f}" '
                    f'stroke="{RAW_COLOUR}"/>'
                )
        for ser in series:
            v = ser.values[i]
            if not np.isfinite(v):
                continue
            x = x_of(v)
            fill = "none" if ser.hollow else ser.colour
            if v < lo or v > hi:
                d = -1 if v < lo else 1
                pts = f"{x + 5 * d:.1f},{yc:.1f} {x:.1f},{yc - 4:.1f} {x:.1f},{yc + 4:.1f}"
                out.append(f'<polygon points="{pts}" fill="{ser.colour}"/>')
            else:
                out.append(
                    f'<circle cx="{x:.1f}" cy="{yc:.1f}" r="{ser.radius}" fill="{fill}" '
                    f'stroke="{ser.colour}"/>'
                )
    legend = [(band_label, "#009E73", False, 0.3)] + [
        (ser.label, ser.colour, ser.hollow, 1.0) for ser in series
    ]
    x = left
    for text, colour, hollow, opacity in legend:
        out.append(
            f'<circle cx="{x + 4}" cy="10" r="4" fill="{"none" if hollow else colour}" '
            f'fill-opacity="{opacity}" stroke="{colour}"/>'
        )
        out.append(f'<text x="{x + 12}" y="13">{html.escape(text)}</text>')
        x += 24 + 6 * len(text)
    out.append("</svg>")
    return "".join(out)


def svg_to_img(svg: str, alt: str) -> str:
    """An ``<img>`` carrying the SVG inline as a data URI (counts as an image in browsers)."""
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return (
        f'<img class="figure" alt="{html.escape(alt, quote=True)}" '
        f'src="data:image/svg+xml;base64,{data}">'
    )


def range_position(values: np.ndarray, reference: pd.DataFrame) -> np.ndarray:
    """Position of each value in its reference range: −1 lower bound, 0 mean, +1 upper bound."""
    mean = reference["mean"].to_numpy(float)
    half_lo = mean - reference["lower"].to_numpy(float)
    half_hi = reference["upper"].to_numpy(float) - mean
    d = values - mean
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(
            d < 0,
            d / np.where(half_lo > 0, half_lo, np.nan),
            d / np.where(half_hi > 0, half_hi, np.nan),
        )


def participant_volumes(
    raw: pd.Series, harm: pd.Series, reference: pd.DataFrame, labels: Sequence[str]
) -> str:
    """SVG: each region's raw and harmonized volume on its age/sex-matched reference range.

    Volumes are shown as the position within the reference 95 % range (−1 = lower bound,
    0 = mean, +1 = upper bound) so that regions of very different sizes share one axis.
    """
    regions = list(reference.index)
    r = range_position(raw.reindex(regions).to_numpy(float), reference)
    h = range_position(harm.reindex(regions).to_numpy(float), reference)
    outside = ~((h >= -1) & (h <= 1))
    return dot_range_svg(
        [short_region(x) for x in labels],
        [
            DotSeries("raw", r, "#555555", hollow=True, radius=3.5),
            DotSeries("harmonized", h, HARM_COLOUR),
        ],
        band=(-1, 1),
        domain=(-3, 3),
        ticks=[-3, -2, -1, 0, 1, 2, 3],
        xlabel="position in the reference range (−1 lower 2.5 %, 0 mean, +1 upper 97.5 %)",
        band_label="reference 95 % range",
        flags=list(outside & np.isfinite(h)),
        connect=True,
    )


def participant_iqms(values: pd.Series, iqm_range: dict[str, Sequence[float]]) -> str:
    """SVG: each IQM's position in the training range (0 = min, 1 = max); outside in orange."""
    names = [n for n in values.index if n in iqm_range]
    lows = np.array([float(iqm_range[n][0]) for n in names])
    highs = np.array([float(iqm_range[n][1]) for n in names])
    v = pd.to_numeric(values.reindex(names), errors="coerce").to_numpy(float)
    width = np.where(highs > lows, highs - lows, 1.0)
    pos = (v - lows) / width
    outside = (v < lows) | (v > highs)
    return dot_range_svg(
        names,
        [
            DotSeries("in range", np.where(outside, np.nan, pos), HARM_COLOUR),
            DotSeries("out of range", np.where(outside, pos, np.nan), "#D55E00", radius=3.5),
        ],
        band=(0, 1),
        domain=(-0.5, 1.5),
        ticks=[-0.5, 0, 0.5, 1, 1.5],
        xlabel="position in the model's training range (0 = min, 1 = max)",
        band_label="training range",
        flags=list(outside),
    )
