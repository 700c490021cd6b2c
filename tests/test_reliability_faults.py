"""Faults: SIGKILL and re-run, a 16-job SLURM-like array, group during writes, disk full,
determinism and no network. Scenario helpers live in ``bench/reliability.py``."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import reliability as R  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("mode,seed", [("mid-write", 1), ("first-output", 2), ("delay", 3)])
def test_sigkill_then_rerun_completes(mode, seed, abide_table, tmp_path):
    """Killed at a random/first-output/mid-write point, the re-run completes every scan and no
    final-named TSV/JSON is ever half-written (before or after the re-run)."""
    ds = R.make_dataset(tmp_path / "ds", abide_table, n=4, seed=seed)
    problems, _ = R.kill_and_rerun(ds, tmp_path / "out", mode, random.Random(seed))
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_sigkill_mid_write_leaves_no_temporary_file(abide_table, tmp_path):
    ds = R.make_dataset(tmp_path / "ds", abide_table, n=2, seed=5)
    problems, left = R.kill_and_rerun(ds, tmp_path / "out", "mid-write", random.Random(5))
    assert not problems, "\n".join(problems)
    assert left == [], f"temporary files left after the re-run: {left}"


@pytest.mark.slow
def test_sixteen_parallel_participant_jobs(abide_table, tmp_path):
    ds = R.make_dataset(tmp_path / "ds", abide_table, n=16, seed=11)
    assert len(ds.participants) == 16
    jobs, verified, problems = R.parallel_array(ds, tmp_path / "out")
    assert not problems, "\n".join(problems)
    assert (jobs, verified) == (16, 16)
    desc = json.loads((tmp_path / "out" / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    # nothing interleaved: each harmonized TSV has exactly its own participant's row
    for sub in ds.participants:
        tsv = tmp_path / "out" / sub / "anat" / f"{sub}_desc-harmonized_morph.tsv"
        table = pd.read_csv(tsv, sep="\t")
        assert list(table["participant_id"]) == [sub]


def test_group_during_participant_writes_skips_incomplete(abide_table, tmp_path, monkeypatch):
    """A scan caught mid-write (a file missing, a .nhtmp-* beside) is skipped and named."""
    import neuroharmony_bids.workflows.group as group

    ds = R.make_dataset(tmp_path / "ds", abide_table, n=3, seed=4)
    out = tmp_path / "out"
    assert R.run_inprocess([ds.root, out, "participant", *R.FAST]).code == 0
    busy = ds.participants[0]
    anat = out / busy / "anat"
    (anat / f"{busy}_desc-harmonized_morph.tsv").unlink()
    (anat / ".nhtmp-inflight.tsv").write_text("participant_id\tLeft-Hippo")  # half-written
    monkeypatch.setattr(group, "_write_report", lambda *a, **k: None)  # the slow HTML part
    res = R.run_inprocess([ds.root, out, "group", "--skip-bids-validation"])
    assert res.code == 0, res.stderr
    assert busy in res.stderr and "being written" in res.stderr
    raw = pd.read_csv(out / "group_desc-raw_morph.tsv", sep="\t")
    harm = pd.read_csv(out / "group_desc-harmonized_morph.tsv", sep="\t")
    assert sorted(raw["participant_id"]) == sorted(ds.participants[1:])
    assert sorted(harm["participant_id"]) == sorted(ds.participants[1:])
    failed = pd.read_csv(out / "group_failed.tsv", sep="\t")
    assert list(failed["participant_id"]) == [busy]
    assert "being written" in failed["reason"].iloc[0]
    (anat / ".nhtmp-inflight.tsv").unlink()
    assert R.broken_outputs(out) == [] and R.temp_leftovers(out) == []


@pytest.fixture(scope="module")
def disk_full_run(abide_table, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    ds = R.make_dataset(tmp / "ds", abide_table, n=2, seed=1)
    res, problems = R.disk_full(ds, tmp / "out", limit=3000)
    return res, problems


def test_disk_full_leaves_nothing_corrupt(disk_full_run):
    """RLIMIT_FSIZE (files cannot grow): the run fails and leaves no partial file."""
    res, problems = disk_full_run
    assert res.code == 1, res.stderr
    assert "File too large" in res.stderr
    assert not problems, "\n".join(problems)


def test_disk_full_message_is_clear(disk_full_run):
    res, _ = disk_full_run
    assert "This is a bug" not in res.stderr
    assert "Traceback" not in res.stderr
    assert "_morph" in res.stderr or "dataset_description.json" in res.stderr


def _outputs(out: Path) -> dict[str, bytes]:
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.suffix in (".tsv", ".json") and "logs" not in p.parts
    }


def test_two_runs_byte_identical(abide_table, tmp_path):
    ds = R.make_dataset(tmp_path / "ds", abide_table, n=3, seed=8)
    for name in ("out1", "out2"):
        assert R.run_inprocess([ds.root, tmp_path / name, "participant", *R.FAST]).code == 0
    first, second = _outputs(tmp_path / "out1"), _outputs(tmp_path / "out2")
    assert len(first) == 2 + 4 * 3  # dataset_description.json, descriptions.tsv, 4 per scan
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="unshare -rn (user+network namespace) unavailable")
def test_runs_without_network(abide_table, tmp_path):
    """In a namespace with no network at all, participant level (with BIDS validation) works."""
    ds = R.make_dataset(tmp_path / "ds", abide_table, n=2, seed=9)
    out = tmp_path / "out"
    res = R.run_subprocess([ds.root, out, "participant", "--no-participant-reports"],
                           prefix=("unshare", "-rn"))  # fmt: skip
    assert res.code == 0, res.stderr
    assert R.complete_scans(out, ds.participants) == ds.participants
    assert R.broken_outputs(out) == [] and R.temp_leftovers(out) == []
