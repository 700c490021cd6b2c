"""A small SIMULATED multi-site BIDS dataset with FreeSurfer and MRIQC derivatives.

Run ``python -m neuroharmony_bids.testing.example OUT_DIR``. The data are simulated (no real person
was scanned): every file says so. They exist so that a fresh install can run the participant
and group levels end to end in seconds and show what the reports look like.

Volumes are drawn around the shipped model's age/sex/eTIV-matched reference when the model is
installed (so they look like what the model was trained on), else from a small built-in table
of plausible adult FreeSurfer volumes. Each simulated site then gets realistic scanner effects:
a multiplicative per-region location shift, a per-region scale change of the between-subject
spread (the two effects ComBat models), and shifted image quality metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neuroharmony_bids.harmonize.features import (
    ASEG_REGIONS,
    DK_LABELS,
    ETIV,
    canonical_region,
)

SEED = 20200715  # fixed: the example is byte-for-byte reproducible
SIMULATED_NAME = "SIMULATED example dataset for neuroharmony-bids (not real data)"

# --------------------------------------------------------------------------- built-in table

#: Plausible adult (≈30 y, eTIV 1.5 L) FreeSurfer volumes in mm³: (mean, SD). Round numbers
#: in the range reported for healthy adults; only used when no model is installed.
_ASEG_PLAUSIBLE: dict[str, tuple[float, float]] = {
    "Lateral-Ventricle": (8000, 4000), "Inf-Lat-Vent": (350, 180),
    "Cerebellum-White-Matter": (14500, 2000), "Cerebellum-Cortex": (52000, 6000),
    "Thalamus": (7500, 850), "Caudate": (3600, 450), "Putamen": (5000, 600),
    "Pallidum": (1900, 250), "Hippocampus": (4200, 420), "Amygdala": (1650, 220),
    "Accumbens-area": (550, 110), "VentralDC": (4000, 450),
    "vessel": (20, 12), "choroid-plexus": (650, 180),
}  # fmt: skip
_MIDLINE_PLAUSIBLE: dict[str, tuple[float, float]] = {
    "3rd-Ventricle": (1100, 400), "4th-Ventricle": (1700, 500), "Brain-Stem": (21000, 2500),
    "CSF": (1200, 330), "CC_Posterior": (950, 150), "CC_Mid_Posterior": (480, 90),
    "CC_Central": (480, 90), "CC_Mid_Anterior": (500, 100), "CC_Anterior": (850, 140),
    "5th-Ventricle": (0, 0), "WM-hypointensities": (1200, 600), "non-WM-hypointensities": (0, 0),
    "Optic-Chiasm": (200, 50),
}  # fmt: skip
_DK_PLAUSIBLE: dict[str, float] = {
    "bankssts": 2500, "caudalanteriorcingulate": 2000, "caudalmiddlefrontal": 6500,
    "cuneus": 3300, "entorhinal": 1900, "fusiform": 10000, "inferiorparietal": 12500,
    "inferiortemporal": 11000, "isthmuscingulate": 2600, "lateraloccipital": 12000,
    "lateralorbitofrontal": 8000, "lingual": 7200, "medialorbitofrontal": 5500,
    "middletemporal": 11500, "parahippocampal": 2200, "paracentral": 3600,
    "parsopercularis": 4500, "parsorbitalis": 2300, "parstriangularis": 3800,
    "pericalcarine": 2000, "postcentral": 10000, "posteriorcingulate": 3200,
    "precentral": 13000, "precuneus": 10000, "rostralanteriorcingulate": 2300,
    "rostralmiddlefrontal": 17000, "superiorfrontal": 23000, "superiorparietal": 13500,
    "superiortemporal": 12500, "supramarginal": 11000, "frontalpole": 900,
    "temporalpole": 2400, "transversetemporal": 1100, "insula": 7000,
}  # fmt: skip

#: Plausible MRIQC T1w IQMs for 1 mm MPRAGE-like scans: (mean, between-site SD, within SD).
_IQM_PLAUSIBLE: dict[str, tuple[float, float, float]] = {
    "fwhm_avg": (3.8, 0.5, 0.15), "fwhm_x": (3.7, 0.5, 0.15), "fwhm_y": (4.1, 0.6, 0.2),
    "fwhm_z": (3.7, 0.5, 0.15), "snr_total": (10.0, 1.5, 0.8), "snr_gm": (9.5, 1.5, 0.9),
    "snr_wm": (17.0, 2.5, 1.2), "snr_csf": (2.2, 0.6, 0.3), "snrd_total": (22.0, 8.0, 3.0),
    "snrd_gm": (21.0, 8.0, 3.0), "snrd_wm": (33.0, 12.0, 4.0), "snrd_csf": (10.0, 4.0, 1.5),
    "qi_1": (0.001, 0.0005, 0.0003), "cnr": (3.5, 0.6, 0.3), "cjv": (0.36, 0.06, 0.03),
    "efc": (0.70, 0.05, 0.01),
}  # fmt: skip


@dataclass(frozen=True)
class Site:
    """One simulated scanner: its label, scanner metadata, voxel size and age span."""

    label: str
    manufacturer: str
    model: str
    field_strength: float
    voxel: tuple[float, float, float]
    ages: tuple[float, float]
    repetition_time: float
    inversion_time: float
    echo_time: float


SITES: list[Site] = [
    Site("siteA", "Siemens", "Prisma_fit", 3.0, (1.0, 1.0, 1.0), (8, 35), 2.3, 0.9, 0.00232),
    Site("siteB", "GE", "DISCOVERY MR750", 3.0, (1.2, 0.9375, 0.9375), (15, 50), 7.3, 0.45, 0.0029),
    Site("siteC", "Philips", "Achieva", 3.0, (1.0, 1.0, 1.2), (25, 60), 8.1, 1.0, 0.0037),
    Site("siteD", "Siemens", "TrioTim", 3.0, (1.1, 0.9, 0.9), (18, 45), 2.53, 1.1, 0.00344),
]


def plausible_reference(age: float, sex: str, etiv: float) -> pd.DataFrame:
    """Built-in reference (mean, lower, upper) for one subject when no model is installed.

    Volumes scale with head size (exponent 0.8); cortex thins with age after 20 and ventricles
    widen after 40: coarse, but enough to make age curves look like age curves.
    """
    rows: dict[str, tuple[float, float]] = {}
    for name, ms in _ASEG_PLAUSIBLE.items():
        rows[f"Left-{name}"] = ms
        rows[f"Right-{name}"] = ms
    rows.update(_MIDLINE_PLAUSIBLE)
    for hemi in ("lh", "rh"):
        for lab, mean in _DK_PLAUSIBLE.items():
            rows[f"{hemi}_{lab}_volume"] = (mean, 0.12 * mean)
    ref = pd.DataFrame(rows, index=["mean", "sd"]).T
    size = (etiv / 1.5e6) ** 0.8
    grey = 1.0 - 0.0025 * (age - 20.0) if age > 20 else 1.0 + 0.004 * (20.0 - age)
    vent = 1.0 + 0.03 * max(age - 40.0, 0.0)
    factor = pd.Series(size, index=ref.index)
    cortical = [r for r in ref.index if r.endswith("_volume") or "Cortex" in r]
    factor[cortical] *= grey
    ventricles = [r for r in ref.index if "Vent" in r]
    factor[ventricles] *= vent
    mean = ref["mean"] * factor
    sd = ref["sd"] * factor
    return pd.DataFrame({"mean": mean, "lower": mean - 1.96 * sd, "upper": mean + 1.96 * sd})


# --------------------------------------------------------------------------- simulation


def shipped_model() -> Any | None:
    """The shipped model, or None when it (or the model API) is not installed."""
    try:
        from neuroharmony_bids.harmonize.io import load_model
    except ImportError:
        return None
    try:
        return load_model(None)
    except Exception:  # noqa: BLE001 - any failure means: fall back to the built-in table
        return None


def _etiv(rng: np.random.Generator, sex: str) -> float:
    return float(rng.normal(1.60e6, 1.2e5) if sex == "M" else rng.normal(1.42e6, 1.1e5))


def _derived_measures(vols: Mapping[str, float], rng: np.random.Generator, etiv: float) -> dict:
    """aseg header measures consistent with the simulated structures (what recon-all adds)."""
    out = {}
    size = etiv / 1.5e6
    for hemi in ("lh", "rh"):
        out[f"{hemi}CortexVol"] = 1.02 * sum(vols[f"{hemi}_{lab}_volume"] for lab in DK_LABELS)
        out[f"{hemi}CerebralWhiteMatterVol"] = float(rng.normal(235000, 20000) * size)
    out["CortexVol"] = out["lhCortexVol"] + out["rhCortexVol"]
    out["CerebralWhiteMatterVol"] = (
        out["lhCerebralWhiteMatterVol"] + out["rhCerebralWhiteMatterVol"]
    )
    sub = ["Thalamus", "Caudate", "Putamen", "Pallidum", "Hippocampus", "Amygdala"]
    sub += ["Accumbens-area", "VentralDC"]
    out["SubCortGrayVol"] = sum(vols[f"{h}-{s}"] for h in ("Left", "Right") for s in sub)
    cerebellum = vols["Left-Cerebellum-Cortex"] + vols["Right-Cerebellum-Cortex"]
    out["TotalGrayVol"] = out["CortexVol"] + out["SubCortGrayVol"] + cerebellum
    vent = sum(
        vols.get(k, 0.0)
        for k in (
            "Left-Lateral-Ventricle", "Right-Lateral-Ventricle", "Left-Inf-Lat-Vent",
            "Right-Inf-Lat-Vent", "3rd-Ventricle", "4th-Ventricle", "5th-Ventricle",
            "Left-choroid-plexus", "Right-choroid-plexus",
        )
    )  # fmt: skip
    cereb_wm = vols["Left-Cerebellum-White-Matter"] + vols["Right-Cerebellum-White-Matter"]
    cc = sum(vols[k] for k in ASEG_REGIONS if k.startswith("CC_"))
    brain = (
        (
            out["TotalGrayVol"]
            + out["CerebralWhiteMatterVol"]
            + cereb_wm
            + vol_sum(vols, "Brain-Stem")
        )
        + cc
        + vent
        + vols.get("CSF", 0.0)
    )
    out["BrainSegVol"] = brain
    out["BrainSegVolNotVent"] = brain - vent - vols.get("CSF", 0.0)
    out["VentricleChoroidVol"] = vent
    out["SupraTentorialVol"] = brain - cerebellum - cereb_wm - vol_sum(vols, "Brain-Stem")
    out["SupraTentorialVolNotVent"] = out["SupraTentorialVol"] - vent
    out["MaskVol"] = 1.25 * brain
    out["BrainSegVol-to-eTIV"] = brain / etiv
    out["MaskVol-to-eTIV"] = out["MaskVol"] / etiv
    for hemi in ("lh", "rh"):
        out[f"{hemi}SurfaceHoles"] = float(rng.integers(5, 40))
    out["SurfaceHoles"] = out["lhSurfaceHoles"] + out["rhSurfaceHoles"]
    return out


def vol_sum(vols: Mapping[str, float], *names: str) -> float:
    """Sum of the named volumes present (0 for absent ones)."""
    return float(sum(vols.get(n, 0.0) for n in names))


def _iqm_table(model: Any | None) -> dict[str, tuple[float, float, float]]:
    """(centre, between-site SD, within-site SD) per IQM.

    From the model's training distribution when available (its median and robust scale, so the
    example's IQMs look like the training data's and trigger no drift warning), else built-in.
    """
    table = dict(_IQM_PLAUSIBLE)
    names = getattr(model, "iqms_", None) or []
    centre = getattr(model, "iqm_center_", None)
    scale = getattr(model, "iqm_scale_", None)
    if centre is None or scale is None:
        return table

    def raw(t: float) -> float:  # inverse of harmonize.model.iqm_transform
        return float(np.sign(t) * np.expm1(abs(t)))

    for name, c, sc in zip(names, centre, scale, strict=True):
        mid = raw(c)
        spread = abs(raw(c + sc) - mid)
        if np.isfinite(spread) and spread > 0:
            table[name] = (mid, 0.3 * spread, 0.3 * spread)
    return table


def _noisy_scan_iqms(spec: Mapping[str, tuple[float, float, float]], model: Any | None) -> dict:
    """IQMs of a noisy scan, outside the model's training range when the range is known."""
    iqm_range = getattr(model, "iqm_range_", None) or {}
    out = {}
    for name, worse_high in (
        ("cjv", True),
        ("snr_total", False),
        ("snr_gm", False),
        ("cnr", False),
    ):
        centre = spec[name][0]
        if name in iqm_range:
            low, high = (float(b) for b in list(iqm_range[name])[:2])
            width = high - low
            value = high + 0.25 * width if worse_high else low - 0.25 * width
            if value <= 0:
                value = 0.5 * low
        else:
            value = centre * (2.0 if worse_high else 0.4)
        out[name] = round(float(value), 6)
    return out


@dataclass(frozen=True)
class _Covariance:
    """Cholesky factors of a fitted model's within- and between-site region covariances."""

    regions: list[str]
    within: np.ndarray
    between: np.ndarray
    sd_ratio: dict[str, float]


def _model_covariance(model: Any | None) -> _Covariance | None:
    """The structure of real regional variation, when the model carries it (else None)."""
    try:
        regions = [canonical_region(str(r)) for r in model.regions_]  # type: ignore[union-attr]
        within = np.asarray(model.within_cov_, dtype=float)  # type: ignore[union-attr]
        between = np.asarray(model.between_cov_, dtype=float)  # type: ignore[union-attr]
        ratio = np.broadcast_to(
            np.asarray(model.ref_harmonized_sd_, dtype=float),  # type: ignore[union-attr]
            (len(regions),),
        )
        eye = 1e-9 * np.eye(len(regions))
        return _Covariance(
            regions,
            np.linalg.cholesky(within + eye),
            np.linalg.cholesky(between + eye),
            dict(zip(regions, ratio, strict=True)),
        )
    except (AttributeError, TypeError, ValueError, np.linalg.LinAlgError):
        return None


def simulate_table(
    seed: int = SEED,
    sites: Sequence[Site] = tuple(SITES),
    n_per_site: int = 6,
    model: Any | None = None,
    out_of_range_scan: bool = True,
) -> pd.DataFrame:
    """The simulated group table: one row per scan, columns as the BIDS App collects them.

    With ``out_of_range_scan`` the last scan of the last site gets an image-quality problem
    (a very noisy scan), so the reports can show what an out-of-range flag looks like.
    """
    rng = np.random.default_rng(seed)
    iqm_spec = _iqm_table(model)
    iqm_names = [n for n in iqm_spec if not n.startswith("spacing_")]
    cov = _model_covariance(model)
    rows = []
    for s_idx, site in enumerate(sites):
        site_rng = np.random.default_rng([seed, s_idx])
        iqm_shift = {n: site_rng.normal(0, spec[1]) for n, spec in iqm_spec.items()}
        global_loc = site_rng.normal(0, 0.04)
        # the site's effect on the model's regions follows the between-site covariance the
        # model learned (in standardized units); other regions get independent shifts
        gamma = {}
        if cov is not None:
            gamma = dict(
                zip(
                    cov.regions,
                    cov.between @ site_rng.standard_normal(len(cov.regions)),
                    strict=True,
                )
            )
        loc_cache: dict[str, float] = {}
        scale_cache: dict[str, float] = {}
        for j in range(n_per_site):
            k = s_idx * n_per_site + j + 1
            sex = "M" if rng.random() < 0.6 else "F"
            age = float(np.round(rng.uniform(*site.ages), 1))
            etiv = _etiv(rng, sex)
            ref = None
            if model is not None and hasattr(model, "reference_range"):
                ref = model.reference_range(age, sex, etiv)
            builtin = plausible_reference(age, sex, etiv)
            if ref is None:
                ref = builtin
            else:
                ref = pd.concat(
                    [ref[["mean", "lower", "upper"]], builtin.drop(ref.index, errors="ignore")]
                )
            ref.index = [canonical_region(str(r)) for r in ref.index]
            ref = ref[~ref.index.duplicated()]
            mean = ref["mean"].to_numpy(float)
            sd = np.maximum((ref["upper"] - ref["lower"]).to_numpy(float) / 3.92, 0.0)
            common = rng.standard_normal()
            z = 0.4 * common + np.sqrt(1 - 0.16) * rng.standard_normal(len(mean))
            if cov is not None:
                # within-site residuals correlated as in the training cohort
                zm = dict(
                    zip(
                        cov.regions, cov.within @ rng.standard_normal(len(cov.regions)), strict=True
                    )
                )
                z = np.array([zm.get(r, zi) for r, zi in zip(ref.index, z, strict=True)])
            for r in ref.index:
                if r not in loc_cache:
                    loc_cache[r] = global_loc + site_rng.normal(0, 0.08)
                    scale_cache[r] = float(np.exp(site_rng.normal(0, 0.15)))
            scale = np.array([scale_cache[r] for r in ref.index])
            if cov is not None:
                # model regions: ComBat-like shift gamma·sigma, sigma = reference SD / its
                # harmonized shrinkage; others: multiplicative shift
                ratio = np.array([cov.sd_ratio.get(r, np.nan) for r in ref.index])
                shift = np.array(
                    [
                        gamma[r] * sd_i / ratio_i if r in gamma else loc_cache[r] * m_i
                        for r, sd_i, ratio_i, m_i in zip(ref.index, sd, ratio, mean, strict=True)
                    ]
                )
            else:
                shift = np.array([loc_cache[r] for r in ref.index]) * mean
            vol = mean + shift + z * sd * scale
            vol = np.where(mean > 0, np.maximum(vol, 0.05 * mean), 0.0)
            vols = dict(zip(ref.index, np.round(vol, 1), strict=True))
            vols.update(
                {k2: v for k2, v in _derived_measures(vols, rng, etiv).items() if k2 not in vols}
            )
            vols[ETIV] = round(etiv, 1)
            iqms = {}
            for n in iqm_names:
                centre, _, within = iqm_spec[n]
                iqms[n] = max(float(centre + iqm_shift[n] + rng.normal(0, within)), 0.0)
            iqms["spacing_x"], iqms["spacing_y"], iqms["spacing_z"] = site.voxel
            # image size in voxels is a property of the protocol: whole numbers, one per site
            for axis, fov in zip("xyz", (176.0, 256.0, 256.0), strict=True):
                if f"size_{axis}" in iqms:
                    iqms[f"size_{axis}"] = float(round(fov / site.voxel["xyz".index(axis)]))
            if out_of_range_scan and s_idx == len(sites) - 1 and j == n_per_site - 1:
                iqms.update(_noisy_scan_iqms(iqm_spec, model))
            row = {
                "participant_id": f"sub-{k:03d}",
                "site": site.label,
                "Manufacturer": site.manufacturer,
                "ManufacturersModelName": site.model,
                "age": age,
                "sex": sex,
                **{n: round(v, 6) for n, v in iqms.items()},
                **vols,
            }
            rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- writing


_README = """\
SIMULATED DATA: NOT A REAL STUDY
================================

This dataset was generated by `python -m neuroharmony_bids.testing.example` (neuroharmony-bids
{version}, seed {seed}). No person was scanned. It exists to demonstrate and test the
neuroharmony-bids BIDS App on a fresh machine in under a minute.

- {n_sites} simulated sites x {n_per_site} simulated participants ({sites}), one T1w scan each.
- `sub-*/anat/*_T1w.nii.gz` are tiny placeholder images (an ellipsoid); the analysis uses the
  derivatives, not the images.
- `derivatives/freesurfer/sub-*/stats/` hold FreeSurfer {fs_version}-layout `aseg.stats` and
  `?h.aparc.stats` files with simulated volumes (each file says it is synthetic).
- `derivatives/mriqc/sub-*/anat/*_T1w.json` hold simulated MRIQC image quality metrics.
- Volumes were drawn around {source}, then given per-site scanner effects: a multiplicative
  per-region location shift (SD 8 % per region plus a site-wide shift of SD 4 %; with the shipped model, shifts drawn from
  the between-site covariance it learned), a per-region change
  of the between-subject spread (scale), and shifted image quality metrics per site.
- The last participant of the last site has deliberately poor image quality (noisy scan) so
  the reports show what an out-of-range flag looks like.

Run the app on it:

    python run.py {{this folder}} {{output}} participant
    python run.py {{this folder}} {{output}} group
"""


def _sidecar_update(root: Path, table: pd.DataFrame, sites: Sequence[Site]) -> None:
    """Give each scan its site's acquisition parameters (the fixture builder writes one)."""
    from neuroharmony_bids.atomic import write_text

    by_label = {s.label: s for s in sites}
    for _, row in table.iterrows():
        site = by_label[row["site"]]
        sub = row["participant_id"]
        path = root / sub / "anat" / f"{sub}_T1w.json"
        meta = json.loads(path.read_text())
        meta.update(
            {
                "MagneticFieldStrength": site.field_strength,
                "RepetitionTime": site.repetition_time,
                "InversionTime": site.inversion_time,
                "EchoTime": site.echo_time,
                "SoftwareVersions": "simulated",
            }
        )
        write_text(path, json.dumps(meta, indent=2, sort_keys=True) + "\n")


def write_example_dataset(
    out_dir: str | os.PathLike,
    seed: int = SEED,
    n_per_site: int = 6,
    model: Any | None = None,
    use_model: bool = True,
) -> Path:
    """Write the simulated BIDS dataset (raw + FreeSurfer + MRIQC derivatives) to ``out_dir``.

    Uses the shipped model's reference for plausible volumes when installed (``use_model``);
    the same seed and model give byte-identical files.
    """
    from neuroharmony_bids._version import __version__
    from neuroharmony_bids.atomic import write_text
    from neuroharmony_bids.testing.fixtures import build_bids_dataset

    root = Path(out_dir)
    if root.exists() and any(root.iterdir()):
        if not (root / "dataset_description.json").is_file():
            raise FileExistsError(f"{root} exists and is not empty; choose a new folder")
        desc = json.loads((root / "dataset_description.json").read_text())
        if desc.get("Name") != SIMULATED_NAME:
            raise FileExistsError(f"{root} holds another dataset; refusing to overwrite it")
    if model is None and use_model:
        model = shipped_model()
    fs_version = "7.4.1"
    table = simulate_table(seed=seed, n_per_site=n_per_site, model=model)
    rows = table.assign(subject_label=table["participant_id"].str.replace("sub-", "", n=1))
    build_bids_dataset(
        root,
        rows,
        id_column="subject_label",
        site_column="site",
        age_column="age",
        sex_column="sex",
        manufacturer_column="Manufacturer",
        model_column="ManufacturersModelName",
        fs_version=fs_version,
        mriqc_version="24.0.2",
        mriqc_layout="bids",
    )
    _sidecar_update(root, table, SITES)
    description = {
        "Name": SIMULATED_NAME,
        "BIDSVersion": "1.10.0",
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["neuroharmony-bids developers (simulated data)"],
        "HowToAcknowledge": "Simulated data: nothing to acknowledge; do not use for science.",
        "GeneratedBy": [
            {
                "Name": "neuroharmony_bids.testing.example",
                "Version": __version__,
                "Description": f"SIMULATED multi-site dataset, seed {seed}",
            }
        ],
    }
    write_text(root / "dataset_description.json", json.dumps(description, indent=2) + "\n")
    source = (
        "the shipped model's age/sex/eTIV-matched reference ranges"
        if model is not None and hasattr(model, "reference_range")
        else "a built-in table of plausible adult FreeSurfer volumes"
    )
    write_text(
        root / "README",
        _README.format(
            version=__version__,
            seed=seed,
            n_sites=len(SITES),
            n_per_site=n_per_site,
            sites=", ".join(f"{s.label}: {s.manufacturer} {s.model}" for s in SITES),
            fs_version=fs_version,
            source=source,
        ),
    )
    for sub in ("freesurfer", "mriqc"):
        path = root / "derivatives" / sub / "dataset_description.json"
        desc = json.loads(path.read_text())
        desc["Name"] = f"SIMULATED {desc['Name']}"
        write_text(path, json.dumps(desc, indent=2) + "\n")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m neuroharmony_bids.testing.example OUT_DIR``: write the simulated dataset."""
    parser = argparse.ArgumentParser(
        prog="python -m neuroharmony_bids.testing.example",
        description="Write a small SIMULATED multi-site BIDS dataset with FreeSurfer and MRIQC "
        "derivatives, for trying neuroharmony-bids.",
    )
    parser.add_argument("out_dir", type=Path, help="folder to create (the BIDS root)")
    parser.add_argument("--seed", type=int, default=SEED, help=f"random seed (default {SEED})")
    parser.add_argument(
        "--per-site", type=int, default=6, help="simulated participants per site (default 6)"
    )
    parser.add_argument(
        "--no-model",
        action="store_true",
        help="simulate from the built-in table even when the shipped model is installed",
    )
    args = parser.parse_args(argv)
    try:
        root = write_example_dataset(
            args.out_dir, seed=args.seed, n_per_site=args.per_site, use_model=not args.no_model
        )
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 64
    print(f"Wrote SIMULATED BIDS dataset to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
