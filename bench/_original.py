"""A faithful, lean reimplementation of the original Neuroharmony (Garcia-Dias et al. 2020).

What the original code (``neuroharmony/models/harmonization.py``, v0.x) does, and what we keep:

1. ComBat (neuroCombat) on the training scans with ``batch = scanner`` and *no* protected
   covariates: the original passes age and sex in ``covars`` but names none of them as
   categorical/continuous, so neuroCombat's design holds the batch only. Kept.
2. Targets: per region, raw − ComBat-harmonized. Kept.
3. Per region, a scikit-learn Pipeline ``StandardScaler → PCA → RandomForestRegressor`` on the
   regression features plus that region's raw volume. Regression features: every MRIQC IQM
   (the original took all numeric MRIQC columns) plus age and sex, as in its pretrained model.
   Kept.
4. PCA size: the original fits a scaler + full PCA on the first region's features and keeps
   components up to and including the first whose explained-variance ratio is below 1 %; the
   value is then stored in ``param_distributions`` and reused for every region. Kept, quirk
   included.
5. Prediction: harmonized = raw − predicted correction. Kept.

Deviations (cost, not science), stated in bench/README.md:

- The original tunes each region's forest with ``RandomizedSearchCV`` over
  ``n_estimators ∈ {100, 200, 500}``, ``criterion ∈ {mse, mae}``, ``warm_start`` under
  leave-one-scanner-out CV (10 candidates × 16 folds × 101 regions per held-out site). We fix
  ``n_estimators`` (default 100, the grid's smallest) and ``criterion = squared_error``:
  ``absolute_error`` is orders of magnitude slower in scikit-learn and the grid allowed mse.
  Forests of 100 vs 500 trees differ by Monte-Carlo noise, not by bias.
- The original example drops training subjects whose integer age is unique (a guard of its
  ComBat wrapper against single-subject covariate groups); with batch-only ComBat that guard
  has no effect on the model and is skipped.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from _common import combat, iqm_columns
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler


class OriginalNeuroharmony:
    """Per-region PCA + random forest predicting ComBat's correction from IQMs (baseline)."""

    def __init__(
        self,
        regions: list[str],
        n_estimators: int = 100,
        pca_threshold: float = 0.01,
        random_state: int = 42,
        n_jobs: int = 1,
    ) -> None:
        self.regions = regions
        self.n_estimators = n_estimators
        self.pca_threshold = pca_threshold
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _features(self, df: pd.DataFrame, region: str) -> np.ndarray:
        sex = (df["sex"] == "M").to_numpy(dtype=float)  # LabelEncoder order: F=0, M=1
        return np.column_stack(
            [df[self.iqms_].to_numpy(float), df["age"].to_numpy(float), sex, df[region]]
        )

    def _n_components(self, x: np.ndarray) -> int:
        z = StandardScaler().fit_transform(x)
        evr = PCA(n_components=x.shape[1]).fit(z).explained_variance_ratio_
        below = np.flatnonzero(evr < self.pca_threshold)
        return int(below[0] + 1) if len(below) else x.shape[1]

    def fit(self, df: pd.DataFrame, site_column: str = "site") -> OriginalNeuroharmony:
        """ComBat (batch only) on the training scans, then one forest per region."""
        self.iqms_ = iqm_columns(df)
        vol = df[self.regions]
        harmonized = combat(vol, df[site_column].to_numpy(), None)
        delta = vol.to_numpy(float) - harmonized.to_numpy(float)
        self.n_components_ = self._n_components(self._features(df, self.regions[0]))
        self.models_ = {}
        for j, region in enumerate(self.regions):
            pipe = Pipeline(
                [
                    ("StandardScaler", StandardScaler()),
                    ("PCA", PCA(n_components=self.n_components_)),
                    (
                        "RandomForestRegressor",
                        RandomForestRegressor(
                            n_estimators=self.n_estimators,
                            random_state=self.random_state,
                            n_jobs=self.n_jobs,
                        ),
                    ),
                ]
            )
            self.models_[region] = pipe.fit(self._features(df, region), delta[:, j])
        return self

    def transform(self, df: pd.DataFrame) -> pd.DataFrame:
        """raw − predicted correction, per region."""
        out = pd.DataFrame(index=df.index, columns=self.regions, dtype=float)
        for region in self.regions:
            corr = self.models_[region].predict(self._features(df, region))
            out[region] = df[region].to_numpy(float) - corr
        return out
