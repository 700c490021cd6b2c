"""The documentation stays true: generated option tables current, links resolve, README set-up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def test_usage_option_tables_match_the_parsers():
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "update_usage_docs.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_documented_option_exists_and_every_option_is_documented():
    from neuroharmony_bids.cli.parser import build_parser

    usage = (DOCS / "usage.md").read_text()
    for action in build_parser()._actions:
        for flag in action.option_strings:
            assert f"`{flag}`" in usage, flag
    documented = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-_]+)", usage))
    known = {f for a in build_parser()._actions for f in a.option_strings}
    from neuroharmony_bids.cli import table

    for action in table.build_parser()._actions:
        known.update(action.option_strings)
        for sub in getattr(action, "choices", None) or {}:
            for a in action.choices[sub]._actions:
                known.update(a.option_strings)
    # options of other tools mentioned in usage.md (docker run; bids-validator-deno)
    known |= {"--network", "--read-only", "--tmpfs", "--max-rows"}
    assert documented <= known, documented - known


def test_relative_links_resolve():
    for md in _markdown_files():
        for target in LINK.findall(md.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue
            assert (md.parent / target).exists(), f"{md.name}: broken link {target}"


def test_index_links_every_doc():
    index = (DOCS / "index.md").read_text()
    for md in sorted(DOCS.glob("*.md")):
        if md.name != "index.md":
            assert f"]({md.name})" in index, md.name


def test_readme_has_exactly_the_two_setup_commands():
    readme = (REPO / "README.md").read_text()
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", setup, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["scripts/run_example.sh", "scripts/run_tests.sh"]
    for cmd in commands:
        path = REPO / cmd
        assert path.is_file() and os.access(path, os.X_OK), cmd


def test_readme_tabular_commands_match_the_cli():
    from neuroharmony_bids.cli import table

    readme = (REPO / "README.md").read_text()
    subcommands = next(
        a for a in table.build_parser()._actions if getattr(a, "choices", None)
    ).choices
    for name in ("harmonize", "train", "info"):
        assert f"neuroharmony {name} " in readme and name in subcommands
    train_flags = {f for a in subcommands["train"]._actions for f in a.option_strings}
    assert {"--site-column", "--covariates"} <= train_flags
    harm_flags = {f for a in subcommands["harmonize"]._actions for f in a.option_strings}
    assert {"--model", "--site-column"} <= harm_flags


def test_readme_container_tags_follow_the_version_file():
    version = (REPO / "version").read_text().strip()
    readme = (REPO / "README.md").read_text()
    tags = set(re.findall(r"neuroharmony-bids:([0-9][^\s/]*)", readme))
    tags |= set(re.findall(r"neuroharmony-bids_([0-9][^\s/]*)\.sif", readme))
    assert tags == {version}
