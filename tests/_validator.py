"""Tests that need ``bids-validator-deno`` skip with a reason when it is not on PATH."""

from __future__ import annotations

import shutil

import pytest

HAVE_VALIDATOR = shutil.which("bids-validator-deno") is not None

requires_validator = pytest.mark.skipif(
    not HAVE_VALIDATOR,
    reason="bids-validator-deno is not on PATH (pip install bids-validator-deno)",
)

#: Flags for a run whose subject is not validation: validate when the validator is there.
VALIDATION_FLAGS: list[str] = [] if HAVE_VALIDATOR else ["--skip-bids-validation"]
