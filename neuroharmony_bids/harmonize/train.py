"""Training a harmonizer and validating it leave-one-site-out (kept out of ``fit``).

Used by ``neuroharmony train`` and by the BIDS App's group level ``--train``.

``fit`` learns the model; whether it is worth using on an unseen scanner is a separate,
slower question answered here by refitting it with each site held out (harmonize.loso).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from neuroharmony_bids.harmonize.loso import loso_figures
from neuroharmony_bids.harmonize.model import NeuroHarmonizer


def train(
    table: pd.DataFrame,
    site: str | Sequence = "site",
    *,
    covariates: Sequence[str] = (),
    sex_mapping: Mapping[str, str] | None = None,
    validate: bool = True,
    **params,
) -> NeuroHarmonizer:
    """Fit a :class:`NeuroHarmonizer` on ``table``; with ``validate`` also fill its LOSO figures.

    ``params`` are the estimator's other hyperparameters (e.g. ``profile_weight``). The
    figures go to ``cv_metrics_`` (saved with the model, shown by ``neuroharmony info`` and the
    model card).
    """
    table = table.reset_index(drop=True)
    model = NeuroHarmonizer(covariates=tuple(covariates), **params)
    model.fit(table, site, sex_mapping=sex_mapping)
    if validate:
        sites = NeuroHarmonizer._site_values(table, site)
        model.cv_metrics_ = loso_figures(model, table, sites, sex_mapping)
    return model


def train_on_labelled_sites(
    table: pd.DataFrame, site: str = "site", *, sex_mapping: Mapping[str, str] | None = None
) -> tuple[NeuroHarmonizer, pd.DataFrame]:
    """(validated model, the rows it was trained on): rows without a site are left out.

    ValueError when fewer than two sites remain (a site effect needs two to be estimated),
    naming the sites found; the caller says how to label more.
    """
    used = table[table[site].notna()].reset_index(drop=True)
    n_sites = used[site].nunique()
    if n_sites < 2:
        found = ", ".join(map(str, used[site].unique()[:5])) or "none"
        raise ValueError(f"needs scans from at least 2 sites; found {n_sites} ({found})")
    return train(used, site, sex_mapping=sex_mapping), used
