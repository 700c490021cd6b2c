"""Model files: round trip, integrity, refusal of pickles and foreign files."""

from __future__ import annotations

import json
import os
import pickle
import re

import numpy as np
import pandas as pd
import pytest
from _synth import REGIONS, synth_table

from neuroharmony_bids.errors import ModelFileError
from neuroharmony_bids.harmonize.io import (
    DEFAULT_MODEL,
    MAX_MODEL_BYTES,
    check_document,
    compare_documents,
    load_model,
    model_info,
    read_document,
    save_model,
)
from neuroharmony_bids.harmonize.model import NeuroHarmonizer
from neuroharmony_bids.testing.hostile import MODEL_VARIANTS, model_variant, reseal


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


# --------------------------------------------------------------------------- hostile model files


@pytest.mark.parametrize("name", sorted(MODEL_VARIANTS))
def test_damaged_model_refused_by_load_and_info(name, tmp_path):
    """Each damage (valid hash or not) is refused by both readers, naming the broken part."""
    path = tmp_path / "model.json"
    path.write_bytes(model_variant(name))
    says = MODEL_VARIANTS[name][1]
    for reader in (load_model, model_info):
        with pytest.raises(ModelFileError, match=re.escape(says)) as exc:
            reader(path)
        assert str(path) in str(exc.value)


def test_non_regular_files_refused_without_reading(tmp_path):
    fifo = tmp_path / "model.fifo"
    os.mkfifo(fifo)  # opening it for reading would block until a writer appears
    with pytest.raises(ModelFileError, match="FIFO"):
        load_model(fifo)
    with pytest.raises(ModelFileError, match="device"):
        model_info("/dev/zero")
    with pytest.raises(ModelFileError, match="folder"):
        load_model(tmp_path)
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as fh:  # sparse: nothing is written or read
        fh.truncate(MAX_MODEL_BYTES + 1)
    with pytest.raises(ModelFileError, match="MiB"):
        load_model(huge)


def test_shipped_model_passes_every_schema_check():
    doc, _ = read_document()
    assert check_document(doc) == []


def test_compare_tolerates_rebuild_noise_not_real_differences(tmp_path, fitted):
    _, model = fitted
    save_model(model, tmp_path / "a.json", {"name": "t"})
    doc = json.loads((tmp_path / "a.json").read_text())
    noisy = json.loads(json.dumps(doc))
    data = noisy["state"]["combat_"]["alpha"]["data"]
    data[0] *= 1 + 3e-15  # last-bit noise, as BLAS summation order gives on another machine
    (tmp_path / "b.json").write_bytes(reseal(noisy))
    a, sha_a = read_document(tmp_path / "a.json")
    b, sha_b = read_document(tmp_path / "b.json")
    assert sha_a != sha_b
    diffs, worst = compare_documents(a, b)
    assert diffs == [] and 0 < worst < 1e-12
    data[0] *= 1 + 1e-6  # a real difference
    (tmp_path / "c.json").write_bytes(reseal(noisy))
    diffs, worst = compare_documents(a, read_document(tmp_path / "c.json")[0])
    assert len(diffs) == 1 and diffs[0].startswith("state.combat_.alpha")
    assert worst > 1e-9
