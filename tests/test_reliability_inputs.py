"""Bad inputs: the right BIDS-Apps exit code, a message naming what/where/how, no partial output.

Each case builds a 2-scan dataset from ABIDE rows (testing/fixtures.py), breaks one thing and
runs ``neuroharmony_bids.cli.run.main`` (SystemExit carries the exit code). The cases live in
``bench/reliability.py`` (shared with the tally); see :class:`BadInput` for what is checked.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import reliability as R  # noqa: E402

# Bugs found by these cases (fixed in d994e04) would be listed here as strict xfails.
KNOWN_BUGS: dict[str, str] = {}


def _param(case: R.BadInput):
    marks = []
    if case.name in KNOWN_BUGS:
        marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[case.name]))
    return pytest.param(case, id=case.name.replace(" ", "_"), marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in R.BAD_INPUTS])
def test_bad_input(case, abide_table, tmp_path):
    problems = R.run_bad_input(case, abide_table, tmp_path)
    assert not problems, "\n".join(problems)


def test_crafted_pickle_never_runs(abide_table, tmp_path):
    """Both pickle protocols are refused before anything is unpickled (marker absent)."""
    for case in R.BAD_INPUTS:
        if "pickle" in case.name:
            sub = tmp_path / case.name.replace(" ", "_")
            assert R.run_bad_input(case, abide_table, sub) == []
            assert (sub / "model.json").is_file()
            assert not (sub / "PWNED").exists()


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.name.replace(" ", "_")) for c in R.TABLE_INPUTS]
)
def test_table_input(case, abide_table, tmp_path):
    """``neuroharmony`` on hostile tables and model files: exit code, one clear line, no output."""
    problems = R.run_table_case(case, abide_table, tmp_path)
    assert not problems, "\n".join(problems)


def test_markdown_outputs_escaped():
    assert R.markdown_escaped() == []
