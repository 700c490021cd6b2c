"""Design variants of our harmonizer for comparisons, pluggable with ``--ours``.

python bench/quality.py --drift --ours _variants:fit_no_iqm_prior
python bench/quality.py --drift --ours _variants:fit_unrobust_iqms
"""

from __future__ import annotations

from functools import partial

from quality import fit_ours

#: The scan's regional profile alone (no IQM prior).
fit_no_iqm_prior = partial(fit_ours, iqm_prior=False)
#: IQMs neither clipped to the training range nor judged by their worst single value.
fit_unrobust_iqms = partial(fit_ours, robust_iqms=False)
