"""Hostile inputs for the reliability suite: damaged model files and ambiguous tables.

Each model variant starts from a real model document (the shipped model, or any file written by
:func:`neuroharmony_bids.harmonize.io.save_model`) and breaks one thing. Variants that keep a
valid content hash are "resealed" (the hash recomputed after the edit), which anyone can do:
they test the schema checks, not the hash.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from neuroharmony_bids.harmonize import io as model_io


def reseal(doc: dict) -> bytes:
    """The bytes of ``doc`` with a recomputed (valid) content hash."""
    doc = {k: v for k, v in doc.items() if k != "content_sha256"}
    doc["content_sha256"] = hashlib.sha256(model_io._canonical(doc)).hexdigest()
    return model_io._canonical(doc) + b"\n"


def _edit(fn: Callable[[dict], None]) -> Callable[[dict], bytes]:
    def build(doc: dict) -> bytes:
        doc = copy.deepcopy(doc)
        fn(doc)
        return reseal(doc)

    return build


def _set_data(path: str, index: int, value) -> Callable[[dict], None]:
    def fn(doc: dict) -> None:
        node = doc
        for key in path.split("."):
            node = node[key]
        node["data"][index] = value

    return fn


def _oversize(doc: dict) -> None:
    node = doc["state"]["within_cov_"]
    n = node["shape"][0] * 4
    node["shape"] = [n, n]
    node["data"] = [0.0] * (n * n)


def _beta_extra_row(doc: dict) -> None:
    node = doc["state"]["combat_"]["beta"]
    p, r = node["shape"]
    node["shape"] = [p + 1, r]
    node["data"] = node["data"] + node["data"][:r]


def _minimal(doc: dict) -> None:
    for key in list(doc):
        if key not in ("format", "schema_version"):
            del doc[key]


def _raw_replace(old: str, new: str) -> Callable[[dict], bytes]:
    """Text edits that no JSON writer produces (``1e999``, bare ``NaN``)."""

    def build(doc: dict) -> bytes:
        text = model_io._canonical(doc).decode()
        assert old in text, old
        return text.replace(old, new, 1).encode()

    return build


def _deep(doc: dict) -> bytes:
    text = model_io._canonical(doc).decode()
    return text.replace(
        '"metadata":{', '"metadata":{"deep":' + "[" * 5000 + "]" * 5000 + ",", 1
    ).encode()


#: name → (build(doc) → bytes, what the refusal message must say)
MODEL_VARIANTS: dict[str, tuple[Callable[[dict], bytes], str]] = {
    "null in a ComBat array": (_edit(_set_data("state.combat_.gamma", 3, None)), "gamma"),
    "null in the IQM prior": (_edit(_set_data("state.prior_.full.coef", 5, None)), "coef"),
    "zero ComBat scale": (_edit(_set_data("state.combat_.sigma", 2, 0.0)), "sigma"),
    "zero IQM scale": (_edit(_set_data("state.iqm_scale_", 0, 0.0)), "iqm_scale_"),
    "array larger than the regions imply": (_edit(_oversize), "within_cov_"),
    "array shape off by one row": (_edit(_beta_extra_row), "beta"),
    "minimal document": (_edit(_minimal), "state"),
    "out-of-range float 1e999": (_raw_replace('"profile_limit_":', '"profile_limit_":1e999,"x":'),
                                 "1e999"),
    "bare NaN": (_raw_replace('"profile_limit_":', '"profile_limit_":NaN,"x":'), "NaN"),
    "JSON nested 5,000 deep": (_deep, "nested"),
}  # fmt: skip


def model_variant(name: str, source: str | Path | None = None) -> bytes:
    """The bytes of one :data:`MODEL_VARIANTS` entry built from ``source`` (default: shipped)."""
    doc = json.loads(Path(source or model_io.DEFAULT_MODEL).read_bytes())
    return MODEL_VARIANTS[name][0](doc)
