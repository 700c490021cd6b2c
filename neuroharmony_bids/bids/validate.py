"""BIDS validation of the input dataset with ``bids-validator-deno`` (offline)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from neuroharmony_bids.atomic import write_text
from neuroharmony_bids.errors import InvalidBIDSError, MissingInputError

#: Folders the validator does not validate (nor does the fingerprint look into them).
_NOT_VALIDATED = ("derivatives", "sourcedata", "code")


def validate_dataset(bids_dir: str | os.PathLike, timeout: float = 900) -> list[dict[str, Any]]:
    """Run ``bids-validator-deno`` (offline); raise InvalidBIDSError on errors, return warnings."""
    exe = shutil.which("bids-validator-deno")
    if exe is None:
        raise MissingInputError(
            "the BIDS validator (bids-validator-deno) is not installed: `pip install "
            "bids-validator-deno`, use the container, or pass --skip-bids-validation"
        )
    try:
        proc = subprocess.run(
            # every row of participants.tsv (the default reads 1,000 and then reports a false
            # PARTICIPANT_ID_MISMATCH on larger datasets)
            [exe, "--format", "json", "--max-rows", "-1", str(bids_dir)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "DENO_NO_UPDATE_CHECK": "1"},
        )
    except subprocess.TimeoutExpired:
        raise InvalidBIDSError(
            f"the BIDS validator did not finish in {timeout:.0f} s on {bids_dir}; pass "
            f"--skip-bids-validation to proceed without it"
        ) from None
    try:
        report = json.loads(proc.stdout)
        issues = report["issues"]["issues"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise InvalidBIDSError(
            f"the BIDS validator failed on {bids_dir} (exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[:500]}. Is it a BIDS dataset? Pass "
            f"--skip-bids-validation to proceed anyway"
        ) from None
    errors = [i for i in issues if i.get("severity") == "error"]
    if errors:
        shown = "; ".join(
            f"{e.get('code')}{'/' + e['subCode'] if e.get('subCode') else ''} at "
            f"{e.get('location', '?')}"
            for e in errors[:5]
        )
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise InvalidBIDSError(
            f"{bids_dir} is not a valid BIDS dataset: {len(errors)} validator error(s): "
            f"{shown}{more}. Fix them (run `bids-validator-deno {bids_dir}` for details) or "
            f"pass --skip-bids-validation"
        )
    return [i for i in issues if i.get("severity") == "warning"]


def dataset_fingerprint(bids_dir: str | os.PathLike) -> str:
    """SHA-256 of the dataset's file listing with sizes and modification times.

    What the validator reads (``derivatives/``, ``sourcedata/``, ``code/`` and dot-folders
    excluded); any added, removed, renamed, resized or touched file changes it. Costs one
    ``stat`` per file (about 0.1 s per 10,000 files), not a read.
    """
    root = Path(bids_dir)
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        if rel == ".":
            dirs[:] = [d for d in dirs if d not in _NOT_VALIDATED]
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            try:
                st = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            digest.update(f"{rel}/{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def validate_once(
    bids_dir: str | os.PathLike, stamp: str | os.PathLike, timeout: float = 900
) -> tuple[list[dict[str, Any]] | None, float]:
    """Validate unless ``stamp`` records a passed validation of this very dataset state.

    Returns (warnings, seconds) after a validator run, or (None, seconds) when the stamp
    matched; the stamp (JSON: dataset, fingerprint, validator version, warnings) is written
    only after a pass, so a failed or interrupted validation is redone.
    """
    t0 = time.monotonic()
    fingerprint = dataset_fingerprint(bids_dir)
    try:
        record = json.loads(Path(stamp).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        record = None
    version = _validator_version()
    if (
        isinstance(record, dict)
        and record.get("fingerprint") == fingerprint
        and record.get("validator") == version
        and record.get("dataset") == str(Path(bids_dir).resolve())
    ):
        return None, time.monotonic() - t0
    warnings = validate_dataset(bids_dir, timeout=timeout)
    text = json.dumps(
        {
            "dataset": str(Path(bids_dir).resolve()),
            "fingerprint": fingerprint,
            "validator": version,
            "warnings": len(warnings),
        },
        indent=2,
    )
    try:
        write_text(stamp, text + "\n")
    except OSError:  # the stamp only saves time; the run's own writes report disk problems
        pass
    return warnings, time.monotonic() - t0


def _validator_version() -> str | None:
    try:
        from importlib import metadata

        return metadata.version("bids-validator-deno")
    except Exception:  # not installed as a Python distribution: the stamp still works
        return None


__all__ = ["dataset_fingerprint", "validate_dataset", "validate_once"]
