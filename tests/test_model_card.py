"""The shipped model card quotes benchmark figures only as the benchmark recorded them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

CARD = REPO / "neuroharmony_bids" / "data" / "MODEL_CARD.md"


@pytest.fixture(scope="module")
def card_script():
    spec = importlib.util.spec_from_file_location(
        "train_pretrained", REPO / "scripts" / "train_pretrained.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _metrics(n: float, auc: float) -> dict:
    return {"n_significant": n, "denominator": 1717, "auc": auc, "r2": 0.5,
            "retention": 0.75, "retention_worst": 0.625}  # fmt: skip


def test_tables_are_rendered_from_the_benchmark_file(card_script, tmp_path):
    bench = {
        "command": "python bench/quality.py --x",
        "commit": "0123456789abcdef",
        "summary": {"standard": {"raw": _metrics(534.0, 0.97312), "ours": _metrics(17.0, 0.5)}},
        "n_scans_curve": {"2": {"summary": _metrics(188.0, 0.8)}},
    }
    single = card_script._single_scan_table(bench)
    assert "| none (raw) | 534 / 1717 | 0.973 | 0.500 | 0.750 | 0.625 |" in single
    assert "**cross-region, `profile_weight=1` (shipped)** | 17 / 1717 | 0.500" in single
    assert "own-region" not in single  # a row the benchmark did not run is not invented
    assert "| 2 | 188 / 1717 | 0.500 | 0.750 | 0.625 |" in card_script._joint_table(bench)
    path = card_script.REPO / "bench" / "results" / "_missing.json"
    assert "not found" in card_script._bench_section(path, card_script._joint_table)[0]


@pytest.mark.parametrize("name", ["BENCH_SINGLE", "BENCH_JOINT"])
def test_shipped_card_quotes_the_committed_benchmark(card_script, name):
    """Every figure of the card's comparison tables is the committed benchmark's own output."""
    path = getattr(card_script, name)
    render = {"BENCH_SINGLE": card_script._single_scan_table,
              "BENCH_JOINT": card_script._joint_table}[name]  # fmt: skip
    bench = json.loads(path.read_text(encoding="utf-8"))
    assert bench["command"].startswith("python bench/quality.py")
    card = CARD.read_text(encoding="utf-8")
    assert render(bench) in card
    assert bench["command"] in card
    assert (REPO / "docs" / "model_card.md").read_text(encoding="utf-8") == card
