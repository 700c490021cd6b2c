"""Reliability of the BIDS layer and the drivers: several T1w per subject, datasets under
datatype-named folders, overlapping output folders, hostile JSON, odd labels, interrupted runs,
large datasets (issues 13.5-13.6, 16.1, 16.4-16.5).

The scenarios live in ``bench/_reliability_bids.py`` (counted by ``bench/reliability.py``).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _reliability_bids as RB  # noqa: E402
from neuroharmony_bids.harmonize.apply import harmonize_table  # noqa: E402
from neuroharmony_bids.harmonize.io import load_model  # noqa: E402
from neuroharmony_bids.testing import abide_rows  # noqa: E402


def _param(s: RB.Scenario):
    marks = [pytest.mark.slow] if s.slow else []
    if s.run is RB.large_dataset_validates and shutil.which("bids-validator-deno") is None:
        marks.append(pytest.mark.skip(reason="bids-validator-deno is not on PATH"))
    return pytest.param(s, id=s.name.split(" (")[0].replace(" ", "_"), marks=marks)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", [_param(s) for s in RB.SCENARIOS])
def test_bids_scenario(scenario, abide_table, tmp_path):
    problems = scenario.run(abide_table, tmp_path)
    assert not problems, "\n".join(problems)


def test_repeated_scans_of_one_person_count_once_in_the_joint_path(abide_table):
    """Five copies of one person's scan at a site do not outvote the site's other people."""
    model = load_model()
    site = abide_table[abide_table["SITE_ID"] == "KKI"]
    rows = abide_rows(RB._usable(site), 6, seed=2).reset_index(drop=True)
    rows["participant_id"] = [f"sub-{i}" for i in range(len(rows))]
    rows["bids_name"] = [f"sub-{i}_T1w" for i in range(len(rows))]
    rows["site"], rows["age"] = "KKI", rows["AGE_AT_SCAN"]
    copies = pd.concat([rows.iloc[[0]]] * 4, ignore_index=True)
    copies["bids_name"] = [f"sub-0_run-{k}_T1w" for k in range(2, 6)]
    repeated = pd.concat([rows, copies], ignore_index=True)
    kw = {"site_column": "site", "person_column": "participant_id"}
    once = harmonize_table(rows, model, **kw)
    weighted = harmonize_table(repeated, model, **kw)
    naive = harmonize_table(repeated, model, site_column="site")
    regions = [c for c in model.regions_ if c in rows.columns]
    others = list(range(1, len(rows)))
    np.testing.assert_allclose(
        weighted.iloc[others][regions].to_numpy(float), once.iloc[others][regions].to_numpy(float)
    )
    assert not np.allclose(
        naive.iloc[others][regions].to_numpy(float), once.iloc[others][regions].to_numpy(float)
    )
    # the copies of one scan are harmonized alike
    same = weighted[weighted["participant_id"] == "sub-0"][regions].to_numpy(float)
    np.testing.assert_allclose(same, np.repeat(same[:1], len(same), axis=0))
