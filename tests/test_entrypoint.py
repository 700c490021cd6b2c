"""The entry-point contract: run.py works from a read-only copy of the repository.

As in the container (``docker run --read-only``), nothing may be written next to the code: the
copy is ``chmod -R a-w`` and, when the tests run as root (who ignores permission bits), it is
also bind-mounted read-only in a private mount namespace. Only HOME, the output and the work
directories are writable. After each run the copy must be byte-for-byte unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VERSION = (REPO / "version").read_text().strip()
IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode)
        for p in sorted(root.rglob("*"))
    }


def _make_read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _make_writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def _read_only_mount_works() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    res = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, check=False
    )
    return res.returncode == 0


@pytest.fixture(scope="module")
def ro_repo(tmp_path_factory):
    """A read-only copy of the repository (without .venv/.git) and a runner for it."""
    base = tmp_path_factory.mktemp("entrypoint")
    copy = base / "repo"
    shutil.copytree(REPO, copy, ignore=IGNORE, symlinks=True)
    _make_read_only(copy)
    before = _snapshot(copy)
    yield copy, before
    _make_writable(copy)


def run_ro(copy: Path, read_only_dirs: list[Path], args: list[str], tmp: Path):
    """Run ``python <copy>/run.py ARGS`` with HOME and cwd in ``tmp``; ``read_only_dirs`` are
    additionally bind-mounted read-only when running as root."""
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTHON", "NEUROHARMONY_", "MPLCONFIGDIR", "XDG_"))
    }
    env.update(HOME=str(home), TMPDIR=str(tmp), NIPYPE_NO_ET="1")
    cmd = [sys.executable, str(copy / "run.py"), *args]
    if _read_only_mount_works():
        script = " && ".join(
            f'mount --bind "{d}" "{d}" && mount -o remount,bind,ro "{d}"' for d in read_only_dirs
        )
        cmd = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f'{script} && exec "$@"',
            "sh",
            *cmd,
        ]
    return subprocess.run(
        cmd, cwd=tmp, env=env, capture_output=True, text=True, check=False, timeout=900
    )


def test_copy_is_really_read_only(ro_repo):
    """The mechanism the other tests rely on does stop writes into the copy."""
    copy, _ = ro_repo
    if os.geteuid() != 0:
        with pytest.raises(PermissionError):
            (copy / "x").write_text("x")
        return
    if not _read_only_mount_works():
        pytest.skip("running as root without mount namespaces: permission bits do not bind root")
    res = subprocess.run(
        [
            "unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount --bind "{copy}" "{copy}" && mount -o remount,bind,ro "{copy}" && touch "{copy}/x"',
        ],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode != 0 and "Read-only" in res.stderr
    assert not (copy / "x").exists()


def test_version_from_read_only_copy(ro_repo, tmp_path):
    copy, before = ro_repo
    res = run_ro(copy, [copy], ["--version"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["neuroharmony-bids", VERSION], res.stdout
    assert _snapshot(copy) == before


def test_help_from_read_only_copy(ro_repo, tmp_path):
    copy, before = ro_repo
    res = run_ro(copy, [copy], ["--help"], tmp_path)
    assert res.returncode == 0, res.stderr
    for word in (
        "bids_dir",
        "output_dir",
        "participant",
        "group",
        "--participant-label",
        "--work-dir",
    ):
        assert word in res.stdout, word
    assert _snapshot(copy) == before


def _workflows_ready() -> str | None:
    pkg = REPO / "neuroharmony_bids"
    needed = (
        "workflows/participant.py",
        "workflows/group.py",
        "testing/fixtures.py",
        "harmonize/apply.py",
        "harmonize/io.py",
    )
    for rel in needed:
        if not (pkg / rel).is_file():
            return f"neuroharmony_bids/{rel} is not written yet"
    if not list((pkg / "data").glob("*.json")):
        return "the shipped model (neuroharmony_bids/data/*.json) is not committed yet"
    return None


@pytest.mark.slow
def test_participant_and_group_levels_from_read_only_copy(ro_repo, tmp_path):
    reason = _workflows_ready()
    if reason:
        pytest.skip(
            f"participant/group run from a read-only copy waits for the workflows: {reason}"
        )
    from neuroharmony_bids.harmonize.io import load_model
    from neuroharmony_bids.testing.example import write_example_dataset

    copy, before = ro_repo
    # the simulated example: every IQM and region the shipped (default) model uses
    bids = write_example_dataset(tmp_path / "bids", n_per_site=2, model=load_model(None))
    participants = sorted(p.name for p in bids.glob("sub-*") if p.is_dir())
    assert participants
    _make_read_only(bids)
    bids_before = _snapshot(bids)
    out = tmp_path / "out"
    work = tmp_path / "work"
    try:
        common = ["-w", str(work), "--skip-bids-validation", "--nprocs", "1"]
        res = run_ro(copy, [copy, bids], [str(bids), str(out), "participant", *common], tmp_path)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        res = run_ro(copy, [copy, bids], [str(bids), str(out), "group", *common], tmp_path)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert _snapshot(copy) == before
        assert _snapshot(bids) == bids_before
    finally:
        _make_writable(bids)
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert any(g.get("Version") == VERSION for g in description["GeneratedBy"])
    for sub in participants:
        assert list((out / sub).rglob("*.tsv")), f"no tabular derivative for {sub}"
