"""BIDS validation of the input dataset with ``bids-validator-deno`` (offline)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

from neuroharmony_bids.errors import InvalidBIDSError, MissingInputError


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
            [exe, "--format", "json", str(bids_dir)],
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


__all__ = [
    "validate_dataset",
]
