"""Model files: plain JSON with a schema, a version and a content hash. Never pickle.

Loading parses JSON into numbers, strings and lists only, so a crafted file cannot execute code;
the embedded SHA-256 of the canonical content catches truncation and edits.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from neuroharmony_bids import __version__
from neuroharmony_bids.atomic import write_bytes
from neuroharmony_bids.errors import ModelFileError
from neuroharmony_bids.harmonize.combat import ComBatFit
from neuroharmony_bids.harmonize.model import NeuroHarmonizer

FORMAT = "neuroharmony-model"
SCHEMA_VERSION = 1
DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEFAULT_MODEL = DATA_DIR / "neuroharmony_abide1.json"

_STATE = (
    "use_etiv_", "etiv_mean_", "covariate_encoding_", "design_names_", "regions_",
    "within_cov_", "between_cov_", "scale_prior_", "profile_limit_", "iqm_sets_", "iqms_",
    "iqm_range_", "iqm_center_", "iqm_scale_", "iqm_site_shift_", "prior_", "cv_prior_", "age_range_",
    "etiv_range_", "ref_harmonized_sd_", "training_summary_", "cv_metrics_", "freesurfer_version_",
)  # fmt: skip
_COMBAT_SKIP = ("site_codes", "residuals")  # training-row data: not needed to apply


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {
            "__ndarray__": obj.dtype.str,
            "shape": list(obj.shape),
            "data": obj.ravel().tolist(),
        }
    if isinstance(obj, dict):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_encode(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            dtype = np.dtype(obj["__ndarray__"])
            if dtype.kind not in "fiub":
                raise ModelFileError(f"model file holds an array of unsupported type {dtype}")
            return np.asarray(obj["data"], dtype=dtype).reshape(obj["shape"])
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def _canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def model_to_document(model: NeuroHarmonizer, metadata: dict | None = None) -> dict:
    """The JSON document of a fitted model, including its content hash."""
    combat = {
        f.name: getattr(model.combat_, f.name)
        for f in fields(ComBatFit)
        if f.name not in _COMBAT_SKIP
    }
    state = {name: getattr(model, name) for name in _STATE if hasattr(model, name)}
    # JSON object keys are strings: keep ridge penalties as strings in cv records
    doc = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "package_version": __version__,
        "metadata": metadata or {},
        "params": _encode(model.get_params()),
        "state": _encode({**state, "combat_": combat}),
    }
    doc["content_sha256"] = hashlib.sha256(_canonical(doc)).hexdigest()
    return doc


def save_model(model: NeuroHarmonizer, path: str | Path, metadata: dict | None = None) -> str:
    """Write ``model`` atomically; return the SHA-256 of the file."""
    data = _canonical(model_to_document(model, metadata)) + b"\n"
    write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def read_document(path: str | Path | None = None) -> tuple[dict, str]:
    """Parse and verify a model file; return (document, file sha256)."""
    path = Path(path) if path is not None else DEFAULT_MODEL
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(
            f"model file {path} does not exist; pass an existing file to --model or omit it to "
            "use the shipped model"
        ) from None
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc.strerror}") from None
    if raw[:1] == b"\x80" or raw[:2] in (b"PK",):
        raise ModelFileError(
            f"{path} is a pickle/zip archive, not a neuroharmony JSON model; refusing to load it "
            "(pickles can execute code). Retrain or convert with `neuroharmony train`"
        )
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(
            f"{path} is not a valid neuroharmony model (corrupt or truncated JSON: {exc}); "
            "download or retrain it"
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a neuroharmony model file (format tag missing)")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise ModelFileError(
            f"{path} uses model schema {doc.get('schema_version')!r}; this neuroharmony-bids "
            f"({__version__}) reads schema {SCHEMA_VERSION}. Retrain the model with this version"
        )
    claimed = doc.pop("content_sha256", None)
    if claimed != hashlib.sha256(_canonical(doc)).hexdigest():
        raise ModelFileError(
            f"{path}: content hash mismatch, the file was modified or corrupted; "
            "restore the original file"
        )
    doc["content_sha256"] = claimed
    return doc, hashlib.sha256(raw).hexdigest()


def load_model(path: str | Path | None = None) -> NeuroHarmonizer:
    """Load a model (``None``: the shipped ABIDE-I model) without executing any code."""
    doc, sha = read_document(path)
    try:
        params = _decode(doc["params"])
        state = _decode(doc["state"])
        model = NeuroHarmonizer(**params)
        combat = state.pop("combat_")
        model.combat_ = ComBatFit(
            **combat,
            site_codes=np.zeros(0, dtype=int),
            residuals=np.zeros((0, len(combat["alpha"]))),
        )
        for name, value in state.items():
            if name not in _STATE:
                raise KeyError(name)
            setattr(model, name, value)
        model.scale_prior_ = tuple(model.scale_prior_)
        model.prior_ = {
            k: {kk: np.asarray(vv) for kk, vv in v.items()} for k, v in model.prior_.items()
        }
        n = len(model.regions_)
        if model.within_cov_.shape != (n, n) or model.combat_.beta.shape[1] != n:
            raise ValueError("array shapes do not match the region list")
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(
            f"{path or DEFAULT_MODEL}: model content is incomplete or inconsistent ({exc}); "
            "retrain the model"
        ) from None
    model.model_sha256_ = sha
    model.metadata_ = doc.get("metadata", {})
    return model


def model_info(path: str | Path | None = None) -> dict:
    """Everything a user needs to identify a model, without the arrays."""
    doc, sha = read_document(path)
    state = doc["state"]
    return {
        "path": str(Path(path) if path is not None else DEFAULT_MODEL),
        "sha256": sha,
        "format": doc["format"],
        "schema_version": doc["schema_version"],
        "package_version": doc["package_version"],
        "metadata": doc.get("metadata", {}),
        "params": doc["params"],
        "design": state["design_names_"],
        "regions": state["regions_"],
        "iqms": state["iqm_sets_"],
        "age_range": state["age_range_"],
        "training_summary": state["training_summary_"],
        "iqm_prior_cv": state["cv_prior_"],
        "cv_metrics": state.get("cv_metrics_", {}),
    }
