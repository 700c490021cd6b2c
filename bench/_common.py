"""Shared plumbing for the benchmarks: the ABIDE table, covariates, ComBat, caching.

Kept out of the package on purpose: benchmarks may depend on neuroHarmonize, joblib caches
and the shared data folder; the package must not.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as `python bench/quality.py` from a checkout
    sys.path.insert(0, str(REPO))

from neuroharmony_bids.harmonize import features  # noqa: E402

REGIONS: list[str] = list(features.NEUROHARMONY_REGIONS)
ABIDE_RELPATH = Path("abide1") / "abide1_fs6_mriqc_pheno.csv"
SITE = "site"
COVARIATES = ["age", "sex", "dx", "etiv"]


def shared_data_dir() -> Path | None:
    """$NEUROHARMONY_SHARED_DATA, else ../shared/data beside the checkout (as tests/conftest)."""
    env = os.environ.get("NEUROHARMONY_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    for c in candidates:
        if (c / ABIDE_RELPATH).is_file():
            return c
    return None


def require_abide() -> Path:
    """Path of the ABIDE table, or exit with a message saying where it was looked for."""
    base = shared_data_dir()
    if base is None:
        sys.exit(
            f"benchmark data not found: {ABIDE_RELPATH} was looked for under "
            "$NEUROHARMONY_SHARED_DATA and ../shared/data beside the checkout. Set "
            "NEUROHARMONY_SHARED_DATA to the folder that holds abide1/."
        )
    return base / ABIDE_RELPATH


def _dx01(values: pd.Series) -> np.ndarray:
    """ABIDE diagnosis → 1 = autism, 0 = control (accepts ASD/TDC text or the 1/2 codes)."""
    s = values.astype(str).str.strip().str.upper()
    mapping = {"ASD": 1, "AUTISM": 1, "1": 1, "1.0": 1, "TDC": 0, "CONTROL": 0, "2": 0, "2.0": 0}
    out = s.map(mapping)
    if out.isna().any():
        raise SystemExit(f"unknown diagnosis codes: {sorted(set(s[out.isna()]))}")
    return out.to_numpy(dtype=float)


def _sex_mf(values: pd.Series) -> pd.Series:
    """ABIDE sex → 'M'/'F' (text, or the ABIDE numeric code 1 = male, 2 = female)."""
    return features.parse_sex(values, mapping={"1": "M", "2": "F"})


def load_abide(path: Path | None = None, drop_failed: bool = True) -> pd.DataFrame:
    """The ABIDE table with canonical region names and bench columns site/age/sex/dx/etiv.

    ``drop_failed`` drops scans with a zero regional volume (failed segmentation). IQMs keep their ``iqm_`` prefix; FreeSurfer 6 names become canonical (FreeSurfer 7).
    Rows are sorted by site then subject so that every run sees the same order.
    """
    df = pd.read_csv(path or require_abide())
    df = df.rename(columns=features.canonical_columns(df.columns))
    missing = [r for r in REGIONS + [features.ETIV] if r not in df.columns]
    if missing:
        raise SystemExit(f"ABIDE table lacks region columns: {missing[:5]}...")
    out = pd.DataFrame(
        {
            "participant_id": "sub-" + df["SUB_ID"].astype(str),
            SITE: df["SITE_ID"].astype(str),
            "vendor": df.get("vendor", pd.Series("n/a", index=df.index)).astype(str),
            "age": df["AGE_AT_SCAN"].astype(float),
            "sex": _sex_mf(df["sex"]),
            "dx": _dx01(df["dx"]),
            "etiv": df[features.ETIV].astype(float),
        }
    )
    iqms = iqm_columns(df)
    out = pd.concat([out, df[iqms].astype(float), df[REGIONS].astype(float)], axis=1)
    out = out.sort_values([SITE, "participant_id"], kind="mergesort").reset_index(drop=True)
    if out[iqms + REGIONS].isna().any().any():
        raise SystemExit("ABIDE table has missing IQMs or volumes")
    if drop_failed:
        # a zero volume is a failed segmentation (9 ABIDE scans); every method sees the same rows
        failed = (out[REGIONS] <= 0).any(axis=1)
        out = out[~failed].reset_index(drop=True)
    return out


def iqm_columns(df: pd.DataFrame) -> list[str]:
    """The MRIQC IQM columns (``iqm_`` prefix), in table order."""
    return [c for c in df.columns if str(c).startswith("iqm_")]


def covariates(df: pd.DataFrame) -> pd.DataFrame:
    """age, sex (M/F), dx (0/1), eTIV: what the metrics adjust for and ComBat protects."""
    return df[COVARIATES].reset_index(drop=True)


def for_model(df: pd.DataFrame) -> pd.DataFrame:
    """A table as a user would hand it to the harmonizer: MRIQC IQM names, eTIV under its name."""
    t = df.rename(columns={c: c[4:] for c in iqm_columns(df)})
    return t.rename(columns={"etiv": features.ETIV})


def combat(
    volumes: pd.DataFrame,
    site: np.ndarray | pd.Series,
    covars: pd.DataFrame | None,
    ref_batch: str | None = None,
) -> pd.DataFrame:
    """neuroCombat (parametric EB) with batch = site; ``covars`` protected (None = batch only).

    Categorical covariates: sex, dx; continuous: the others. neuroCombat's chatter is muted.
    """
    from neuroCombat import neuroCombat

    cv = pd.DataFrame({"batch": np.asarray(site).astype(str)})
    cat, cont = [], []
    if covars is not None:
        for c in covars.columns:
            col = covars[c].reset_index(drop=True)
            if c == "sex":
                cv[c] = (col == "M").astype(int)
                cat.append(c)
            elif c == "dx":
                cv[c] = col.astype(int)
                cat.append(c)
            else:
                cv[c] = col.astype(float)
                cont.append(c)
    with contextlib.redirect_stdout(io.StringIO()):
        res = neuroCombat(
            dat=volumes.to_numpy(dtype=float).T,
            covars=cv,
            batch_col="batch",
            categorical_cols=cat or None,
            continuous_cols=cont or None,
            ref_batch=ref_batch,
        )
    return pd.DataFrame(res["data"].T, index=volumes.index, columns=volumes.columns)


def cache_dir() -> Path:
    """Where expensive results are memoized: $NEUROHARMONY_BENCH_CACHE or ~/.cache (never the repo)."""
    env = os.environ.get("NEUROHARMONY_BENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "neuroharmony-bids" / "bench"


def git_commit() -> str | None:
    """The repository's HEAD commit (None outside a git checkout): recorded beside figures."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def memory(enabled: bool = True):
    """A joblib.Memory under :func:`cache_dir` (or a no-op one when ``enabled`` is False)."""
    from joblib import Memory

    return Memory(str(cache_dir()) if enabled else None, verbose=0)


def drift_iqms(df: pd.DataFrame, seed: int = 0, jitter_sd: float = 0.1) -> pd.DataFrame:
    """IQMs as another MRIQC version might report them (issue 8's drift scenario).

    ``snrd_*`` ×20, ``efc`` ×0.7, ``snr_*`` ×1.3, and every IQM times a random factor
    exp(N(0, jitter_sd)) drawn once per IQM from ``seed`` (so the same factors for all scans).
    """
    out = df.copy()
    cols = iqm_columns(df)
    rng = np.random.default_rng(seed)
    factors = dict(zip(cols, np.exp(rng.normal(0.0, jitter_sd, len(cols))), strict=True))
    for c in cols:
        name = c[4:]
        f = factors[c]
        if name.startswith("snrd_"):
            f *= 20.0
        elif name.startswith("snr_"):
            f *= 1.3
        elif name == "efc":
            f *= 0.7
        out[c] = df[c] * f
    return out


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Rows of dicts → a markdown table; columns are (key, header, format)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for key, _, fmt in columns:
            v = r.get(key)
            if v is None or (isinstance(v, float) and not np.isfinite(v)):
                cells.append("n/a")
            elif fmt:
                cells.append(format(v, fmt))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
