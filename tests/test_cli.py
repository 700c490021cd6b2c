"""Command line: options, aliases, version, exit codes and messages, logging."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import shutil
import sys
from pathlib import Path

import pytest

from neuroharmony_bids import __version__
from neuroharmony_bids.cli.parser import build_parser, parse_settings
from neuroharmony_bids.cli.run import LOGGER_NAME, run
from neuroharmony_bids.errors import UsageError
from neuroharmony_bids.testing import abide_rows, build_bids_dataset

VENV_BIN = str(Path(sys.executable).parent)


def test_every_option_has_help_and_a_clean_dest():
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and len(action.help) > 15, action.dest
        assert re.fullmatch(r"[a-z][a-z0-9_]*", action.dest), action.dest


@pytest.mark.parametrize(
    ("alias", "dest", "value"),
    [
        (["--participant_label", "sub-01", "02"], "participant_label", ("01", "02")),
        (["--session_label", "ses-a"], "session_label", ("a",)),
        (["--n_cpus", "3"], "nprocs", 3),
        (["--n-cpus", "3"], "nprocs", 3),
        (["--mem_gb", "2.5"], "mem_gb", 2.5),
        (["--skip_bids_validator"], "skip_bids_validation", True),
        (["-w", "/tmp/w"], "work_dir", Path("/tmp/w")),
        (["--sex-mapping", "1=M", "2=F"], "sex_mapping", (("1", "M"), ("2", "F"))),
    ],
)
def test_aliases_reach_the_settings(alias, dest, value):
    settings = parse_settings(["/data", "/out", "participant", *alias])
    assert getattr(settings, dest) == value
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.nprocs = 9  # type: ignore[misc]


def test_settings_record_the_exact_command_line():
    argv = ["/data dir", "/out", "participant", "--nprocs", "2"]
    settings = parse_settings(argv)
    assert settings.command_line == "neuroharmony-bids '/data dir' /out participant --nprocs 2"
    assert settings.omp_nthreads == 2


def test_version(capsys):
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"neuroharmony-bids {__version__}"
    assert run(["-v"]) == 0
    assert capsys.readouterr().out.strip() == f"neuroharmony-bids {__version__}"
    assert __version__ == (Path(__file__).parent.parent / "version").read_text().strip()


def _one_paragraph_error(err: str, code: int) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("neuroharmony-bids")]
    assert lines, err
    assert f"(exit code {code})" in lines[-1]
    return lines[-1]


@pytest.mark.parametrize(
    "argv_tail",
    [
        ["banana"],
        ["participant", "--participant-label", "../../etc"],
        ["participant", "--nprocs", "0"],
        ["participant", "--nprocs", "two"],
        ["participant", "--train"],
        ["participant", "--use-plugin", "/nonexistent.yml"],
        ["participant", "--model", "/nonexistent.json"],
        ["participant", "--verbose", "--quiet"],
        ["participant", "--sex-mapping", "1"],
    ],
)
def test_usage_errors_exit_64(tmp_path, capsys, argv_tail):
    (tmp_path / "bids").mkdir()
    code = run([str(tmp_path / "bids"), str(tmp_path / "out"), *argv_tail])
    assert code == 64
    _one_paragraph_error(capsys.readouterr().err, 64)


def test_output_inside_input_is_refused(tmp_path, capsys):
    bids = tmp_path / "bids"
    (bids / "derivatives").mkdir(parents=True)
    for out in (bids, bids / "sub-01", bids / "derivatives", tmp_path):
        assert run([str(bids), str(out), "participant"]) == 64
        msg = _one_paragraph_error(capsys.readouterr().err, 64)
        assert "output_dir" in msg
    # the input dataset was not written to
    assert sorted(p.name for p in bids.iterdir()) == ["derivatives"]


def test_unwritable_output_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "bids").mkdir()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert run([str(tmp_path / "bids"), str(blocker / "out"), "participant"]) == 64
    assert "not writable" in _one_paragraph_error(capsys.readouterr().err, 64)


@pytest.fixture(scope="module")
def no_derivatives(abide_table, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("noderiv") / "bids"
    build_bids_dataset(root, abide_rows(abide_table, 2, seed=5), freesurfer=False, mriqc=False)
    return root


@pytest.mark.bids_validator
def test_invalid_bids_exits_16(no_derivatives, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(no_derivatives, bad, ignore=shutil.ignore_patterns("derivatives"))
    (bad / "dataset_description.json").unlink()
    assert run([str(bad), str(tmp_path / "out"), "participant"]) == 16
    msg = _one_paragraph_error(capsys.readouterr().err, 16)
    assert "--skip-bids-validation" in msg


def test_filters_selecting_nothing_exit_18(no_derivatives, tmp_path, capsys):
    argv = [str(no_derivatives), str(tmp_path / "out"), "participant", "--skip-bids-validation"]
    assert run([*argv, "--participant-label", "nobody"]) == 18
    _one_paragraph_error(capsys.readouterr().err, 18)
    assert run([*argv, "--session-label", "x"]) == 18


def test_missing_tools_and_derivatives_exit_66(no_derivatives, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", VENV_BIN)  # no ANTs/AFNI/FreeSurfer here, even in the container
    monkeypatch.delenv("FS_LICENSE", raising=False)
    monkeypatch.delenv("FREESURFER_HOME", raising=False)
    out = tmp_path / "out"
    assert run([str(no_derivatives), str(out), "participant", "--skip-bids-validation"]) == 66
    msg = _one_paragraph_error(capsys.readouterr().err, 66)
    for needle in ("MRIQC", "--mriqc-dir", "recon-all", "--freesurfer-dir", "ghcr.io/"):
        assert needle in msg
    # nothing per scan was written
    assert not list(out.glob("sub-*"))
    # the run's handlers are gone with it: none writes to this run's (soon closed) stderr
    assert logging.getLogger(LOGGER_NAME).handlers == []


@pytest.mark.bids_validator
def test_run_is_logged(abide_table, tmp_path, capsys):
    bids = tmp_path / "bids"
    build_bids_dataset(bids, abide_rows(abide_table, 2, seed=9, drop_failed=True))
    out = tmp_path / "out"
    argv = [str(bids), str(out), "participant", "--no-participant-reports", "--nprocs", "1"]
    assert run(argv) == 0
    err = capsys.readouterr().err
    assert "participant: 2/2 scans done, elapsed" in err and "remaining" in err
    logs = list((out / "logs").glob("*_participant_*.log"))
    assert len(logs) == 1
    text = logs[0].read_text()
    assert "command line: neuroharmony-bids " + " ".join(argv) in text
    assert '"Nipype":' in text and '"pybids":' in text and "finished in" in text
    assert run([*argv, "-q"]) == 0
    assert "INFO" not in capsys.readouterr().err
    assert run([*argv, "--verbose"]) == 0
    assert "DEBUG" in capsys.readouterr().err


def test_parse_settings_rejects_missing_folders(tmp_path):
    with pytest.raises(UsageError, match="--mriqc-dir"):
        parse_settings(["/d", "/o", "participant", "--mriqc-dir", str(tmp_path / "none")])


@pytest.mark.bids_validator
def test_output_under_input_derivatives_is_allowed(abide_table, tmp_path):
    bids = tmp_path / "bids"
    build_bids_dataset(bids, abide_rows(abide_table, 2, seed=12, drop_failed=True))
    out = bids / "derivatives" / "neuroharmony"
    argv = [str(bids), str(out), "participant", "--no-participant-reports"]
    assert run(argv) == 0
    assert len(list(out.glob("sub-*/anat/*_desc-harmonized_morph.tsv"))) == 2
    # the input still validates, and re-indexing does not pick up our outputs as scans
    assert run([*argv, "--overwrite"]) == 0
    assert len(list(out.glob("sub-*/anat/*_desc-harmonized_morph.tsv"))) == 2
