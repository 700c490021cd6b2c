"""Shared fixtures: the read-only shared data folder, found without making the project depend on it."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VALIDATOR = "bids-validator-deno"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Tests marked ``bids_validator`` run the real validator: skip them, saying why, without it."""
    if item.get_closest_marker("bids_validator") and shutil.which(VALIDATOR) is None:
        pytest.skip(
            f"{VALIDATOR} is not on PATH: it is pinned in requirements.lock (scripts/run_tests.sh "
            f"installs it), or `pip install {VALIDATOR}`"
        )


def load_script(name: str):
    """A script of ``scripts/`` (not a package module) imported by path, for testing it."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shared_data_dir() -> Path | None:
    env = os.environ.get("NEUROHARMONY_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    for c in candidates:
        if (c / "abide1" / "abide1_fs6_mriqc_pheno.csv").is_file():
            return c
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip(
            "shared data not found: set NEUROHARMONY_SHARED_DATA or place ../shared/data beside "
            "the checkout (CI always has it)"
        )
    return path


@pytest.fixture(scope="session")
def abide_table(shared_data):
    import pandas as pd

    return pd.read_csv(shared_data / "abide1" / "abide1_fs6_mriqc_pheno.csv")
