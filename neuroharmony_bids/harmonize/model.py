"""The harmonizer: predict, for a scan from any scanner, the location/scale ComBat would remove.

Why not one regressor per region (the original Neuroharmony)? Seventeen training sites are too few
to learn a per-subject map from IQMs to corrections. This model works where the effect lives:

1. ComBat (neuroCombat) on the training sites, age, age², sex, eTIV and user covariates
   protected, gives a reference space and each site's standardized location ``gamma`` and scale.
2. An IQM prior maps a scan's IQMs (clipped to the training range: no extrapolation) to its
   site's location: a per-scan or a site-level ridge, whichever wins leave-one-site-out (LOSO).
   Its weight falls with the scan's worst single IQM distance from the training data; the
   fall-off is calibrated by LOSO.
3. The scan's own regional profile updates that prior with the Gaussian posterior
   ``gamma = mu + T (T + S/n)^-1 (mean z - mu)``, where ``T`` is the between-site covariance of
   site effects and ``S`` the within-site covariance of regional residuals. One scan gives the
   single-scan answer; n scans of one scanner approach ComBat fitted with that scanner (their
   scale is then estimated too, with an inverse-gamma prior from the training sites).
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd
from scipy.linalg import LinAlgWarning, eigh
from scipy.special import chdtrc
from sklearn.base import BaseEstimator
from sklearn.covariance import LedoitWolf
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import Ridge
from sklearn.model_selection import LeaveOneGroupOut
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import ThreadpoolController, threadpool_limits

from neuroharmony_bids.errors import DataError
from neuroharmony_bids.harmonize import features as F
from neuroharmony_bids.harmonize.combat import check_design, fit_combat
from neuroharmony_bids.harmonize.rowwise import (
    ROW_TILE,
    SMALL_TILE,
    lanes_matmul,
    lanes_quadratic,
    row_reduce,
)
from neuroharmony_bids.harmonize.table import (
    PreparedTable,
    RowReader,
    ScanFields,
    check_table,
    prepare,
    row_label,
    row_problems,
    unusable_volume_problem,
)

#: Optional per-row column naming the FreeSurfer version that produced the volumes.
FS_VERSION_COLUMN = "freesurfer_version"
AGE_CENTER = 20.0
ETIV_SCALE = 1e6
#: A regional profile is implausible (left raw) only if less likely than every training scan
#: and than this outlier level (chi-square, Bonferroni-style for ~1e5 scans × regions).
PROFILE_ALPHA = 1e-9
#: A single region further than this many standard deviations (site and person variation
#: together) from the training norm is flagged by name and left out of the profile update.
REGION_Z_LIMIT = 5.0
#: More than this share of regions flagged: the profile is broken as a whole (left raw).
MAX_FLAGGED_SHARE = 0.25
#: The IQM prior is used while at most this share of its IQMs is missing (NaN or MRIQC's -1);
#: with more missing, the scan is harmonized from its regional profile alone.
MAX_MISSING_IQM_SHARE = 0.25
PROFILE_UPDATES = ("cross_region", "own_region")
FLAG_COLUMNS = F.FLAG_COLUMNS
#: Rows harmonized at a time, at most. Single-scan rows are independent, so a chunk's
#: temporaries (rows × regions float arrays, 0.8 MiB each at 1,024 rows) stay cache-sized
#: whatever the table size: 1,024 rows cost a quarter less CPU than 4,096 at 100k scans. A
#: table of fewer than ``CHUNKS_PER_TABLE * CHUNK_ROWS`` rows goes in that many chunks (of at
#: least ``MIN_CHUNK_ROWS``), so the working memory stays small beside its output: 8, not 16,
#: because each chunk also costs a fixed overhead (Python-level steps, the threads' turns
#: at the GIL); the table CLI's 5,000-row blocks harmonize in ~30 % less time with 625-row
#: chunks than with 313, and 1,000 scans still go in 128-row chunks. The chunks
#: change no bit: a single scan's numbers are the same alone or in any batch (every product
#: runs in fixed-size row tiles: see ``harmonize.rowwise``).
CHUNK_ROWS = 1024
CHUNKS_PER_TABLE = 8
MIN_CHUNK_ROWS = 128
#: Threads harmonizing chunks at once (results do not depend on it: see ``_transform``).
APPLY_THREADS = min(2, os.cpu_count() or 1)
#: Gains kept per model (one per region set and flagged-region pattern, 80 kB each).
GAIN_CACHE_SIZE = 128


_CACHE_LOCK = threading.Lock()


@cache
def _blas_controller() -> ThreadpoolController:
    """The process's BLAS libraries, found once (a lookup costs ~1 ms; a limit then ~10 µs)."""
    return ThreadpoolController()


def iqm_transform(x: np.ndarray) -> np.ndarray:
    """Signed log: IQMs span orders of magnitude and MRIQC releases rescale some of them."""
    out = np.abs(x)
    np.log1p(out, out=out)
    return np.copysign(out, x, out=out)  # sign(x) * out, one pass (x = -0.0 gives -0.0)


def _ridge_fit(X: np.ndarray, Y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(coef, intercept) of the linear map ``x @ coef + intercept`` (scikit-learn's Ridge)."""
    with warnings.catch_warnings():
        # IQMs nearly constant in training have large robust z: the solve is exact enough
        warnings.simplefilter("ignore", LinAlgWarning)
        fit = Ridge(alpha=alpha, fit_intercept=True, solver="cholesky").fit(X, Y)
    return np.atleast_2d(fit.coef_).T, np.atleast_1d(fit.intercept_)


def _prior_fit(
    X: np.ndarray, Y: np.ndarray, codes: np.ndarray, cand: tuple[str, int, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Fit one IQM-prior candidate; return (coef, intercept) of the linear map x → location."""
    kind, ncomp, alpha = cand
    if kind == "scan_ridge":
        return _ridge_fit(X, Y, alpha)
    labels, inv = np.unique(codes, return_inverse=True)
    site_x = np.stack([np.median(X[inv == j], axis=0) for j in range(len(labels))])
    site_y = np.stack([Y[inv == j].mean(axis=0) for j in range(len(labels))])
    centre = site_y.mean(axis=0)
    _, sv, vt = np.linalg.svd(site_y - centre, full_matrices=False)
    comps = vt[:ncomp]
    scores = (site_y - centre) @ comps.T
    w, b = _ridge_fit(site_x, scores, alpha)
    return w @ comps, b @ comps + centre


def _ridge_path(X: np.ndarray, Y: np.ndarray, alphas: Sequence[float]):
    """Yield (alpha, coef, intercept) of scikit-learn's ``Ridge(alpha)`` for every penalty
    from one SVD of the centred ``X``: ``coef = V diag(s / (s² + alpha)) U' Y``."""
    xm, ym = X.mean(axis=0), Y.mean(axis=0)
    U, s, Vt = np.linalg.svd(X - xm, full_matrices=False)
    UtY = U.T @ (Y - ym)
    for alpha in alphas:
        coef = Vt.T @ ((s / (s**2 + alpha))[:, None] * UtY)
        yield alpha, coef, ym - xm @ coef


def _loso_prior_predictions(
    X: np.ndarray, Y: np.ndarray, codes: np.ndarray, alphas: Sequence[float], clip: bool
) -> dict[tuple[str, int, float], np.ndarray]:
    """Leave-one-site-out predictions of every IQM-prior candidate (see :func:`_prior_fit`).

    The same maps as :func:`_prior_fit`, computed without refitting per candidate: one SVD
    per fold serves every penalty, and the site medians and means are the same in every fold
    (a fold drops whole sites), so they are computed once.
    """
    labels = np.unique(codes)
    site_x = np.stack([np.median(X[codes == j], axis=0) for j in labels])
    site_y = np.stack([Y[codes == j].mean(axis=0) for j in labels])
    preds = {("scan_ridge", 0, a): np.zeros_like(Y) for a in alphas}
    preds |= {("site_pca_ridge", k, a): np.zeros_like(Y) for k in (1, 2, 3) for a in alphas}
    for i, site in enumerate(labels):
        te = codes == site
        tr = ~te
        held = X[te]
        if clip:  # as at apply time: never extrapolate beyond the training IQM range
            held = np.clip(held, X[tr].min(axis=0), X[tr].max(axis=0))
        for alpha, coef, icpt in _ridge_path(X[tr], Y[tr], alphas):
            preds[("scan_ridge", 0, alpha)][te] = held @ coef + icpt
        others = np.arange(len(labels)) != i
        sy = site_y[others]
        centre = sy.mean(axis=0)
        _, _, vt = np.linalg.svd(sy - centre, full_matrices=False)
        comps = vt[:3]
        # ridge fits each output on its own: the k-component map is the first k columns
        for alpha, w, b in _ridge_path(site_x[others], (sy - centre) @ comps.T, alphas):
            for ncomp in (1, 2, 3):
                c = comps[:ncomp]
                pred = held @ (w[:, :ncomp] @ c) + (b[:ncomp] @ c + centre)
                preds[("site_pca_ridge", ncomp, alpha)][te] = pred
    return preds


def _posterior_gain(T: np.ndarray, S: np.ndarray, n: float) -> np.ndarray:
    """``T (T + S/n)^-1``: how much of a site-mean deviation is attributed to the scanner."""
    return np.linalg.solve((T + S / n).T, T.T).T


def _masked_gain(
    T: np.ndarray, S: np.ndarray, exclude: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Gain ``W`` and posterior variances when region i's offset ignores regions ``exclude[i]``.

    Row i of ``W`` is the Gaussian conditional mean weight of the scanner offset of region i
    given the deviations of every region except ``exclude[i]`` (``W[i, exclude[i]] = 0``).
    One inverse of ``T + S``; each row's sub-inverse by the block (Schur) identity.
    """
    A = T + S
    P = np.linalg.inv(A)
    R = len(A)
    W = np.zeros((R, R))
    var = np.empty(R)
    for i in range(R):
        ex = np.asarray(exclude[i], dtype=int)
        keep = np.setdiff1d(np.arange(R), ex)
        pke = P[np.ix_(keep, ex)]
        inv_kk = P[np.ix_(keep, keep)] - pke @ np.linalg.solve(P[np.ix_(ex, ex)], pke.T)
        W[i, keep] = T[i, keep] @ inv_kk
        var[i] = T[i, i] - W[i, keep] @ T[keep, i]
    return W, np.maximum(var, 0.0)


@dataclass(frozen=True)
class ValidRows:
    """What :meth:`NeuroHarmonizer.transform_valid` returns."""

    harmonized: pd.DataFrame  # the valid rows as transform outputs them (index 0..k-1)
    sd: pd.DataFrame | None  # their posterior SDs (return_sd), same index
    rows: np.ndarray  # 0-based position in the input table of each harmonized row
    refused: dict[int, str]  # 0-based row of the input → why it was refused


class NeuroHarmonizer(BaseEstimator):
    """IQM- and profile-driven ComBat-supervised harmonizer (scikit-learn conventions).

    Parameters
    ----------
    covariates
        Extra columns protected by ComBat besides age, sex and eTIV (e.g. ``("dx",)``).
        Missing at apply time, they are set to the training mean.
    ridge_alphas
        Candidate ridge penalties for the IQM prior, chosen by leave-one-site-out.
    iqm_prior
        Use the IQM prior (False: the scan's regional profile alone; for comparisons).
    robust_iqms
        Clip IQMs to the training range and measure distance by the worst single IQM (False:
        no clipping, root-mean-square distance; kept for the drift comparison in bench/).
    profile_weight
        How much the scan's own regional profile may move the scanner estimate away from the
        IQM prior: the between-site covariance ``T`` is scaled by this factor in the posterior.
        1 is the Bayes posterior; 0 uses the IQM prior alone (keeps all of the person's
        anatomy, removes least); above 1 removes more site effect and more anatomy (the
        retention of each setting is in the model card).
    profile_update
        ``"cross_region"`` (default): each region's scanner offset is predicted from the other
        regions only, leaving out the region and its other-hemisphere homologue, so a person's
        own atrophy in a structure is not read as a scanner effect. ``"own_region"``: the full
        posterior, in which every region also informs its own offset (removes slightly more
        site effect, keeps less anatomy; kept for comparison).
    sex_mapping
        How numeric sex codes read (e.g. ``{"1": "M", "2": "F"}``), for every table this model
        fits or harmonizes; a ``sex_mapping`` passed to a call takes precedence.
    freesurfer_version
        FreeSurfer version of the training volumes (a ``freesurfer_version`` column in the
        training table overrides it). Single scans from another version are flagged.

    Leave-one-site-out validation is not part of ``fit``: see :func:`harmonize.train.train`.
    """

    def __init__(
        self,
        covariates: Sequence[str] = (),
        ridge_alphas: Sequence[float] = (1.0, 10.0, 100.0, 1000.0, 10000.0),
        iqm_prior: bool = True,
        robust_iqms: bool = True,
        profile_weight: float = 1.0,
        profile_update: str = "cross_region",
        freesurfer_version: str | None = "6.0",
        sex_mapping: Mapping[str, str] | None = None,
    ) -> None:
        self.covariates = covariates
        self.ridge_alphas = ridge_alphas
        self.iqm_prior = iqm_prior
        self.robust_iqms = robust_iqms
        self.profile_weight = profile_weight
        self.profile_update = profile_update
        self.freesurfer_version = freesurfer_version
        self.sex_mapping = sex_mapping

    def _validate_params(self) -> None:
        """Refuse hyperparameters the maths cannot use (scikit-learn: validation in fit)."""
        w = self.profile_weight
        if isinstance(w, bool) or not isinstance(w, int | float) or not np.isfinite(w) or w < 0:
            raise ValueError(f"profile_weight must be a finite number >= 0, got {w!r}")
        if self.profile_update not in PROFILE_UPDATES:
            raise ValueError(
                f"profile_update must be one of {', '.join(PROFILE_UPDATES)}, "
                f"got {self.profile_update!r}"
            )
        alphas = list(self.ridge_alphas)
        if not alphas or any(not np.isfinite(a) or a <= 0 for a in alphas):
            raise ValueError(f"ridge_alphas must be positive numbers, got {alphas!r}")

    # ------------------------------------------------------------------ design
    def _encode_covariates(self, prep: PreparedTable) -> tuple[dict, list[str]]:
        """Learn how each user covariate enters the design (fit only): encodings and names."""
        names = ["age", "age^2", "sex[M]"] + (["eTIV"] if prep.etiv is not None else [])
        encoding = {}
        for cov in self.covariates:
            values = prep.covariates[cov]
            num = pd.to_numeric(values, errors="coerce")
            if num.notna().all() and values.nunique() > 2:
                encoding[cov] = {"kind": "numeric", "mean": float(num.mean())}
                names.append(cov)
                continue
            if values.isna().any():
                pos = int(np.flatnonzero(values.isna().to_numpy())[0])
                raise DataError(f"covariate {cov!r}, row {pos + 1}: missing value")
            levels = sorted(map(str, values.dropna().unique()))
            freq = [float((values.astype(str) == lev).mean()) for lev in levels]
            encoding[cov] = {"kind": "categorical", "levels": levels, "freq": freq}
            names += [f"{cov}[{lev}]" for lev in levels[1:]]
        return encoding, names

    def _design(self, prep: PreparedTable | ScanFields) -> np.ndarray:
        """Covariate design (no intercept) from the fitted encodings; writes no state."""
        age = (prep.age - AGE_CENTER) / 10.0
        cols = [age, age**2, F.sex_to_float(prep.sex)]
        if self.use_etiv_:
            cols.append(
                np.full(len(age), self.etiv_mean_) if prep.etiv is None else prep.etiv / ETIV_SCALE
            )
        for cov in self.covariates:
            enc = self.covariate_encoding_[cov]
            values = prep.covariates[cov] if cov in prep.covariates.columns else None
            if enc["kind"] == "numeric":
                cols.append(
                    np.full(len(age), enc["mean"])
                    if values is None
                    else pd.to_numeric(values, errors="coerce").fillna(enc["mean"]).to_numpy()
                )
                continue
            for lev, fr in zip(enc["levels"][1:], enc["freq"][1:], strict=True):
                # unknown at apply time (column or cell missing): the training proportion
                if values is None:
                    cols.append(np.full(len(age), fr))
                else:
                    dummy = (values.astype(str) == lev).to_numpy(dtype=float)
                    cols.append(np.where(values.isna().to_numpy(), fr, dummy))
        return np.column_stack(cols)

    # ------------------------------------------------------------------ fit
    def _sex_mapping(self, given: Mapping[str, str] | None) -> Mapping[str, str] | None:
        return given if given is not None else self.sex_mapping

    def fit(self, table: pd.DataFrame, site: str | Sequence = "site", sex_mapping=None):
        """Fit on a multi-site table. ``site`` is a column name or one label per row.

        BLAS runs on one thread here: the fit is many small decompositions (a few per
        leave-one-site-out fold), where threads cost more than they gain (10x slower on a busy
        2-core machine), and one thread gives the same bits on every machine.
        """
        with threadpool_limits(limits=1, user_api="blas"):
            return self._fit(table, site, sex_mapping)

    def _fit(self, table: pd.DataFrame, site, sex_mapping):
        self._validate_params()
        self.__dict__.pop("_gain_cache", None)  # gains of a previous fit are stale
        table = table.reset_index(drop=True)
        site_values = self._site_values(table, site)
        prep = prepare(
            table, covariates=self.covariates, sex_mapping=self._sex_mapping(sex_mapping)
        )
        problem = unusable_volume_problem(table, prep)
        if problem is not None:
            raise DataError(problem)
        missing_core = [c for c in F.CORE_IQMS if c not in prep.iqms.columns]
        if missing_core:
            raise DataError(
                f"training table lacks core MRIQC IQM column(s) {', '.join(missing_core)}; "
                "the model needs at least the core set to harmonize new scans"
            )
        for name in F.CORE_IQMS:
            if prep.iqms[name].isna().any():
                pos = int(np.flatnonzero(prep.iqms[name].isna().to_numpy())[0])
                raise DataError(f"column {name!r}, {row_label(table, pos)}: missing IQM")
        sites, codes = np.unique(site_values.astype(str), return_inverse=True)
        if len(sites) < 3:
            raise DataError(
                f"training needs at least 3 sites to learn how sites differ; found {len(sites)} "
                f"({', '.join(sites)}) in the site column"
            )
        self.use_etiv_ = prep.etiv is not None
        if self.use_etiv_:
            self.etiv_mean_ = float(np.mean(prep.etiv) / ETIV_SCALE)
        self.covariate_encoding_, self.design_names_ = self._encode_covariates(prep)
        design = self._design(prep)
        check_design(codes, design, self.design_names_)
        # regions FreeSurfer often reports as 0 mm³ (vessels, hypointensities) carry no site
        # signal ComBat can model; keep regions with at most 1 % zeros
        # global header measures differ in definition between versions: never harmonized
        self.regions_ = [
            r
            for r in F.NEUROHARMONY_REGIONS + F.EXTRA_REGIONS
            if r in prep.volumes
            and r not in F.GLOBAL_MEASURES
            and (prep.volumes[r] <= 0).mean() <= 0.01
            and prep.volumes[r].std() > 0
        ]
        vols = prep.volumes[self.regions_].to_numpy()
        cfit, harmonized = fit_combat(vols, codes, list(sites), design, self.design_names_)
        self.combat_ = cfit
        self.within_cov_ = LedoitWolf().fit(cfit.residuals).covariance_
        self.between_cov_ = LedoitWolf(assume_centered=True).fit(cfit.gamma).covariance_
        d2 = cfit.delta.ravel()
        mean, var = float(d2.mean()), float(d2.var()) + 1e-12
        self.scale_prior_ = (mean**2 / var + 2.0, mean * (mean**2 / var + 1.0))
        # the least likely regional profile among training scans: anything less likely is left raw
        z = cfit.residuals + cfit.gamma[codes]
        self.profile_limit_ = float(self._profile_pvalue(z.T, self.regions_).min())

        # IQM prior: one ridge per feature set (core; every IQM present at training)
        full = [c for c in F.ALL_IQMS if c in prep.iqms and prep.iqms[c].notna().all()]
        self.iqm_sets_ = {"core": list(F.CORE_IQMS), "full": full}
        self.iqms_ = full
        raw_iqm = prep.iqms[full].to_numpy()
        self.iqm_range_ = {c: [float(np.min(raw_iqm[:, j])), float(np.max(raw_iqm[:, j]))]
                           for j, c in enumerate(full)}  # fmt: skip
        Xall = iqm_transform(raw_iqm)
        self.iqm_center_ = np.median(Xall, axis=0)
        q75, q25 = np.percentile(Xall, [75, 25], axis=0)
        # robust scale; IQMs constant in most scans (voxel spacing) fall back to the SD
        iqr = (q75 - q25) / 1.349
        # (an IQM constant in training, e.g. one voxel size, is measured in raw log units)
        sd = Xall.std(axis=0)
        self.iqm_scale_ = np.where(iqr > 1e-9, iqr, np.where(sd > 1e-9, sd, 1.0))
        # how far a training site's median IQM sits from the pooled centre (robust-z units):
        # a new dataset shifted further than every training site has drifted (harmonize.drift)
        zs = (Xall - self.iqm_center_) / self.iqm_scale_
        self.iqm_site_shift_ = np.max(
            np.abs([np.median(zs[codes == k], axis=0) for k in range(len(sites))]), axis=0
        )
        target = cfit.gamma[codes]
        self.prior_ = {}
        self.cv_prior_ = {}
        for set_name, cols in self.iqm_sets_.items():
            idx = [full.index(c) for c in cols]
            Xs = (Xall[:, idx] - self.iqm_center_[idx]) / self.iqm_scale_[idx]
            self.prior_[set_name], self.cv_prior_[set_name] = self._fit_prior(Xs, target, codes)
        self.age_range_ = [float(prep.age.min()), float(prep.age.max())]
        self.etiv_range_ = (
            [float(prep.etiv.min()), float(prep.etiv.max())] if prep.etiv is not None else None
        )
        self.ref_harmonized_sd_ = np.std(
            (harmonized - cfit.reference_mean(design)) / cfit.sigma, axis=0
        )
        self.freesurfer_version_ = self._training_freesurfer_version(table)
        self.training_summary_ = _summarize(table, prep, site_values)
        self.cv_metrics_ = {}  # filled by harmonize.train (leave-one-site-out)
        return self

    def _training_freesurfer_version(self, table: pd.DataFrame) -> str | None:
        if FS_VERSION_COLUMN in table.columns:
            found = sorted({_major_minor(v) for v in table[FS_VERSION_COLUMN].dropna()})
            if len(found) > 1:
                raise DataError(
                    f"column {FS_VERSION_COLUMN!r} holds several FreeSurfer versions "
                    f"({', '.join(found)}); train on one version, or drop the column and treat "
                    "the version as part of each site"
                )
            if found:
                return found[0]
        return None if self.freesurfer_version is None else _major_minor(self.freesurfer_version)

    @staticmethod
    def _site_values(table: pd.DataFrame, site) -> np.ndarray:
        if isinstance(site, str):
            if site not in table.columns:
                raise DataError(
                    f"site column {site!r} not found; columns are {', '.join(map(str, table.columns[:15]))}"
                    "...; pass the column that names each scan's site or scanner"
                )
            values = table[site]
        else:
            values = pd.Series(np.asarray(site))
        if values.isna().any():
            pos = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise DataError(f"site column, {row_label(table, pos)}: missing site label")
        return values.astype(str).to_numpy()

    def _fit_prior(self, X: np.ndarray, Y: np.ndarray, codes: np.ndarray):
        """Choose the IQM prior by LOSO and calibrate its confidence against IQM distance.

        Candidates: a per-scan ridge (IQMs → each scan's site location, the original idea) and
        a site-level reduced-rank ridge (site-median IQMs → the leading principal components
        of the sites' locations: the level where the effect lives, few parameters). Both are
        linear maps ``x @ coef + intercept``; the one with the lowest LOSO error wins.
        """
        folds = list(LeaveOneGroupOut().split(X, groups=codes))
        zero_mse = float(np.mean(Y**2))
        scores = {}
        preds = {}
        for cand, pred in _loso_prior_predictions(
            X, Y, codes, self.ridge_alphas, self.robust_iqms
        ).items():
            key = f"{cand[0]}(k={cand[1]},alpha={cand[2]:g})"
            scores[key] = float(np.mean((pred - Y) ** 2))
            preds[key] = (cand, pred)
        best = min(scores, key=scores.get)
        cand, p = preds[best]
        coef, icpt = _prior_fit(X, Y, codes, cand)
        # per-scan LOSO distance from the *other* sites' IQMs (the worst single IQM, so one
        # rescaled IQM cannot hide among many), and the scaling of the LOSO prediction that
        # would have been optimal for that scan
        dist = np.zeros(len(Y))
        for tr, te in folds:
            ctr = np.median(X[tr], axis=0)
            dist[te] = self._iqm_distance(X[te] - ctr)
        opt = np.einsum("ij,ij->i", p, Y) / np.maximum(np.einsum("ij,ij->i", p, p), 1e-12)
        iso = IsotonicRegression(increasing=False, y_min=0.0, y_max=1.0, out_of_bounds="clip")
        iso.fit(dist, np.clip(opt, 0.0, 1.0))
        # beyond the largest distance seen in LOSO the prior is not trusted at all (interp right=0)
        grid = np.quantile(dist, np.linspace(0, 1, 21))
        conf = iso.predict(grid)
        shrunk = p * np.interp(dist, grid, conf, right=0.0)[:, None]
        cv = {
            "chosen": best,
            "loso_mse": scores,
            "zero_mse": zero_mse,
            "gain_vs_zero": 1.0 - scores[best] / zero_mse,
            "calibrated_mse": float(np.mean((shrunk - Y) ** 2)),
            "calibrated_gain_vs_zero": 1.0 - float(np.mean((shrunk - Y) ** 2)) / zero_mse,
        }
        return {"coef": coef, "intercept": icpt, "dist_grid": grid, "confidence": conf}, cv

    # ------------------------------------------------------------------ apply
    def _profile_pvalue(
        self,
        zt: np.ndarray,
        regions: Sequence[str],
        tile: int = ROW_TILE,
        flagged: tuple[int, ...] = (),
    ) -> np.ndarray:
        """Chi-square p-value of a scan's regional profile under the training distribution
        (``zt``: one scan per column, a row per region of ``regions`` but the positions
        ``flagged``, which are left out).

        The inverse covariance is kept per region set: one matrix product per chunk of scans.
        """

        def make() -> np.ndarray:
            idx = [self.regions_.index(r) for i, r in enumerate(regions) if i not in flagged]
            P = np.linalg.inv(
                self.within_cov_[np.ix_(idx, idx)] + self.between_cov_[np.ix_(idx, idx)]
            )
            # kept column-major: the product wants P' contiguous (no transposed copy per call)
            return np.asfortranarray(P)

        P = self._cached(("profile", tuple(regions), flagged), make)
        # chdtrc is what chi2.sf calls, without its argument checks (~0.1 ms a call: a chunk
        # makes one call per flagged-region pattern)
        return chdtrc(len(regions) - len(flagged), lanes_quadratic(zt, P, tile=tile))

    def _iqm_distance(self, xs: np.ndarray) -> np.ndarray:
        """Per scan: worst single IQM (robust), or root-mean-square over IQMs (for comparison)."""
        if self.robust_iqms:  # max |x| = max(max x, -min x), exactly, without a temporary
            return np.maximum(xs.max(axis=1), -xs.min(axis=1))
        return row_reduce(lambda t: np.sqrt(np.mean(t**2, axis=1)), xs)

    def _iqm_zrange(self, cols: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Training range of the IQMs ``cols`` in the prior's robust-z units."""

        def make() -> tuple[np.ndarray, np.ndarray]:
            idx = [self.iqms_.index(c) for c in cols]
            lo = np.array([self.iqm_range_[c][0] for c in cols])
            hi = np.array([self.iqm_range_[c][1] for c in cols])
            centre, scale = self.iqm_center_[idx], self.iqm_scale_[idx]
            return (iqm_transform(lo) - centre) / scale, (iqm_transform(hi) - centre) / scale

        return self._cached(("zrange", tuple(cols)), make)

    def _iqm_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Training range of every model IQM (raw units), for the out-of-range flags."""

        def make() -> tuple[np.ndarray, np.ndarray]:
            lo = np.array([self.iqm_range_[c][0] for c in self.iqms_])
            return lo, np.array([self.iqm_range_[c][1] for c in self.iqms_])

        return self._cached(("iqm_bounds",), make)

    def _iqm_never_negative(self, cols: Sequence[str]) -> np.ndarray:
        """MRIQC writes -1 when it cannot compute an IQM: missing, where -1 is impossible.

        An IQM whose training values are all >= 0 cannot be -1; IQMs that can be negative
        (kurtosis) keep the value.
        """
        return np.array([self.iqm_range_[c][0] >= 0 for c in cols], dtype=bool)

    def _iqm_prior(self, vals: np.ndarray):
        """Per scan: prior location (all regions), confidence, IQMs used, OOD flags, IQMs missing.

        ``vals``: the model's IQMs, one scan per column (``iqms_`` order by row, NaN where
        missing), changed in place; the location and OOD flags come one scan per column too.
        All the model's IQMs present: the full prior. Otherwise the core prior with each missing
        IQM set to its training median and the confidence reduced by the share missing. More
        than ``MAX_MISSING_IQM_SHARE`` of the core IQMs missing: no IQM prior (profile only).
        """
        n = vals.shape[1]
        full = self.iqm_sets_["full"]
        core = self.iqm_sets_["core"]
        minus = vals == -1.0
        if minus.any():  # MRIQC's "not computed", where -1 is impossible
            minus &= self._iqm_never_negative(full)[:, None]
            vals[minus] = np.nan
        del minus
        missing = np.isnan(vals)
        if missing.any():
            core_idx = [full.index(c) for c in core]
            core_share = missing[core_idx].mean(axis=0)
            use_full = ~missing.any(axis=0)
            use_core = ~use_full & (core_share <= MAX_MISSING_IQM_SHARE)
            # named as missing: the model's core IQMs the scan lacks (all used when present)
            iqms_missing = _join_names(missing[core_idx].T, core)
        else:  # the common case: no masks, no per-scan lists (a scalar fills every row)
            use_full, use_core, iqms_missing = None, None, ""
        mu = None
        conf = np.zeros(n)
        used: np.ndarray | str = "" if use_full is None else np.full(n, "", dtype=object)
        sets = (
            [("full", use_full)] if use_full is None else [("full", use_full), ("core", use_core)]
        )
        for set_name, rows in sets:
            if rows is not None and not rows.any():
                continue
            cols = self.iqm_sets_[set_name]
            idx = [full.index(c) for c in cols]
            every = rows is None or rows.all()  # every scan has every IQM (no masked copies)
            if cols == full:
                Xs = iqm_transform(vals if every else vals[:, rows])
            else:
                Xs = iqm_transform(vals[np.ix_(idx, rows)])
            Xs -= self.iqm_center_[idx, None]  # in place: the same arithmetic, fewer temporaries
            Xs /= self.iqm_scale_[idx, None]
            gone = np.isnan(Xs) if rows is not None else None
            if gone is not None:
                Xs[gone] = 0.0  # a missing IQM sits at the training median
            lo, hi = self._iqm_zrange(cols)
            prior = self.prior_[set_name]
            dist = self._iqm_distance(Xs.T)  # before clipping (in place)
            if self.robust_iqms:  # (np.clip with per-row bounds takes twice as long)
                np.maximum(Xs, lo[:, None], out=Xs)
                np.minimum(Xs, hi[:, None], out=Xs)
            loc = lanes_matmul(prior["coef"].T, Xs)
            loc += prior["intercept"][:, None]
            del Xs
            if every:
                mu = loc
            else:
                if mu is None:
                    mu = np.zeros((len(self.regions_), n))
                mu[:, rows] = loc
            c = np.interp(dist, prior["dist_grid"], prior["confidence"], right=0.0)
            if gone is None:  # (multiplying by 1 - 0 is exact: skipped)
                conf = c
                used = ";".join(cols)
                continue
            conf[rows] = c * (1.0 - gone.mean(axis=0))
            used[rows] = ";".join(cols)
            some = gone.any(axis=0)
            if some.any():  # per-scan lists only for the scans missing some of this set
                used[np.flatnonzero(rows)[some]] = _join_names(~gone[:, some].T, cols)
        if mu is None:
            mu = np.zeros((len(self.regions_), n))
        lo, hi = self._iqm_bounds()
        with np.errstate(invalid="ignore"):
            ood = vals < lo[:, None]
            ood |= vals > hi[:, None]
        return mu, conf, used, ood, iqms_missing

    def invalid_rows(
        self, table: pd.DataFrame, sex_mapping: Mapping[str, str] | None = None
    ) -> dict[int, str]:
        """Every row :meth:`transform` would refuse, in one pass: {0-based row: reason}.

        Missing IQMs are not a reason: such scans are harmonized with the IQMs they have.
        """
        check_is_fitted(self, "combat_")
        table = table.reset_index(drop=True)
        return row_problems(
            table, regions=self.regions_, sex_mapping=self._sex_mapping(sex_mapping)
        )

    def _single_scan_gain(
        self, regions: Sequence[str], T: np.ndarray, S: np.ndarray, flagged: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Gain and offset variances for one scan whose regions ``flagged`` are ignored.

        ``cross_region``: region i's offset ignores region i, its homologue and ``flagged``;
        ``own_region``: it ignores only ``flagged``. Cached per region set and flag pattern.
        """

        def make() -> tuple[np.ndarray, np.ndarray]:
            pos = {r: i for i, r in enumerate(regions)}
            exclude = []
            for i, r in enumerate(regions):
                ex = set(flagged)
                if self.profile_update == "cross_region":
                    ex |= {i, pos.get(F.homologue(r), i)}
                exclude.append(np.array(sorted(ex), dtype=int))
            return _masked_gain(T, S, exclude)

        key = (tuple(regions), self.profile_weight, self.profile_update, flagged)
        return self._cached(key, make)

    def _cached(self, key: tuple, make):
        """Matrices derived from the fitted covariances, kept per key (``fit`` clears them);
        at most ``GAIN_CACHE_SIZE``, the oldest dropped first."""
        with _CACHE_LOCK:  # chunk threads share the cache
            cache = self.__dict__.setdefault("_gain_cache", {})
            if key not in cache:
                while len(cache) >= GAIN_CACHE_SIZE:
                    cache.pop(next(iter(cache)))
                cache[key] = make()
            return cache[key]

    def transform(
        self,
        table: pd.DataFrame,
        site_column: str | None = None,
        sex_mapping: Mapping[str, str] | None = None,
        return_sd: bool = False,
        person_column: str | None = None,
    ) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
        """Harmonize every model region present in ``table``; add ``nh_*`` flag columns.

        Without ``site_column`` each scan is harmonized on its own. With it, scans sharing a
        site value are harmonized together (empirical Bayes on that scanner's location/scale;
        a site with one scan is a single scan). With ``return_sd`` also return, in a frame with
        the same index and the user's region column names, each harmonized volume's posterior
        standard deviation in mm³ (the uncertainty of the scanner correction; NaN where a scan
        was left unharmonized). A bad row refuses the whole table, naming the first one; to
        set bad rows aside instead, see :meth:`transform_valid`.

        Rows go through in chunks (whole sites on the joint path), on up to ``APPLY_THREADS``
        threads, written into preallocated outputs: temporaries stay bounded and memory is
        about the output alone (see docs/internals.md).
        """
        done = self._transform(table, site_column, sex_mapping, return_sd, person_column, False)
        return (done.harmonized, done.sd) if return_sd else done.harmonized

    def transform_valid(
        self,
        table: pd.DataFrame,
        site_column: str | None = None,
        sex_mapping: Mapping[str, str] | None = None,
        return_sd: bool = False,
        person_column: str | None = None,
    ) -> ValidRows:
        """:meth:`transform` of the valid rows, the others set aside with their reasons.

        Rows are validated once, in the same pass that harmonizes them (a batch caller needs
        no separate check). A refused row counts for nothing: on the joint path it is left out
        of its site's estimate. Problems of the whole table (no rows, a missing column,
        repeated scans) still refuse it.
        """
        return self._transform(table, site_column, sex_mapping, return_sd, person_column, True)

    def _transform(
        self,
        table: pd.DataFrame,
        site_column: str | None,
        sex_mapping: Mapping[str, str] | None,
        return_sd: bool,
        person_column: str | None,
        set_aside: bool,
    ) -> ValidRows:
        check_is_fitted(self, "combat_")
        present = [c for c in self.covariates if c in table.columns]
        mapping = self._sex_mapping(sex_mapping)
        rmap = check_table(table, regions=self.regions_, covariates=present)
        regions = [r for r in self.regions_ if r in rmap]
        cols = [rmap[r] for r in regions]
        reader = RowReader(
            table, rmap, regions, self.iqms_, covariates=present, sex_mapping=mapping
        )

        def refuse_table() -> None:  # the first bad row of the table, and how many more
            prepare(table, regions=self.regions_, covariates=present, sex_mapping=mapping)
            raise AssertionError("a row problem that prepare() does not find")  # pragma: no cover

        if reader.field_problems and not set_aside:
            refuse_table()
        design = self._design(reader.fields)
        n, nreg = len(table), len(regions)
        # outputs, filled chunk by chunk; region-major, so each output column is contiguous
        harmonized = np.empty((nreg, n))
        sd = np.empty((n, nreg)) if return_sd else None
        new = {
            "nh_status": np.full(n, "harmonized", dtype=object),
            "nh_confidence": np.zeros(n),
            "nh_out_of_range": np.zeros(n, dtype=int),
            "nh_out_of_range_features": np.full(n, "", dtype=object),
            "nh_features_used": np.full(n, "", dtype=object),
            "nh_n_regions": np.zeros(n, dtype=int),
            "nh_regions_flagged": np.full(n, "", dtype=object),
            "nh_iqms_missing": np.full(n, "", dtype=object),
        }
        fs_other = self._other_freesurfer_version(table)
        persons = None if person_column is None else table[person_column].astype(str).to_numpy()
        field_bad = np.zeros(n, dtype=bool)
        field_bad[list(reader.field_problems)] = True
        positions = np.arange(n)  # made once: a chunk's positions are a view of it
        refused: dict[int, str] = {}

        def run(rows: slice | np.ndarray, groups) -> None:
            """Harmonize one chunk into the outputs (chunks write disjoint rows)."""
            block, problems = reader.block(rows)
            at = positions[rows]
            for p in np.flatnonzero(field_bad[at]):  # after the volume/IQM problems, as prepare
                problems.setdefault(int(p), []).extend(reader.field_problems[int(at[p])])
            if problems and not set_aside:
                refuse_table()
            if problems:
                for p, items in problems.items():
                    refused[int(at[p])] = "; ".join(items)
                ok = np.ones(len(at), dtype=bool)
                ok[list(problems)] = False
                rows, at, block = at[ok], at[ok], block[:, ok]
                if groups is not None:  # a refused scan does not count in its site's estimate
                    gidx = groups[0][ok]
                    groups = (gidx, np.bincount(gidx, minlength=len(groups[1])))
                if not len(at):
                    return
            raw = block[:nreg]  # one scan per column (see _harmonize_rows)
            res = self._harmonize_rows(
                raw, reader.unusable(raw), block[nreg : nreg + len(self.iqms_)],
                design[rows], reader.fields.age[rows],
                None if reader.fields.etiv is None else reader.fields.etiv[rows],
                regions, cols, groups, None if persons is None else persons[rows],
                fs_other[rows], want_sd=return_sd,
            )  # fmt: skip
            harmonized[:, rows] = res.pop("harmonized")
            if sd is not None:
                sd[rows] = res["sd"].T
            res.pop("sd")
            for name, values in res.items():
                new[name][rows] = values

        chunks = list(self._row_chunks(table, site_column))
        # BLAS on one thread: the same bits whatever the number of chunk threads and cores
        # (OpenBLAS splits a product differently by thread count), and no
        # oversubscription; chunks run on up to APPLY_THREADS threads (NumPy releases the GIL)
        with _blas_controller().limit(limits=1, user_api="blas"):
            workers = min(APPLY_THREADS, len(chunks))
            if workers <= 1:
                for rows, groups in chunks:
                    run(rows, groups)
            else:
                with ThreadPoolExecutor(workers) as pool:
                    for job in [pool.submit(run, rows, groups) for rows, groups in chunks]:
                        job.result()  # the first chunk's error, as in a sequential run
        keep = None
        if refused:
            keep = np.ones(n, dtype=bool)
            keep[list(refused)] = False
            harmonized = harmonized[:, keep]
            sd = None if sd is None else sd[keep]
            new = {name: values[keep] for name, values in new.items()}
        out = _output_frame(table, cols, harmonized, new, keep)
        sd_frame = None if sd is None else pd.DataFrame(sd, columns=cols, index=out.index)
        kept = positions if keep is None else np.flatnonzero(keep)
        return ValidRows(out, sd_frame, kept, dict(sorted(refused.items())))

    def _row_chunks(self, table: pd.DataFrame, site_column: str | None):
        """Yield (rows, groups): row positions of the table and, on the joint path, the
        (site index per row, scans per site) of those rows; chunks hold whole sites.

        Chunks are at most ``CHUNK_ROWS`` rows, fewer for a small table, so that the chunk
        working memory stays a small share of the output's (issue 15: memory linear in scans).
        """
        n = len(table)
        size = min(CHUNK_ROWS, max(MIN_CHUNK_ROWS, -(-n // CHUNKS_PER_TABLE)))
        if site_column is None:  # every scan on its own
            for start in range(0, n, size):
                yield slice(start, min(start + size, n)), None
            return
        _, gidx, counts = np.unique(
            self._site_values(table, site_column), return_inverse=True, return_counts=True
        )
        gidx = np.asarray(gidx).ravel()
        order = np.argsort(gidx, kind="stable")  # sites in turn, each in table order
        ends = np.cumsum(counts)
        start = 0
        while start < n:
            k = int(np.searchsorted(ends, start + size, side="right"))
            # as many whole sites as fit in a chunk, or one site larger than a chunk
            stop = int(ends[k - 1]) if k and ends[k - 1] > start else int(ends[k])
            rows = order[start:stop]
            yield rows, (gidx[rows], counts)
            start = stop

    def _other_freesurfer_version(self, table: pd.DataFrame) -> np.ndarray:
        """Per row: its FreeSurfer version column names another version than the model's."""
        n = len(table)
        if FS_VERSION_COLUMN not in table.columns or self.freesurfer_version_ is None:
            return np.zeros(n, dtype=bool)
        codes, uniq = pd.factorize(table[FS_VERSION_COLUMN])  # few versions: parse each once
        other = [_major_minor(v) != self.freesurfer_version_ for v in uniq]
        return np.append(np.asarray(other, dtype=bool), False)[codes]  # code -1 (missing): no

    def _harmonize_rows(
        self,
        raw: np.ndarray,
        unusable: np.ndarray,
        iqms: np.ndarray,
        design: np.ndarray,
        age: np.ndarray,
        etiv: np.ndarray | None,
        regions: Sequence[str],
        columns: Sequence[str],
        groups: tuple[np.ndarray, np.ndarray] | None,
        persons: np.ndarray | None,
        fs_version_other: np.ndarray,
        want_sd: bool = False,
    ) -> dict[str, np.ndarray]:
        """Harmonized volumes, posterior SDs and flag columns of some valid scans.

        Volumes, IQMs, harmonized values and SDs are one scan per column (region-major), as
        BLAS wants them (:func:`rowwise.lanes_matmul`): no product needs a transposed copy.
        ``raw``/``unusable``: volumes of ``regions`` (user names ``columns``) and where each
        is unusable; ``iqms``: the model's IQMs (``iqms_`` order, NaN where missing; changed in
        place); ``design``: the covariate design of the scans (one scan per row). ``groups``:
        None (each scan alone) or (site index per scan, scans per site), with every site's
        scans here.
        """
        ridx, alpha, beta, sigma, T1, S, norm_sd = self._region_terms(regions)
        alpha, sigma, norm_sd = alpha[:, None], sigma[:, None], norm_sd[:, None]
        n_scans = raw.shape[1]
        mean = lanes_matmul(beta.T, design.T)
        mean += alpha
        # a missing, zero or negative volume (a structure not segmented) tells nothing about
        # the scanner: flagged, ignored by the other regions, and written as it came
        any_unusable = unusable.any()
        z = raw - mean  # in-place steps below: the same arithmetic, fewer temporaries
        z /= sigma
        mu_all, conf, used, ood, iqms_missing = self._iqm_prior(iqms)
        if not self.iqm_prior:
            conf = np.zeros_like(conf)
        mu = mu_all if len(ridx) == len(self.regions_) else np.take(mu_all, ridx, axis=0)
        mu *= conf  # in place: mu_all is not used again
        if any_unusable:
            z[unusable] = mu[unusable]  # neutral: no deviation (and no NaN) to spread
        # a region far from the training norm (person and site variation together) is flagged
        # and ignored by every other region's offset estimate
        d = z - mu  # the deviation from the prior: kept for the gain below
        dev = np.abs(d)
        dev /= norm_sd
        far_region = dev > REGION_Z_LIMIT
        del dev
        if any_unusable:
            far_region |= unusable
        # pattern 0: nothing flagged (most scans, no sort); the others from flagged scans only
        patterns = np.zeros((1, len(regions)), dtype=bool)
        inverse = np.zeros(n_scans, dtype=int)
        any_far = far_region.any(axis=0)
        # the flagged scans' positions per pattern 1, 2, ... (ascending), from one sort: a
        # pass over the chunk per pattern would cost more than the pattern's few scans
        by_pattern: list[np.ndarray] = []
        if any_far.any():
            flagged_at = np.flatnonzero(any_far)
            found, inv = _unique_rows(far_region[:, flagged_at].T)
            patterns = np.vstack([patterns, found])
            inverse[flagged_at] = inv + 1
            order = np.argsort(inv, kind="stable")
            by_pattern = np.split(flagged_at[order], np.flatnonzero(np.diff(inv[order])) + 1)
        limit = min(self.profile_limit_, PROFILE_ALPHA)
        # (a count over the scan's regions is their mean exactly, without a float pass)
        broken = np.count_nonzero(far_region, axis=0) / len(regions) > MAX_FLAGGED_SHARE
        # a scan's numbers do not depend on the other scans (harmonize.rowwise), so the scans
        # with nothing flagged (pattern 0, most) are computed over the whole chunk, without a
        # gathered copy: the other scans' results are overwritten by their own pattern's
        rows = (inverse == 0) & ~broken
        if rows.any():
            broken[rows] = (self._profile_pvalue(z, regions) < limit)[rows]
        flagged = [tuple(np.flatnonzero(pattern).tolist()) for pattern in patterns]
        for pattern, at, out in zip(patterns[1:], by_pattern, flagged[1:], strict=True):
            at = at[~broken[at]]
            if len(at) and len(out) < len(regions):
                zk = np.take(np.take(z, at, axis=1), np.flatnonzero(~pattern), axis=0)
                p = self._profile_pvalue(zk, regions, tile=SMALL_TILE, flagged=out)
                broken[at] = p < limit
        gamma = np.empty_like(z)
        var = np.empty_like(z) if want_sd else None  # only for the SDs
        scale = None  # 1 for every single scan (dividing by 1 is exact: skipped)
        if groups is None:
            gidx, counts = np.arange(n_scans), np.ones(n_scans, dtype=int)
        else:
            gidx, counts = groups
        single = counts[gidx] == 1
        Tw = self.profile_weight * T1
        rows = single & (inverse == 0)
        if rows.any():  # every scan (others overwritten below): no gathered copies
            W, v = self._single_scan_gain(regions, Tw, S, ())
            lanes_matmul(W, d, out=gamma)
            gamma += mu
            if var is not None:
                var[:, rows] = v[:, None]
        for at, out in zip(by_pattern, flagged[1:], strict=True):
            at = at[single[at]]  # (indices: a boolean-masked copy costs several times more)
            if not len(at):
                continue
            W, v = self._single_scan_gain(regions, Tw, S, out)
            part = lanes_matmul(W, np.take(d, at, axis=1), tile=SMALL_TILE)
            part += np.take(mu, at, axis=1)
            gamma[:, at] = part
            if var is not None:
                var[:, at] = v[:, None]
        a0, b0 = self.scale_prior_
        for j in np.unique(gidx[~single]):
            rows = gidx == j
            # one scan per row, contiguous: the site sums in the same order as ever
            zs, ms = np.ascontiguousarray(z[:, rows].T), np.ascontiguousarray(mu[:, rows].T)
            if persons is not None:  # one vote per person: a person's scans averaged first
                key = persons[rows]
                zs = pd.DataFrame(zs).groupby(key, sort=True).mean().to_numpy()
                ms = pd.DataFrame(ms).groupby(key, sort=True).mean().to_numpy()
            n = len(zs)
            mbar = ms.mean(0)
            G = _posterior_gain(T1, S, n)
            g = mbar + G @ (zs.mean(0) - mbar)
            gamma[:, rows] = g[:, None]
            if var is not None:
                var[:, rows] = np.maximum(np.diag(T1 - G @ T1), 0.0)[:, None]
            if n > 1:
                ss = ((zs - g) ** 2).sum(0)
                if scale is None:
                    scale = np.ones_like(z)
                scale[:, rows] = np.sqrt((b0 + 0.5 * ss) / (a0 + 0.5 * n - 1.0))[:, None]
        del d
        harmonized = np.subtract(z, gamma, out=gamma)  # mean + sigma * (z - gamma) / scale
        harmonized *= sigma
        if scale is not None:
            harmonized /= scale
        harmonized += mean
        # a volume cannot be negative: a tiny structure the correction would take to <= 0
        # mm³ is left raw and flagged, as is an unusable one; a profile broken as a whole
        # (failed segmentation, other software) is left raw entirely
        with np.errstate(invalid="ignore"):
            left_raw = harmonized <= 0
        if any_unusable:
            left_raw |= unusable
        left_raw[:, broken] = True
        # the few scans with a region left raw: the passes below only over their columns
        raw_at = np.flatnonzero(left_raw.any(axis=0))
        left_raw = left_raw[:, raw_at]
        if len(raw_at):
            harmonized[:, raw_at] = np.where(left_raw, raw[:, raw_at], harmonized[:, raw_at])
            far_region[:, raw_at] |= left_raw & ~broken[raw_at]
        sd = None
        if var is not None:
            sd = sigma * np.sqrt(var)
            if scale is not None:
                sd /= scale
            sd[:, raw_at] = np.where(left_raw, np.nan, sd[:, raw_at])
        # FreeSurfer version: part of the scanner effect the joint path absorbs; a single
        # scan from another version than the model's is flagged
        fs_other = fs_version_other & single
        # out-of-range flags, vectorized over scans: one boolean column per feature (built
        # only for the flagged scans)
        names = [*self.iqms_, "age", "eTIV", "regional_profile", "freesurfer_version"]
        etiv_out = np.zeros(n_scans, dtype=bool)
        if self.etiv_range_ is not None and etiv is not None:
            etiv_out = (etiv < self.etiv_range_[0]) | (etiv > self.etiv_range_[1])
        age_out = (age < self.age_range_[0]) | (age > self.age_range_[1])
        out_of_range = ood.any(axis=0) | age_out | etiv_out | broken | fs_other
        features = np.full(n_scans, "", dtype=object)
        hit = np.flatnonzero(out_of_range)
        if len(hit):
            flagged = np.column_stack([ood[:, hit].T, age_out[hit], etiv_out[hit], broken[hit],
                                       fs_other[hit]])  # fmt: skip
            features[hit] = _join_names(flagged, names)
        status: np.ndarray | str = "harmonized"
        if broken.any():
            status = np.where(broken, "unharmonized", "harmonized").astype(object)
        return {
            "harmonized": harmonized,
            "sd": sd,
            "nh_status": status,
            "nh_confidence": np.where(broken, 0.0, np.round(conf, 4)),
            "nh_out_of_range": out_of_range,
            "nh_out_of_range_features": features,
            "nh_features_used": used,
            "nh_n_regions": _regions_used(len(regions), n_scans, raw_at, left_raw),
            "nh_regions_flagged": _join_names(far_region.T, columns),
            "nh_iqms_missing": iqms_missing,
        }

    def _region_terms(self, regions: Sequence[str]):
        """Per region set: model indices, ComBat alpha/beta/sigma, the covariances ``T`` and
        ``S``, and the SD a region's deviation is measured in (computed once, then cached)."""

        def make():
            ridx = [self.regions_.index(r) for r in regions]
            c = self.combat_
            T1 = self.between_cov_[np.ix_(ridx, ridx)]
            S = self.within_cov_[np.ix_(ridx, ridx)]
            return (
                ridx,
                c.alpha[ridx],
                c.beta[:, ridx],
                c.sigma[ridx],
                T1,
                S,
                np.sqrt(np.diag(T1 + S)),
            )

        return self._cached(("terms", tuple(regions)), make)

    def scanner_uncertainty(self, n_scans: int) -> pd.DataFrame:
        """Posterior SD of a scanner's correction per region once ``n_scans`` of it are seen.

        One scan: the single-scan estimate (IQM prior and the other regions); several: the
        joint path. ``sd_mm3`` in mm³, ``sd_pct`` in % of the region's reference volume.
        """
        check_is_fitted(self, "combat_")
        if int(n_scans) < 1:
            raise ValueError(f"n_scans must be >= 1, got {n_scans!r}")
        T, S = self.between_cov_, self.within_cov_
        if int(n_scans) == 1:
            _, var = self._single_scan_gain(self.regions_, self.profile_weight * T, S, ())
        else:
            var = self._joint_variance(int(n_scans))
        sd = self.combat_.sigma * np.sqrt(var)
        return pd.DataFrame(
            {"sd_mm3": sd, "sd_pct": 100.0 * sd / np.abs(self.combat_.alpha)}, index=self.regions_
        )

    def _joint_variance(self, n: int) -> np.ndarray:
        """``diag(T - T (T + S/n)^-1 T)`` for any ``n`` from one eigendecomposition (no solve).

        The generalized eigenproblem ``T V = S V diag(w)`` with ``V' S V = I`` diagonalizes
        both: with ``B = S V``, ``T = B diag(w) B'`` and ``S = B B'``, so the posterior
        covariance of a scanner seen ``n`` times is ``B diag(w / (1 + n w)) B'``.
        """

        def make() -> tuple[np.ndarray, np.ndarray]:
            w, V = eigh(self.between_cov_, self.within_cov_)
            return np.maximum(w, 0.0), (self.within_cov_ @ V) ** 2

        w, B2 = self._cached(("joint_eig",), make)
        return B2 @ (w / (1.0 + n * w))

    def scans_to_halve(self, n_scans: int, limit: int = 100_000) -> int | None:
        """How many more scans of one scanner halve its correction's uncertainty.

        Uncertainty is the median over regions of the posterior SD (as in
        :meth:`scanner_uncertainty`); ``None`` if even ``limit`` scans would not halve it.
        Each count costs one matrix-vector product (:meth:`_joint_variance`), so the search
        over counts is cheap.
        """

        def median_sd(n: int) -> float:
            return float(np.median(self.scanner_uncertainty(n)["sd_mm3"]))

        target = 0.5 * median_sd(n_scans)
        lo, hi = int(n_scans), max(2, int(n_scans) * 2)
        while median_sd(hi) > target:
            if hi >= limit:
                return None
            lo, hi = hi, min(limit, hi * 2)
        while hi - lo > 1:  # smallest count at the target (SD falls with n)
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if median_sd(mid) <= target else (mid, hi)
        return hi - int(n_scans)

    def predict_correction(self, table: pd.DataFrame, **kwargs) -> pd.DataFrame:
        """Raw minus harmonized volume per region (what the model subtracts)."""
        harmonized = self.transform(table, **kwargs)
        prep = prepare(table.reset_index(drop=True), regions=self.regions_)
        cols = [prep.region_columns[r] for r in self.regions_ if r in prep.region_columns]
        raw = table.reset_index(drop=True)[cols].astype(float)
        return raw - harmonized[cols].astype(float)

    def reference_range(self, age: float, sex: str, etiv: float | None = None) -> pd.DataFrame:
        """95 % range of the training cohort's harmonized volumes at this age/sex (/eTIV)."""
        check_is_fitted(self, "combat_")
        row = {"age": [age], "sex": [sex]}
        if etiv is not None:
            row[F.ETIV] = [etiv]
        prep = prepare(pd.DataFrame(row), require_regions=False)
        design = self._design(prep)
        mean = self.combat_.reference_mean(design)[0]
        half = 1.96 * self.combat_.sigma * self.ref_harmonized_sd_
        return pd.DataFrame(
            {"mean": mean, "lower": mean - half, "upper": mean + half}, index=self.regions_
        )


def _output_frame(
    table: pd.DataFrame,
    cols: Sequence[str],
    harmonized: np.ndarray,
    new: dict[str, np.ndarray],
    keep: np.ndarray | None = None,
) -> pd.DataFrame:
    """The user's table (rows ``keep``) with ``cols`` set to ``harmonized`` (region-major: one
    row per column of ``cols``) and the ``nh_*`` columns appended, old ones replaced.

    One consolidated copy of the table, written in place: no per-column replacement or
    concatenation, each of which would copy it again. The copy is consolidated (one block per
    dtype), so appending the flag columns gives no pandas PerformanceWarning even when the
    caller's frame is fragmented. The index is reset as by ``reset_index(drop=True)``.
    """
    out = table.copy() if keep is None else table.iloc[keep].copy()
    for name in [c for c in FLAG_COLUMNS if c in out.columns]:
        del out[name]  # splits a block into views: no copy
    out.index = pd.RangeIndex(len(out))
    pos = out.columns.get_indexer(cols)
    is_float = (out.dtypes.iloc[pos] == np.float64).to_numpy()
    if not is_float.all():  # volumes given as integers or text become floats, as harmonized
        for j in np.flatnonzero(~is_float):
            out[cols[j]] = harmonized[j]
        out = out.copy()  # each replaced column split a block: consolidate again
    if is_float.all():  # (a masked selection would copy the whole array)
        out.iloc[:, pos] = harmonized.T
    elif is_float.any():
        out.iloc[:, pos[is_float]] = harmonized[is_float].T
    for name, values in new.items():
        out[name] = values
    return out


def _regions_used(
    n_regions: int, n_scans: int, raw_at: np.ndarray, left_raw: np.ndarray
) -> np.ndarray | int:
    """Regions harmonized per scan: all but those left raw (``left_raw``: the scans
    ``raw_at``, one per column); a scalar when no scan has one."""
    if not len(raw_at):
        return n_regions
    used = np.full(n_scans, n_regions)
    used[raw_at] -= np.count_nonzero(left_raw, axis=0)
    return used


def _unique_rows(flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(flags, axis=0, return_inverse=True)`` for a boolean matrix, in the same
    order, ten times faster: each row packed into bytes (the first column as the high bit, so
    the bytes sort as the rows do) and the byte strings sorted."""
    packed = np.packbits(flags, axis=1)
    keys = np.ascontiguousarray(packed).view(np.dtype((np.void, packed.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return flags[first], np.asarray(inverse).ravel()


def _join_names(flags: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Per row, the ';'-joined names of the True columns of ``flags`` ('' when none)."""
    text = np.full(len(flags), "", dtype=object)
    rows = np.flatnonzero(flags.any(axis=1))  # string work only for flagged scans
    if len(rows):
        sub = flags[rows]
        cols = np.flatnonzero(sub.any(axis=0))
        picked = np.asarray(names, dtype=object)[cols]
        text[rows] = [";".join(picked[r]) for r in sub[:, cols]]
    return text


def _major_minor(version) -> str:
    """'7.4.1' → '7.4'; 'freesurfer-linux-centos7_x86_64-7.3.2-…' → '7.3' (first x.y found)."""
    import re

    m = re.search(r"(\d+)\.(\d+)", str(version))
    return f"{int(m.group(1))}.{int(m.group(2))}" if m else str(version).strip()


def _summarize(table: pd.DataFrame, prep: PreparedTable, sites: np.ndarray) -> dict:
    summary = {
        "n_scans": len(table),
        "n_sites": int(len(set(sites))),
        "sites": {s: int((sites == s).sum()) for s in sorted(set(sites))},
        "age": {
            "min": float(prep.age.min()),
            "median": float(np.median(prep.age)),
            "max": float(prep.age.max()),
        },
        "sex": {s: int((prep.sex == s).sum()) for s in ("F", "M")},
    }
    for col in ("vendor", "dx"):
        if col in table.columns:
            summary[col] = {
                str(k): int(v) for k, v in table[col].value_counts().sort_index().items()
            }
    return summary
