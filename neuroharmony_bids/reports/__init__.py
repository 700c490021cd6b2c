"""Self-contained HTML reports (group and participant) and citation boilerplate.

Imports are lazy so that ``python -m neuroharmony_bids.reports.citation`` and callers that
only need the citation do not pay for matplotlib.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "write_citation": "neuroharmony_bids.reports.citation",
    "write_group_report": "neuroharmony_bids.reports.group",
    "write_participant_report": "neuroharmony_bids.reports.participant",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        from importlib import import_module

        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
