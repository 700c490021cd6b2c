"""Self-contained HTML reports (group and participant) and citation boilerplate."""

from neuroharmony_bids.reports.citation import write_citation
from neuroharmony_bids.reports.group import write_group_report
from neuroharmony_bids.reports.participant import write_participant_report

__all__ = ["write_citation", "write_group_report", "write_participant_report"]
