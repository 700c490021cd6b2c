"""ComBat (through neuroCombat) with protected biological covariates, kept as reusable parameters.

neuroCombat harmonizes a fixed sample. To harmonize scans it has never seen we keep what defines
its reference space: the grand mean ``alpha``, covariate effects ``beta``, pooled scale ``sigma``
and each training site's standardized location ``gamma`` and scale ``delta``.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np
from neuroCombat import neuroCombat

from neuroharmony_bids.errors import DataError


@dataclass(frozen=True)
class ComBatFit:
    """The reference space of a ComBat fit (standardized units are per-region ``sigma``)."""

    sites: list[str]
    alpha: np.ndarray  # (R,) grand mean (site-size weighted)
    beta: np.ndarray  # (P, R) covariate effects, design without intercept
    sigma: np.ndarray  # (R,) pooled residual standard deviation
    gamma: np.ndarray  # (K, R) EB-adjusted site locations (standardized)
    delta: np.ndarray  # (K, R) EB-adjusted site scales (standardized)
    site_codes: np.ndarray  # (n,) index into ``sites`` per training row
    residuals: np.ndarray  # (n, R) standardized residuals after removing each site's gamma

    def reference_mean(self, design: np.ndarray) -> np.ndarray:
        """Expected volume on the reference scanner for covariates ``design`` (n, P)."""
        return self.alpha + design @ self.beta

    def standardize(self, volumes: np.ndarray, design: np.ndarray) -> np.ndarray:
        return (volumes - self.reference_mean(design)) / self.sigma

    def unstandardize(self, z: np.ndarray, design: np.ndarray) -> np.ndarray:
        return self.reference_mean(design) + z * self.sigma


def check_design(site_codes: np.ndarray, design: np.ndarray, names: list[str]) -> None:
    """Refuse a design where a covariate is confounded with site (ComBat would be singular)."""
    k = int(site_codes.max()) + 1
    onehot = np.eye(k)[site_codes]
    full = np.column_stack([onehot, design])
    rank = np.linalg.matrix_rank(full)
    if rank < full.shape[1]:
        for j, name in enumerate(names):
            sub = np.column_stack([onehot, design[:, j]])
            if np.linalg.matrix_rank(sub) < sub.shape[1]:
                raise DataError(
                    f"covariate {name!r} is confounded with site (it is constant within every "
                    "site or duplicates another covariate), so ComBat cannot tell site effects "
                    f"from {name!r}; drop it from --covariates or add sites where it varies"
                )
        raise DataError(
            "the covariates are collinear with site (singular ComBat design); "
            f"covariates: {', '.join(names)}. Remove redundant covariates"
        )


def fit_combat(
    volumes: np.ndarray,
    site_codes: np.ndarray,
    sites: list[str],
    design: np.ndarray,
    design_names: list[str] | None = None,
) -> tuple[ComBatFit, np.ndarray]:
    """Run neuroCombat with every design column protected; return the fit and harmonized data.

    ``design`` holds numeric covariates (dummies for categorical ones), without intercept.
    """
    import pandas as pd

    counts = np.bincount(site_codes, minlength=len(sites))
    if (counts < 2).any():
        lonely = [s for s, c in zip(sites, counts, strict=True) if c < 2]
        raise DataError(
            f"site(s) {', '.join(map(str, lonely))} have a single scan; ComBat needs at least two "
            "scans per site to estimate its scale. Merge them with a similar scanner or drop them"
        )
    check_design(site_codes, design, design_names or [f"x{j}" for j in range(design.shape[1])])
    names = [f"c{j}" for j in range(design.shape[1])]
    covars = pd.DataFrame(design, columns=names)
    covars.insert(0, "batch", site_codes)
    with contextlib.redirect_stdout(io.StringIO()):
        out = neuroCombat(
            dat=volumes.T.astype(float),
            covars=covars,
            batch_col="batch",
            continuous_cols=names,
        )
    est = out["estimates"]
    # neuroCombat exposes covariate effects only through mod.mean = design @ beta: recover beta.
    beta = np.linalg.lstsq(design, np.asarray(est["mod.mean"]).T, rcond=None)[0]
    alpha = np.asarray(est["stand.mean"])[:, 0]
    sigma = np.sqrt(np.asarray(est["var.pooled"])[:, 0])
    gamma = np.asarray(est["gamma.star"], dtype=float)
    delta = np.asarray(est["delta.star"], dtype=float)
    z = (volumes - alpha - design @ beta) / sigma
    residuals = z - gamma[site_codes]
    fit = ComBatFit(
        sites=list(sites),
        alpha=alpha,
        beta=beta,
        sigma=sigma,
        gamma=gamma,
        delta=delta,
        site_codes=np.asarray(site_codes),
        residuals=residuals,
    )
    return fit, np.asarray(out["data"]).T
