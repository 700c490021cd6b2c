"""Participant level in several processes: the same bytes as in one, failures included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neuroharmony_bids.cli.run import run
from neuroharmony_bids.testing import abide_rows, build_bids_dataset
from neuroharmony_bids.workflows import participant as P


def _files(out: Path) -> dict[str, bytes]:
    """Every output file but run logs (timestamped) and the work folder (a cache)."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.suffix != ".log" and p.relative_to(out).parts[0] != "work"
    }


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["flat", "group"])
def test_processes_write_the_same_outputs(abide_table, tmp_path, monkeypatch, layout):
    rows = abide_rows(abide_table, 12, seed=5).reset_index(drop=True)
    rows.loc[2, "AGE_AT_SCAN"] = np.nan  # a covariate failure
    rows.loc[4, "iqm_cjv"] = np.nan  # an IQM MRIQC could not compute: a warning only
    bids = tmp_path / "bids"
    build_bids_dataset(bids, rows, mriqc_layout=layout)
    if layout == "flat":  # a truncated stats file: a parse failure in a worker
        aseg = next((bids / "derivatives" / "freesurfer").glob("sub-*/stats/aseg.stats"))
        aseg.write_text(aseg.read_text()[:2000])
    used = []
    real = P.map_scans

    def spy(func, items, nprocs):
        used.append((func.__name__ if hasattr(func, "__name__") else "write", nprocs))
        return real(func, items, nprocs)

    monkeypatch.setattr(P, "map_scans", spy)
    monkeypatch.setattr(P, "MIN_SCANS_FOR_PROCESSES", 4)
    common = ["--skip-bids-validation", "-q", "--no-participant-reports"]
    codes = [
        run([str(bids), str(tmp_path / f"out{n}"), "participant", *common, "--nprocs", str(n)])
        for n in (1, 2)
    ]
    assert codes == [1, 1]  # some scans failed, in both runs
    one, two = _files(tmp_path / "out1"), _files(tmp_path / "out2")
    assert one == two
    failed = [k for k in one if k.startswith("logs/failed/")]
    assert len(failed) == (2 if layout == "flat" else 1)
    assert sum(k.endswith("_desc-harmonized_morph.tsv") for k in one) == 12 - len(failed)
    assert (2 in {n for _, n in used}) and (1 in {n for _, n in used})
