"""The one table-level entry point used by the tabular CLI and the BIDS App."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import pandas as pd

from neuroharmony_bids.harmonize.model import NeuroHarmonizer, ValidRows


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


def harmonize_valid_rows(
    table: pd.DataFrame,
    model: NeuroHarmonizer,
    *,
    site_column: str | None = None,
    person_column: str | None = None,
    return_sd: bool = False,
    sex_mapping: Mapping[str, str] | None = None,
) -> ValidRows:
    """:func:`harmonize_table` for a batch caller: the valid rows harmonized, the others set
    aside with their reasons, from one validation pass (see
    :meth:`NeuroHarmonizer.transform_valid`). On the joint path (``site_column``) a refused
    row is left out of its site's estimate."""
    return model.transform_valid(
        table, site_column=site_column, sex_mapping=sex_mapping, return_sd=return_sd,
        person_column=person_column,
    )  # fmt: skip


def invalid_rows(
    table: pd.DataFrame, model: NeuroHarmonizer, sex_mapping: Mapping[str, str] | None = None
) -> dict[int, str]:
    """Rows :func:`harmonize_table` would refuse, all at once: {0-based row: reason}.

    A check without harmonizing; a caller that harmonizes the rest anyway uses
    :func:`harmonize_valid_rows` (one pass instead of two).
    """
    return model.invalid_rows(table, sex_mapping=sex_mapping)
