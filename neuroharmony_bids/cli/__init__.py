"""Command-line entry points: the BIDS App (``neuroharmony-bids``) and its parser."""
