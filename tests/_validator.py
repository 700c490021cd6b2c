"""Runs whose subject is not validation validate only when ``bids-validator-deno`` is there.

Tests that are about validation carry ``@pytest.mark.bids_validator`` instead (conftest skips
them with a reason when the validator is absent).
"""

from __future__ import annotations

import shutil

HAVE_VALIDATOR = shutil.which("bids-validator-deno") is not None

#: Flags for a run whose subject is not validation: validate when the validator is there.
VALIDATION_FLAGS: list[str] = [] if HAVE_VALIDATOR else ["--skip-bids-validation"]
