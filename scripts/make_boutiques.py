#!/usr/bin/env python3
"""Generate ``boutiques/descriptor.json`` from the command-line parser, so the two cannot drift.

    python scripts/make_boutiques.py            # (re)write boutiques/descriptor.json
    python scripts/make_boutiques.py --check    # exit 1 if the committed file is out of date
    python scripts/make_boutiques.py --stdout   # print the descriptor

The parser comes from ``neuroharmony_bids.cli.parser.build_parser()``; the translation below only
uses argparse's public attributes of each action (option strings, dest, nargs, type, choices,
default, help, required), so any option added to the parser shows up here on the next run.
``-h/--help`` and ``--version`` are left out: they are not options of an analysis.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path, PurePath

REPO = Path(__file__).resolve().parent.parent
DESCRIPTOR = REPO / "boutiques" / "descriptor.json"
VERSION_FILE = REPO / "version"
IMAGE = "ghcr.io/neuroharmony-bids/neuroharmony-bids"
COMMAND = "neuroharmony-bids"
SOURCE_URL = "https://github.com/neuroharmony-bids/neuroharmony-bids"
DESCRIPTION = (
    "BIDS App that harmonizes FreeSurfer regional volumes of single T1w scans using MRIQC "
    "image quality metrics (Neuroharmony approach). The participant level computes or reuses "
    "MRIQC IQMs and FreeSurfer volumes for each T1w scan and writes raw and harmonized volume "
    "tables as BIDS derivatives; the group level aggregates them and can train a "
    "dataset-specific harmonizer."
)
SKIPPED_ACTIONS = (argparse._HelpAction, argparse._VersionAction)
PATH_WORDS = ("dir", "file", "path", "license", "plugin", "model")
PATH_METAVARS = {"PATH", "FILE", "DIR", "DIRECTORY", "FOLDER"}


def load_parser() -> argparse.ArgumentParser:
    """The project's parser (imported from the checkout this script lives in)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from neuroharmony_bids.cli.parser import build_parser

    return build_parser()


def described_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Actions that become Boutiques inputs: everything but help, version and hidden options."""
    return [
        a
        for a in parser._actions
        if not isinstance(a, SKIPPED_ACTIONS) and a.help is not argparse.SUPPRESS
    ]


def preferred_flag(action: argparse.Action) -> str:
    """The spelling used in the descriptor: the first long, hyphenated option string."""
    longs = [s for s in action.option_strings if s.startswith("--")]
    hyphenated = [s for s in longs if "_" not in s]
    return (hyphenated or longs or action.option_strings)[0]


def _is_path_like(action: argparse.Action) -> bool:
    kind = action.type
    if isinstance(kind, type) and issubclass(kind, PurePath):
        return True
    name = getattr(kind, "__name__", "") or ""
    if any(w in name.lower() for w in ("path", "file", "dir")):
        return True
    metavar = action.metavar if isinstance(action.metavar, str) else ""
    if metavar.upper() in PATH_METAVARS:
        return True
    dest = action.dest.lower()
    return kind in (None, str) and any(dest.endswith(w) for w in PATH_WORDS)


def _json_value(value):
    """A JSON-ready literal for a default or choice; None when it has no literal form."""
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, bool):
        return None
    if isinstance(value, (str, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_json_value(v) for v in value]
        return items if all(i is not None for i in items) else None
    return None


def _help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help:
        return ""
    text = parser._get_formatter()._expand_help(action)
    return re.sub(r"\s+", " ", text).strip()


def _name(action: argparse.Action) -> str:
    words = action.dest.replace("-", "_").split("_")
    words = [
        w.upper()
        if w.lower() in {"fs", "iqm", "iqms", "bids", "mriqc", "gb", "omp", "id", "tsv"}
        else w
        for w in words
    ]
    text = " ".join(w for w in words if w)
    return text[:1].upper() + text[1:]


def input_for(parser: argparse.ArgumentParser, action: argparse.Action) -> dict:
    """One Boutiques input from one argparse action."""
    ident = re.sub(r"[^0-9A-Za-z_]", "_", action.dest)
    entry: dict = {"id": ident, "name": _name(action)}
    description = _help_text(parser, action)
    if description:
        entry["description"] = description
    entry["value-key"] = f"[{ident.upper()}]"

    positional = not action.option_strings
    nargs = action.nargs
    if nargs == 0:
        entry["type"] = "Flag"
        entry["optional"] = True
        entry["command-line-flag"] = preferred_flag(action)
        return entry

    choices = list(action.choices) if action.choices is not None else None
    if action.type in (int, float) or (
        choices and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices)
    ):
        entry["type"] = "Number"
        if action.type is int or (choices and all(isinstance(c, int) for c in choices)):
            entry["integer"] = True
    elif choices is None and _is_path_like(action):
        entry["type"] = "File"
    else:
        entry["type"] = "String"
    if choices is not None:
        entry["value-choices"] = [_json_value(c) for c in choices]

    is_list = nargs in ("+", "*") or (isinstance(nargs, int) and nargs > 1)
    is_list = is_list or isinstance(action, (argparse._AppendAction, argparse._ExtendAction))
    if is_list:
        entry["list"] = True
        if nargs == "+":
            entry["min-list-entries"] = 1
        elif isinstance(nargs, int):
            entry["min-list-entries"] = nargs
            entry["max-list-entries"] = nargs

    if positional:
        entry["optional"] = nargs in ("?", "*")
    else:
        entry["optional"] = not action.required
        entry["command-line-flag"] = preferred_flag(action)

    default = _json_value(action.default)
    if default is not None and action.default is not argparse.SUPPRESS:
        if isinstance(default, list) and not is_list:
            default = None
        elif not isinstance(default, list) and is_list:
            default = [default]
        if default is not None and (
            choices is None
            or all(d in entry["value-choices"] for d in (default if is_list else [default]))
        ):
            entry["default-value"] = default
    return entry


def groups_for(parser: argparse.ArgumentParser, ids: dict[int, str]) -> list[dict]:
    groups = []
    for n, group in enumerate(parser._mutually_exclusive_groups, start=1):
        members = [ids[id(a)] for a in group._group_actions if id(a) in ids]
        if len(members) < 2:
            continue
        groups.append(
            {
                "id": f"exclusive_group_{n}",
                "name": "Mutually exclusive: " + ", ".join(members),
                "members": members,
                "mutually-exclusive": True,
            }
        )
    return groups


def build_descriptor(parser: argparse.ArgumentParser, version: str) -> dict:
    actions = described_actions(parser)
    positionals = [a for a in actions if not a.option_strings]
    optionals = [a for a in actions if a.option_strings]
    inputs = [input_for(parser, a) for a in positionals + optionals]
    ids = {id(a): e["id"] for a, e in zip(positionals + optionals, inputs, strict=True)}
    command_line = " ".join([COMMAND] + [e["value-key"] for e in inputs])

    descriptor: dict = {
        "name": "neuroharmony-bids",
        "tool-version": version,
        "description": DESCRIPTION,
        "author": "neuroharmony-bids developers",
        "url": SOURCE_URL,
        "command-line": command_line,
        "schema-version": "0.5",
        "container-image": {"type": "docker", "image": f"{IMAGE}:{version}"},
        "inputs": inputs,
    }
    groups = groups_for(parser, ids)
    if groups:
        descriptor["groups"] = groups
    if any(e["id"] == "output_dir" for e in inputs):
        descriptor["output-files"] = [
            {
                "id": "derivatives",
                "name": "Derivatives folder",
                "description": "BIDS derivatives written by neuroharmony-bids.",
                "path-template": "[OUTPUT_DIR]",
                "optional": False,
            }
        ]
    descriptor["suggested-resources"] = {"cpu-cores": 1, "ram": 8, "walltime-estimate": 43200}
    descriptor["tags"] = {
        "domain": ["neuroinformatics", "mri", "harmonization", "bids-app"],
        "application-type": "bids",
    }
    descriptor["custom"] = {"generated-by": "scripts/make_boutiques.py"}
    return descriptor


def render(descriptor: dict) -> str:
    return json.dumps(descriptor, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = cli.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="fail if the descriptor is stale")
    mode.add_argument("--stdout", action="store_true", help="print instead of writing")
    cli.add_argument("--output", type=Path, default=DESCRIPTOR, help="descriptor path")
    args = cli.parse_args(argv)

    version = VERSION_FILE.read_text().strip()
    text = render(build_descriptor(load_parser(), version))
    if args.stdout:
        sys.stdout.write(text)
        return 0
    if args.check:
        current = args.output.read_text() if args.output.is_file() else ""
        if current == text:
            print(f"{args.output} is up to date")
            return 0
        diff = difflib.unified_diff(
            current.splitlines(keepends=True),
            text.splitlines(keepends=True),
            fromfile=f"{args.output} (committed)",
            tofile="generated from build_parser()",
        )
        sys.stderr.writelines(diff)
        sys.stderr.write(
            f"\n{args.output} is out of date: run `python scripts/make_boutiques.py` and commit it.\n"
        )
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
