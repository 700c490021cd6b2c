"""The input BIDS dataset and the output derivatives folder, through pybids.

- :mod:`.layout`: which T1w scans, their entities, paths and scanner metadata;
- :mod:`.covariates`: age, sex (and e.g. site) from participants.tsv / sessions.tsv;
- :mod:`.validate`: ``bids-validator-deno``;
- :mod:`.derivatives`: output names, sidecars, dataset_description, TSV formatting;
- :mod:`.failures`: the failure log read back by the group level.
"""

from neuroharmony_bids.bids.covariates import Covariates, read_covariates
from neuroharmony_bids.bids.layout import (
    SCANNER_FIELDS,
    Scan,
    find_scans,
    freesurfer_subject_candidates,
    load_layout,
    scanner_metadata,
    sidecar_metadata,
)
from neuroharmony_bids.bids.validate import validate_dataset

__all__ = [
    "SCANNER_FIELDS",
    "Covariates",
    "Scan",
    "find_scans",
    "freesurfer_subject_candidates",
    "load_layout",
    "read_covariates",
    "scanner_metadata",
    "sidecar_metadata",
    "validate_dataset",
]
