"""Helpers that build BIDS datasets with derivatives for tests, benchmarks and examples."""

from neuroharmony_bids.testing.fixtures import (
    FixtureDataset,
    abide_rows,
    build_bids_dataset,
    copy_rows_with,
    failed_parcellation,
    iqm_columns,
    tiny_t1w_bytes,
    volume_columns,
)

__all__ = [
    "FixtureDataset",
    "abide_rows",
    "build_bids_dataset",
    "copy_rows_with",
    "failed_parcellation",
    "iqm_columns",
    "tiny_t1w_bytes",
    "volume_columns",
]
