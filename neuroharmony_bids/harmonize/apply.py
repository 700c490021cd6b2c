"""The one table-level entry point used by the tabular CLI and the BIDS App."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import pandas as pd

from neuroharmony_bids.harmonize.model import NeuroHarmonizer


def harmonize_table(
    table: pd.DataFrame,
    model: NeuroHarmonizer,
    site_column: str | None = None,
    sex_mapping: Mapping[str, str] | None = None,
    profile_weight: float | None = None,
    person_column: str | None = None,
) -> pd.DataFrame:
    """Harmonize every scan in ``table`` (vectorized; see :meth:`NeuroHarmonizer.transform`).

    Region columns keep the user's FreeSurfer 6/7 spelling; unknown columns pass through; the
    ``nh_*`` flag columns are appended. With ``site_column``, scans sharing a site are
    harmonized jointly. ``profile_weight`` overrides the model's single-scan trade-off
    (anatomy kept vs site effect removed) without changing the model object passed in.
    ``person_column`` (e.g. participant_id): repeated scans of one person count once when a
    site's effect is estimated.
    """
    if profile_weight is not None:
        model = copy.copy(model).set_params(profile_weight=float(profile_weight))
    return model.transform(
        table, site_column=site_column, sex_mapping=sex_mapping, person_column=person_column
    )


def invalid_rows(
    table: pd.DataFrame, model: NeuroHarmonizer, sex_mapping: Mapping[str, str] | None = None
) -> dict[int, str]:
    """Rows :func:`harmonize_table` would refuse, all at once: {0-based row: reason}.

    Lets a batch caller set bad scans aside and harmonize the rest in one call.
    """
    return model.invalid_rows(table, sex_mapping=sex_mapping)
