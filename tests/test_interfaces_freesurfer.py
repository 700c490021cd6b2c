"""FreeSurfer as a tool: license lookup, recon-all status and node (parsers: test_io_freesurfer_stats)."""

from __future__ import annotations

import pytest

from neuroharmony_bids.errors import UsageError
from neuroharmony_bids.interfaces import freesurfer as fs


def test_license_lookup_order(tmp_path):
    note = "placeholder used to test the lookup order; not a FreeSurfer license\n"
    flag = tmp_path / "given.txt"
    env_file = tmp_path / "from_env.txt"
    home = tmp_path / "fshome"
    home.mkdir()
    for p in (flag, env_file, home / "license.txt"):
        p.write_text(note)
    env = {"FS_LICENSE": str(env_file), "FREESURFER_HOME": str(home)}
    assert fs.find_fs_license(flag, env) == flag.resolve()
    assert fs.find_fs_license(None, env) == env_file.resolve()
    assert (
        fs.find_fs_license(None, {"FREESURFER_HOME": str(home)}) == (home / "license.txt").resolve()
    )
    assert fs.find_fs_license(None, {}) is None
    with pytest.raises(UsageError, match="--fs-license-file"):
        fs.find_fs_license(tmp_path / "absent.txt", env)
    with pytest.raises(UsageError, match="FS_LICENSE"):
        fs.find_fs_license(None, {"FS_LICENSE": str(tmp_path / "absent.txt")})


def test_recon_all_status_explains_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "recon-all is not on PATH" in fs.recon_all_status(None)
    exe = tmp_path / "recon-all"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    assert "no FreeSurfer license" in fs.recon_all_status(None)
    assert fs.recon_all_status(tmp_path / "license-path-only") is None
