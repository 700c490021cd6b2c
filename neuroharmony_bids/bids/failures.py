"""The failure log: why a scan failed, one JSON per scan under ``logs/failed/`` (read back by
the group level)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from neuroharmony_bids.atomic import TMP_PREFIX
from neuroharmony_bids.bids.derivatives import id_columns, logs_dir, write_output
from neuroharmony_bids.bids.layout import Scan


def failure_path(output_dir: str | os.PathLike, scan: Scan) -> Path:
    return logs_dir(output_dir) / "failed" / f"{scan.bids_name}.json"


def write_failure(
    output_dir: str | os.PathLike, scan: Scan, reason: str, exit_code: int = 1
) -> Path:
    """Record why a scan failed (read back by the group level)."""
    record = {
        "bids_name": scan.bids_name,
        **id_columns(scan),
        "reason": reason,
        "exit_code": int(exit_code),
    }
    return write_output(failure_path(output_dir, scan), json.dumps(record, indent=2) + "\n")


def clear_failure(output_dir: str | os.PathLike, scan: Scan) -> None:
    try:
        failure_path(output_dir, scan).unlink()
    except FileNotFoundError:
        pass


def read_failures(output_dir: str | os.PathLike) -> pd.DataFrame:
    """Failed scans recorded by participant-level runs (bids_name, ids, reason)."""
    rows = []
    for path in sorted((logs_dir(output_dir) / "failed").glob("*.json")):
        if path.name.startswith(TMP_PREFIX):
            continue
        try:
            rows.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    cols = ["bids_name", "participant_id", "session_id", "reason", "exit_code"]
    table = pd.DataFrame(rows)
    for col in cols:
        if col not in table.columns:
            table[col] = pd.Series(dtype=object)
    return table[cols]


__all__ = ["clear_failure", "failure_path", "read_failures", "write_failure"]
