"""MRIQC as a tool: the mriqc node's command line and status (readers: test_io_mriqc_json)."""

from __future__ import annotations

import os

from neuroharmony_bids.interfaces import mriqc as mq


def test_mriqc_status(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "not on PATH" in mq.mriqc_status()
    exe = tmp_path / "mriqc"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    why = mq.mriqc_status()
    assert why is not None and "antsRegistration" in why and "3dFWHMx" in why
    for dep in mq.MRIQC_DEPENDENCIES:
        (tmp_path / dep).write_text("#!/bin/sh\n")
        os.chmod(tmp_path / dep, 0o755)
    assert mq.mriqc_status() is None
