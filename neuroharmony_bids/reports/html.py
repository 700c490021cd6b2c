"""Small HTML helpers shared by the group and participant reports (stdlib only, no Jinja)."""

from __future__ import annotations

import datetime as _dt
import html
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import Any

import numpy as np
import pandas as pd

from neuroharmony_bids._version import __version__


@dataclass(frozen=True)
class Section:
    """One report section: anchor id, heading, and already-escaped HTML body."""

    id: str
    heading: str
    body: str


def esc(value: Any) -> str:
    """Escape any value for HTML text."""
    return html.escape("" if value is None else str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """Human-readable number (significant digits) or escaped text; missing → 'n/a'."""
    if value is None:
        return "n/a"
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "n/a"
        return f"{value:.{digits}g}"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    try:
        if pd.isna(value):
            return "n/a"
    except (TypeError, ValueError):
        pass
    return esc(value)


def note(text: str) -> str:
    """A highlighted explanatory note (text is escaped)."""
    return f'<p class="note">{esc(text)}</p>'


def _cell(value: Any) -> str:
    num = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    return f'<td class="num">{fmt(value)}</td>' if num else f"<td>{fmt(value)}</td>"


def table(
    rows: Iterable[Sequence[Any]],
    header: Sequence[str],
    flags: Sequence[bool] | None = None,
    caption: str | None = None,
) -> str:
    """An HTML table; numbers right-aligned, rows with a true flag highlighted."""
    out = ["<table>"]
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    if any(header):
        out.append("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>")
    out.append("<tbody>")
    for i, row in enumerate(rows):
        cls = ' class="flag"' if flags is not None and flags[i] else ""
        out.append(f"<tr{cls}>" + "".join(_cell(v) for v in row) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def key_values(pairs: Mapping[str, Any]) -> str:
    """A two-column table of labels (as header cells) and values."""
    rows = "".join(f"<tr><th>{esc(k)}</th>{_cell(v)}</tr>" for k, v in pairs.items())
    return f"<table>{rows}</table>"


def generated_stamp() -> str:
    """`` on <date>`` from ``SOURCE_DATE_EPOCH`` when it is set, else nothing: a report is an
    output, so the same inputs give the same bytes; the run's time is in ``logs/``."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not epoch.isdigit():
        return ""
    when = _dt.datetime.fromtimestamp(int(epoch), tz=_dt.timezone.utc)
    return when.strftime(" on %Y-%m-%d %H:%M UTC")


def render(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """Fill the packaged template with a navigation bar and the sections."""
    template = Template(
        resources.files("neuroharmony_bids.reports")
        .joinpath("templates", "report.html")
        .read_text(encoding="utf-8")
    )
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.heading)}</a>' for s in sections)
    body = "\n".join(
        f'<section id="{esc(s.id)}">\n<h2>{esc(s.heading)}</h2>\n{s.body}\n</section>'
        for s in sections
    )
    return template.substitute(
        title=esc(title),
        subtitle=esc(subtitle),
        nav=nav,
        body=body,
        version=esc(__version__),
        generated=esc(generated_stamp()),
    )
