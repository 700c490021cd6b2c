"""MRIQC as a tool: the mriqc node's command line and status (readers: test_io_mriqc_json)."""

from __future__ import annotations

import os

import pytest

from neuroharmony_bids.interfaces import mriqc as mq


def test_mriqc_command_line_is_accepted_by_mriqc(tmp_path):
    (tmp_path / "bids").mkdir()
    node = mq.init_mriqc_node(
        "mriqc", tmp_path / "bids", tmp_path / "out", "01", tmp_path / "work",
        session_ids=["1"], nprocs=4, omp_nthreads=2, mem_gb=8,
    )  # fmt: skip
    cmd = node.interface.cmdline
    args = cmd.split()
    assert args[:4] == ["mriqc", str(tmp_path / "bids"), str(tmp_path / "out"), "participant"]
    for flag in ("--no-sub", "--notrack", "--no-datalad-get"):
        assert flag in args
    assert "--participant-label 01" in cmd and "--session-id 1" in cmd and "-m T1w" in cmd
    assert "--nprocs 4" in cmd and "--omp-nthreads 2" in cmd and "--mem-gb 8" in cmd
    assert f"-w {tmp_path / 'work'}" in cmd
    assert node.n_procs == 4
    pytest.importorskip("mriqc", reason="mriqc (a locked dependency) parses the command line")
    from mriqc.cli.parser import _build_parser

    parsed = _build_parser().parse_args(args[1:])
    assert parsed.participant_label == ["01"] and parsed.modalities == ["T1w"]
    assert parsed.nprocs == 4 and parsed.omp_nthreads == 2 and parsed.memory_gb == 8
    assert parsed.no_sub and parsed.notrack


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
