"""What the stand-in tools share: where their output content comes from and how a test steers them.

The stand-ins (``mriqc``, ``recon-all`` and the ANTs/AFNI names MRIQC needs) are small
standard-library scripts put on ``PATH`` by the tests in place of the real tools. They parse the
command line the way the real tools do (unknown options are refused) and write files where the
real tools write them. Their content is copied from ``$NEUROHARMONY_STANDIN_DATA``, which a test
fills with real-format files:

- ``mriqc/<bids name>.json``: an MRIQC IQM JSON per scan;
- ``freesurfer/<subject id>/stats/{aseg,lh.aparc,rh.aparc}.stats``: FreeSurfer stats per subject.

Behaviour switches (comma-separated ``tool:id`` entries, ``id`` being an MRIQC participant label
or a recon-all subject id; ``tool`` alone matches every call of that tool):

- ``NEUROHARMONY_STANDIN_FAIL``: exit 1 with the tool's own error lines;
- ``NEUROHARMONY_STANDIN_SLEEP``: ``tool[:id]=seconds`` to sleep before writing;
- ``NEUROHARMONY_STANDIN_INTERRUPT``: recon-all dies (SIGKILL) half-way, as when a job is killed.

Every call is appended as one JSON line to ``$NEUROHARMONY_STANDIN_LOG`` when it is set.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def data_dir() -> Path:
    """Folder holding the real-format files the stand-ins copy."""
    value = os.environ.get("NEUROHARMONY_STANDIN_DATA")
    if not value or not Path(value).is_dir():
        sys.exit(
            f"stand-in: NEUROHARMONY_STANDIN_DATA={value!r} is not a folder of outputs to copy"
        )
    return Path(value)


def _entries(var: str) -> list[str]:
    return [e.strip() for e in os.environ.get(var, "").split(",") if e.strip()]


def selected(var: str, tool: str, ident: str) -> bool:
    """True when ``var`` names this tool (alone) or this tool and id."""
    return any(e in (tool, f"{tool}:{ident}") for e in _entries(var))


def sleep_for(tool: str, ident: str) -> None:
    for entry in _entries("NEUROHARMONY_STANDIN_SLEEP"):
        key, _, seconds = entry.partition("=")
        if key in (tool, f"{tool}:{ident}"):
            time.sleep(float(seconds))


def log_call(tool: str, argv: list[str]) -> None:
    log = os.environ.get("NEUROHARMONY_STANDIN_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"tool": tool, "argv": argv, "pid": os.getpid()}) + "\n")
