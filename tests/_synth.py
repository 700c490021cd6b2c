"""Small synthetic multi-site tables with known site effects, for fast unit tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from neuroharmony_bids.harmonize import features as F

REGIONS = F.ASEG_REGIONS[:12] + F.DK_REGIONS[:12]


def synth_table(
    n_sites: int = 6, per_site: int = 40, seed: int = 0, age_slope: float = -0.004
) -> pd.DataFrame:
    """Volumes = base · (1 + age effect + sex effect) · site scale + site shift + noise.

    Sites differ in their age distribution, so an unprotected ComBat would eat the age slope.
    A site's shift has a part shared by all regions (as real scanners make every structure
    look larger or smaller) and a part of each region's own.
    """
    rng = np.random.default_rng(seed)
    rows = []
    base = rng.uniform(2000, 12000, len(REGIONS))
    shared = np.random.default_rng([seed, 1]).normal(0, 0.045, n_sites)  # own stream
    for s in range(n_sites):
        shift = (shared[s] + rng.normal(0, 0.04, len(REGIONS))) * base
        scale = rng.uniform(0.8, 1.25)
        iqm_shift = rng.normal(0, 0.3, len(F.CORE_IQMS))
        age_lo = 8 + 6 * s
        for i in range(per_site):
            age = rng.uniform(age_lo, age_lo + 15)
            sex = "M" if rng.random() < 0.6 else "F"
            etiv = rng.normal(1.5e6, 1e5)
            bio = base * (1 + age_slope * (age - 20) + (0.05 if sex == "M" else 0))
            bio *= etiv / 1.5e6
            noise = rng.normal(0, 0.05, len(REGIONS)) * base * scale
            vol = bio + shift + noise
            row = {
                "participant_id": f"sub-s{s}x{i:03d}",
                "site": f"site{s}",
                "age": round(age, 2),
                "sex": sex,
                F.ETIV: etiv,
                "notes": f"free text {i}",
            }
            row.update(dict(zip(REGIONS, vol, strict=True)))
            iqm = np.exp(iqm_shift + rng.normal(0, 0.1, len(F.CORE_IQMS)))
            row.update(dict(zip(F.CORE_IQMS, iqm, strict=True)))
            rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs["true_age_slope"] = (base * age_slope).tolist()  # mm³ per year, every site
    return out
