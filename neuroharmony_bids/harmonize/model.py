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

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import chi2
from sklearn.base import BaseEstimator
from sklearn.covariance import LedoitWolf
from sklearn.isotonic import IsotonicRegression
from sklearn.utils.validation import check_is_fitted

from neuroharmony_bids.errors import DataError
from neuroharmony_bids.harmonize import features as F
from neuroharmony_bids.harmonize.combat import check_design, fit_combat
from neuroharmony_bids.harmonize.table import (
    PreparedTable,
    iqm_columns,
    prepare,
    row_label,
    row_problems,
)

AGE_CENTER = 20.0
ETIV_SCALE = 1e6
#: A regional profile is implausible (left raw) only if less likely than every training scan
#: and than this outlier level (chi-square, Bonferroni-style for ~1e5 scans × regions).
PROFILE_ALPHA = 1e-9
FLAG_COLUMNS = F.FLAG_COLUMNS


def iqm_transform(x: np.ndarray) -> np.ndarray:
    """Signed log: IQMs span orders of magnitude and MRIQC releases rescale some of them."""
    return np.sign(x) * np.log1p(np.abs(x))


def _ridge_fit(X: np.ndarray, Y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    xm, ym = X.mean(0), Y.mean(0)
    Xc = X - xm
    coef = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(X.shape[1]), Xc.T @ (Y - ym))
    return coef, ym - xm @ coef


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


def _posterior_gain(T: np.ndarray, S: np.ndarray, n: float) -> np.ndarray:
    """``T (T + S/n)^-1``: how much of a site-mean deviation is attributed to the scanner."""
    return np.linalg.solve((T + S / n).T, T.T).T


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
    cv
        Also compute leave-one-site-out quality figures into ``cv_metrics_`` (slower).
    """

    def __init__(
        self,
        covariates: Sequence[str] = (),
        ridge_alphas: Sequence[float] = (1.0, 10.0, 100.0, 1000.0, 10000.0),
        iqm_prior: bool = True,
        robust_iqms: bool = True,
        cv: bool = False,
    ) -> None:
        self.covariates = covariates
        self.ridge_alphas = ridge_alphas
        self.iqm_prior = iqm_prior
        self.robust_iqms = robust_iqms
        self.cv = cv

    # ------------------------------------------------------------------ design
    def _design(self, prep: PreparedTable, fitting: bool) -> np.ndarray:
        age = (prep.age - AGE_CENTER) / 10.0
        cols = [age, age**2, F.sex_to_float(prep.sex)]
        names = ["age", "age^2", "sex[M]"]
        if self.use_etiv_ if not fitting else prep.etiv is not None:
            if prep.etiv is None:
                cols.append(np.full(len(age), self.etiv_mean_))
            else:
                cols.append(prep.etiv / ETIV_SCALE)
            names.append("eTIV")
        if fitting:
            self.covariate_encoding_ = {}
        for cov in self.covariates:
            enc = self.covariate_encoding_.get(cov) if not fitting else None
            values = prep.covariates[cov] if cov in prep.covariates.columns else None
            if fitting:
                num = pd.to_numeric(values, errors="coerce")
                if num.notna().all() and values.nunique() > 2:
                    enc = {"kind": "numeric", "mean": float(num.mean())}
                else:
                    levels = sorted(map(str, values.dropna().unique()))
                    if values.isna().any():
                        pos = int(np.flatnonzero(values.isna().to_numpy())[0])
                        raise DataError(f"covariate {cov!r}, row {pos + 1}: missing value")
                    freq = [float((values.astype(str) == lev).mean()) for lev in levels]
                    enc = {"kind": "categorical", "levels": levels, "freq": freq}
                self.covariate_encoding_[cov] = enc
            if enc["kind"] == "numeric":
                col = (
                    np.full(len(age), enc["mean"])
                    if values is None
                    else pd.to_numeric(values, errors="coerce").fillna(enc["mean"]).to_numpy()
                )
                cols.append(col)
                names.append(cov)
            else:
                for lev, fr in zip(enc["levels"][1:], enc["freq"][1:], strict=True):
                    # unknown at apply time (column or cell missing): the training proportion
                    if values is None:
                        cols.append(np.full(len(age), fr))
                    else:
                        dummy = (values.astype(str) == lev).to_numpy(dtype=float)
                        cols.append(np.where(values.isna().to_numpy(), fr, dummy))
                    names.append(f"{cov}[{lev}]")
        if fitting:
            self.design_names_ = names
        return np.column_stack(cols)

    # ------------------------------------------------------------------ fit
    def fit(self, table: pd.DataFrame, site: str | Sequence = "site", sex_mapping=None):
        """Fit on a multi-site table. ``site`` is a column name or one label per row."""
        table = table.reset_index(drop=True)
        site_values = self._site_values(table, site)
        prep = prepare(table, covariates=self.covariates, sex_mapping=sex_mapping)
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
        design = self._design(prep, fitting=True)
        check_design(codes, design, self.design_names_)
        # regions FreeSurfer often reports as 0 mm³ (vessels, hypointensities) carry no site
        # signal ComBat can model; keep regions with at most 1 % zeros
        self.regions_ = [
            r
            for r in F.NEUROHARMONY_REGIONS + F.EXTRA_REGIONS
            if r in prep.volumes
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
        self.profile_limit_ = float(self._profile_pvalue(z, self.regions_).min())

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
        self.training_summary_ = _summarize(table, prep, site_values)
        self.cv_metrics_ = self._cross_validate(table, site_values, sex_mapping) if self.cv else {}
        return self

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
        n_sites = codes.max() + 1
        zero_mse = float(np.mean(Y**2))
        candidates = [("scan_ridge", 0, a) for a in self.ridge_alphas]
        candidates += [("site_pca_ridge", k, a) for k in (1, 2, 3) for a in self.ridge_alphas]
        scores = {}
        preds = {}
        for cand in candidates:
            pred = np.zeros_like(Y)
            for k in range(n_sites):
                te = codes == k
                coef, icpt = _prior_fit(X[~te], Y[~te], codes[~te], cand)
                # as at apply time: never extrapolate beyond the training IQM range
                held = X[te]
                if self.robust_iqms:
                    held = np.clip(held, X[~te].min(axis=0), X[~te].max(axis=0))
                pred[te] = held @ coef + icpt
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
        for k in range(n_sites):
            te = codes == k
            ctr = np.median(X[~te], axis=0)
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
    def _profile_pvalue(self, z: np.ndarray, regions: Sequence[str]) -> np.ndarray:
        """Chi-square p-value of a scan's regional profile under the training distribution."""
        idx = [self.regions_.index(r) for r in regions]
        S = self.within_cov_[np.ix_(idx, idx)] + self.between_cov_[np.ix_(idx, idx)]
        sol = np.linalg.solve(S, z.T).T
        return chi2.sf(np.einsum("ij,ij->i", z, sol), df=len(idx))

    def _iqm_distance(self, xs: np.ndarray) -> np.ndarray:
        """Per scan: worst single IQM (robust), or root-mean-square over IQMs (for comparison)."""
        if self.robust_iqms:
            return np.max(np.abs(xs), axis=1)
        return np.sqrt(np.mean(xs**2, axis=1))

    def _iqm_zrange(self, cols: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Training range of the IQMs ``cols`` in the prior's robust-z units."""
        idx = [self.iqms_.index(c) for c in cols]
        lo = np.array([self.iqm_range_[c][0] for c in cols])
        hi = np.array([self.iqm_range_[c][1] for c in cols])
        centre, scale = self.iqm_center_[idx], self.iqm_scale_[idx]
        return (iqm_transform(lo) - centre) / scale, (iqm_transform(hi) - centre) / scale

    def _core_missing(self, have: pd.DataFrame) -> np.ndarray:
        """(n scans × core IQMs): True where a core IQM is missing."""
        return np.column_stack(
            [
                have[c].isna().to_numpy() if c in have else np.ones(len(have), dtype=bool)
                for c in self.iqm_sets_["core"]
            ]
        )

    def _core_problems(self, table: pd.DataFrame, have: pd.DataFrame) -> dict[int, str]:
        """{row: message} for scans below the minimum IQM set."""
        core = self.iqm_sets_["core"]
        missing = self._core_missing(have)
        return {
            int(pos): f"{row_label(table, pos)}: missing MRIQC IQM(s) "
            f"{', '.join(c for c, m in zip(core, missing[pos], strict=True) if m)}; the model "
            f"needs at least the core set ({' '.join(core)}). Rerun MRIQC or point at its T1w "
            "JSON / group_T1w.tsv"
            for pos in np.flatnonzero(missing.any(axis=1))
        }

    def _iqm_prior(self, prep: PreparedTable, table: pd.DataFrame):
        """Per scan: prior location (all regions), confidence, feature set used, OOD names."""
        n = len(table)
        have = prep.iqms
        use_full = np.ones(n, dtype=bool)
        for c in self.iqm_sets_["full"]:
            use_full &= have[c].notna().to_numpy() if c in have else False
        use_core = ~self._core_missing(have).any(axis=1)
        bad = ~(use_full | use_core)
        if bad.any():
            problems = self._core_problems(table, have)
            raise DataError(problems[min(problems)])
        mu = np.zeros((n, len(self.regions_)))
        conf = np.zeros(n)
        used = np.empty(n, dtype=object)
        for set_name, rows in (("full", use_full), ("core", use_core & ~use_full)):
            if not rows.any():
                continue
            cols = self.iqm_sets_[set_name]
            idx = [self.iqms_.index(c) for c in cols]
            X = iqm_transform(have.loc[rows, cols].to_numpy())
            Xs = (X - self.iqm_center_[idx]) / self.iqm_scale_[idx]
            lo, hi = self._iqm_zrange(cols)
            prior = self.prior_[set_name]
            held = np.clip(Xs, lo, hi) if self.robust_iqms else Xs
            mu[rows] = held @ prior["coef"] + prior["intercept"]
            dist = self._iqm_distance(Xs)
            conf[rows] = np.interp(dist, prior["dist_grid"], prior["confidence"], right=0.0)
            used[rows] = ";".join(cols)
        lo = np.array([self.iqm_range_[c][0] for c in self.iqms_])
        hi = np.array([self.iqm_range_[c][1] for c in self.iqms_])
        vals = np.column_stack(
            [have[c].to_numpy() if c in have else np.full(n, np.nan) for c in self.iqms_]
        )
        return mu, conf, used, (vals < lo) | (vals > hi)

    def invalid_rows(
        self, table: pd.DataFrame, sex_mapping: Mapping[str, str] | None = None
    ) -> dict[int, str]:
        """Every row :meth:`transform` would refuse, in one pass: {0-based row: reason}."""
        check_is_fitted(self, "combat_")
        table = table.reset_index(drop=True)
        problems = row_problems(table, regions=self.regions_, sex_mapping=sex_mapping)
        have = pd.DataFrame(
            {
                name: pd.to_numeric(table[col], errors="coerce")
                for name, col in iqm_columns(list(table.columns)).items()
            },
            index=table.index,
        )
        for pos, text in self._core_problems(table, have).items():
            problems[pos] = f"{problems[pos]}; {text}" if pos in problems else text
        return dict(sorted(problems.items()))

    def transform(
        self,
        table: pd.DataFrame,
        site_column: str | None = None,
        sex_mapping: Mapping[str, str] | None = None,
    ) -> pd.DataFrame:
        """Harmonize every model region present in ``table``; add ``nh_*`` flag columns.

        Without ``site_column`` each scan is harmonized on its own. With it, scans sharing a
        site value are harmonized together (empirical Bayes on that scanner's location/scale).
        """
        check_is_fitted(self, "combat_")
        table = table.reset_index(drop=True)
        present = [c for c in self.covariates if c in table.columns]
        prep = prepare(table, regions=self.regions_, covariates=present, sex_mapping=sex_mapping)
        regions = [r for r in self.regions_ if r in prep.volumes]
        ridx = [self.regions_.index(r) for r in regions]
        design = self._design(prep, fitting=False)
        c = self.combat_
        mean = c.alpha[ridx] + design @ c.beta[:, ridx]
        sigma = c.sigma[ridx]
        z = (prep.volumes[regions].to_numpy() - mean) / sigma
        mu_all, conf, used, ood = self._iqm_prior(prep, table)
        if not self.iqm_prior:
            conf = np.zeros_like(conf)
        mu = mu_all[:, ridx] * conf[:, None]
        T = self.between_cov_[np.ix_(ridx, ridx)]
        S = self.within_cov_[np.ix_(ridx, ridx)]
        gamma = np.empty_like(z)
        scale = np.ones_like(z)
        if site_column is None:
            gamma = mu + (z - mu) @ _posterior_gain(T, S, 1.0).T
        else:
            groups = self._site_values(table, site_column)
            a0, b0 = self.scale_prior_
            for label in sorted(set(groups)):
                rows = groups == label
                n = int(rows.sum())
                mbar = mu[rows].mean(0)
                g = mbar + _posterior_gain(T, S, n) @ (z[rows].mean(0) - mbar)
                gamma[rows] = g
                if n >= 2:
                    ss = ((z[rows] - g) ** 2).sum(0)
                    scale[rows] = np.sqrt((b0 + 0.5 * ss) / (a0 + 0.5 * n - 1.0))
        harmonized = mean + sigma * (z - gamma) / scale
        # a profile beyond every training scan (failed segmentation, other software) is left raw
        far = self._profile_pvalue(z, regions) < min(self.profile_limit_, PROFILE_ALPHA)
        harmonized[far] = prep.volumes[regions].to_numpy()[far]
        out = table.copy()
        out[[prep.region_columns[r] for r in regions]] = harmonized
        # out-of-range flags, vectorized over scans: one boolean column per feature
        names = [*self.iqms_, "age", "eTIV", "regional_profile"]
        etiv_out = np.zeros(len(table), dtype=bool)
        if self.etiv_range_ is not None and prep.etiv is not None:
            etiv_out = (prep.etiv < self.etiv_range_[0]) | (prep.etiv > self.etiv_range_[1])
        age_out = (prep.age < self.age_range_[0]) | (prep.age > self.age_range_[1])
        flagged = np.column_stack([ood, age_out, etiv_out, far])
        text = np.full(len(table), "", dtype=object)
        for j, name in enumerate(names):
            text = np.where(flagged[:, j], text + (name + ";"), text)
        text = pd.Series(text, dtype=object).str.rstrip(";").to_numpy()
        new = pd.DataFrame(
            {
                "nh_status": np.where(far, "unharmonized", "harmonized"),
                "nh_confidence": np.where(far, 0.0, np.round(conf, 4)),
                "nh_out_of_range": flagged.any(axis=1).astype(int),
                "nh_out_of_range_features": text,
                "nh_features_used": used,
                "nh_n_regions": np.where(far, 0, len(regions)),
            }
        )
        return pd.concat([out.drop(columns=[c for c in FLAG_COLUMNS if c in out]), new], axis=1)

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
        design = self._design(prep, fitting=False)
        mean = self.combat_.reference_mean(design)[0]
        half = 1.96 * self.combat_.sigma * self.ref_harmonized_sd_
        return pd.DataFrame(
            {"mean": mean, "lower": mean - half, "upper": mean + half}, index=self.regions_
        )

    # ------------------------------------------------------------------ cross-validation
    def _cross_validate(self, table, site_values, sex_mapping) -> dict:
        """LOSO: refit on all sites but one, harmonize the held-out site; compare to ComBat."""
        from neuroharmony_bids.harmonize.loso import loso_figures

        return loso_figures(self, table, site_values, sex_mapping)


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
