"""Dataset-level IQM drift: is this whole dataset's IQM distribution shifted from training?

Another MRIQC release (which rescaled ``snrd_*`` and ``efc``) or another protocol moves every
scan at once; per-scan range flags then fire everywhere but say nothing about the cause. Here a
dataset's (or site's) median IQM is compared with how far any *training site's* median sat from
the training centre, so "shifted" means "more shifted than every site the model learned from".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from neuroharmony_bids.harmonize.model import NeuroHarmonizer, iqm_transform
from neuroharmony_bids.harmonize.table import iqm_columns


@dataclass(frozen=True)
class DriftReport:
    """Per IQM: the dataset's median in training-robust-z units, the limit, and the verdict."""

    table: pd.DataFrame  # index: IQM; columns: median_z, limit, shifted
    n_scans: int
    n_sites: int

    @property
    def shifted(self) -> list[str]:
        return list(self.table.index[self.table["shifted"]])

    def message(self) -> str:
        """Plain-language verdict for logs and the group report."""
        if not self.shifted:
            return (
                f"IQM drift: none. The {self.n_scans} scans' IQMs sit where the training sites' "
                "did."
            )
        names = ", ".join(
            f"{n} ({self.table.loc[n, 'median_z']:+.1f} vs ≤{self.table.loc[n, 'limit']:.1f})"
            for n in self.shifted
        )
        advice = (
            "Several scans per scanner are available: use the joint path (group level with "
            "--site-column, or `neuroharmony harmonize --site-column`), which estimates each "
            "scanner's effect from its own scans and does not depend on IQM scales."
            if self.n_sites and self.n_scans >= 2 * self.n_sites
            else "Collect several scans per scanner to use the joint path, which does not depend "
            "on IQM scales."
        )
        return (
            f"IQM drift: this dataset's IQMs are shifted as a whole from the model's training "
            f"data in {len(self.shifted)} IQM(s): {names} (median in robust-z units; limit = "
            f"the most any training site was shifted). A different MRIQC version or protocol is "
            f"the usual cause. The IQM-based part of the correction is switched off for such "
            f"scans by its confidence; {advice}"
        )


def detect_drift(
    table: pd.DataFrame, model: NeuroHarmonizer, site_column: str | None = None
) -> DriftReport:
    """Compare the dataset's median IQMs with the spread of training-site medians."""
    cols = iqm_columns(list(table.columns))
    names = [n for n in model.iqms_ if n in cols]
    rows = []
    for name in names:
        j = model.iqms_.index(name)
        values = pd.to_numeric(table[cols[name]], errors="coerce").to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if not len(values):
            continue
        z = (iqm_transform(values) - model.iqm_center_[j]) / model.iqm_scale_[j]
        median = float(np.median(z))
        limit = float(model.iqm_site_shift_[j])
        rows.append((name, median, limit, abs(median) > limit))
    out = pd.DataFrame(rows, columns=["iqm", "median_z", "limit", "shifted"]).set_index("iqm")
    n_sites = int(table[site_column].nunique()) if site_column and site_column in table else 0
    return DriftReport(out, n_scans=len(table), n_sites=n_sites)
