"""Model files: round trip, integrity, refusal of pickles and foreign files."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
from _synth import REGIONS, synth_table

from neuroharmony_bids.errors import ModelFileError
from neuroharmony_bids.harmonize.io import (
    DEFAULT_MODEL,
    load_model,
    model_info,
    save_model,
)
from neuroharmony_bids.harmonize.model import NeuroHarmonizer


@pytest.fixture(scope="module")
def fitted():
    table = synth_table(n_sites=4, per_site=25, seed=5)
    return table, NeuroHarmonizer().fit(table, "site")


def test_round_trip_is_exact_and_deterministic(tmp_path, fitted):
    table, model = fitted
    sha1 = save_model(model, tmp_path / "a.json", {"name": "t"})
    sha2 = save_model(model, tmp_path / "b.json", {"name": "t"})
    assert sha1 == sha2
    loaded = load_model(tmp_path / "a.json")
    pd.testing.assert_frame_equal(loaded.transform(table), model.transform(table))
    assert loaded.model_sha256_ == sha1
    assert not list(tmp_path.glob(".nhtmp-*"))


def test_corrupted_and_edited_files_fail_clearly(tmp_path, fitted):
    _, model = fitted
    path = tmp_path / "m.json"
    save_model(model, path)
    text = path.read_text()
    (tmp_path / "trunc.json").write_text(text[: len(text) // 2])
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        load_model(tmp_path / "trunc.json")
    doc = json.loads(text)
    doc["state"]["profile_limit_"] = 0.5
    (tmp_path / "edited.json").write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match="hash mismatch"):
        load_model(tmp_path / "edited.json")
    doc = json.loads(text)
    doc["schema_version"] = 99
    (tmp_path / "future.json").write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match="schema 99"):
        load_model(tmp_path / "future.json")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(ModelFileError, match="not a neuroharmony model"):
        load_model(tmp_path / "other.json")
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "missing.json")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(_Exploit(str(marker))))
    with pytest.raises(ModelFileError, match="refusing to load"):
        load_model(path)
    assert not marker.exists()


def test_shipped_model_loads_and_describes_itself():
    assert DEFAULT_MODEL.stat().st_size < 20e6
    info = model_info()
    assert info["training_summary"]["n_sites"] == 17
    assert info["metadata"]["freesurfer_version"].startswith("6")
    assert len(info["metadata"]["training_table_sha256"]) == 64
    assert set(info["iqms"]["core"]) <= set(info["iqms"]["full"])
    model = load_model()
    assert len(model.regions_) >= 101
    ref = model.reference_range(12.0, "M", 1.5e6)
    assert (ref["lower"] < ref["mean"]).all() and (ref["mean"] < ref["upper"]).all()
    assert np.isfinite(ref.to_numpy()).all()
    assert REGIONS[0] in ref.index
