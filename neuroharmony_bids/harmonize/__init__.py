"""Harmonization science: pure numerics on tables, no BIDS or Nipype here."""
