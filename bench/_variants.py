"""Design variants of our harmonizer for comparisons, pluggable with ``--ours`` or ``--variants``.

python bench/quality.py --drift --ours _variants:fit_no_iqm_prior
python bench/quality.py --drift --ours _variants:fit_unrobust_iqms
python bench/quality.py --rows raw ours --variants fit_prior_only fit_weight_2 fit_own_region
"""

from __future__ import annotations

from functools import partial

from quality import fit_ours

#: The scan's regional profile alone (no IQM prior).
fit_no_iqm_prior = partial(fit_ours, iqm_prior=False)
#: IQMs neither clipped to the training range nor judged by their worst single value.
fit_unrobust_iqms = partial(fit_ours, robust_iqms=False)
#: Issue 14's frontier. The IQM prior alone: no profile update (all anatomy kept).
fit_prior_only = partial(fit_ours, profile_weight=0.0)
#: Cross-region update with the between-site covariance doubled / tripled (more removal).
fit_weight_2 = partial(fit_ours, profile_weight=2.0)
fit_weight_3 = partial(fit_ours, profile_weight=3.0)
#: The full posterior of the first release: each region also informs its own offset.
fit_own_region = partial(fit_ours, profile_update="own_region")
#: The full posterior with a halved / quartered gain (the first release's κ sweep).
fit_own_region_half = partial(fit_ours, profile_update="own_region", profile_weight=0.5)
fit_own_region_quarter = partial(fit_ours, profile_update="own_region", profile_weight=0.25)
