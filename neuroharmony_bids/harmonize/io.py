"""Model files: plain JSON with a schema, a version and a content hash. Never pickle.

Loading parses JSON into numbers, strings and lists only, so a crafted file cannot execute
code. Before anything is built the file must be a regular file of sane size, parse within
limits (no ``NaN``/``Infinity``/``1e999``, bounded nesting), and every array must have the shape
the model's region, design and IQM lists imply and hold finite numbers: a damaged model is
refused with one message instead of harmonizing to n/a. The embedded SHA-256 of the canonical
content catches truncation and accidental edits; it checks integrity, not origin (anyone who
edits a model can recompute it), so take model files from sources you trust.

Floats are stored exactly (shortest round-trip repr), so the file hash identifies one build.
A rebuild on another machine differs in the last bits of most floats (BLAS summation order),
and rounding cannot fix that (values near a rounding boundary still flip, and rounding a
training range or threshold moves training scans across it), so "the same model" across
machines is decided by :func:`compare_documents` (``neuroharmony info --compare A B``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
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

#: Largest model file read (the shipped one is < 1 MB; 64 MiB holds ~1,000 regions).
MAX_MODEL_BYTES = 64 * 2**20
#: Deepest JSON nesting accepted (the schema needs 5 levels; metadata may add a few).
MAX_DEPTH = 32
#: Default relative tolerance of :func:`compare_documents` (see its docstring).
COMPARE_RTOL = 1e-9

_STATE = (
    "use_etiv_", "etiv_mean_", "covariate_encoding_", "design_names_", "regions_",
    "within_cov_", "between_cov_", "scale_prior_", "profile_limit_", "iqm_sets_", "iqms_",
    "iqm_range_", "iqm_center_", "iqm_scale_", "iqm_site_shift_", "prior_", "cv_prior_", "age_range_",
    "etiv_range_", "ref_harmonized_sd_", "training_summary_", "cv_metrics_", "freesurfer_version_",
)  # fmt: skip
#: State a model may lack (older files, or not applicable).
_OPTIONAL_STATE = (
    "etiv_mean_", "cv_metrics_", "cv_prior_", "training_summary_", "freesurfer_version_",
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
    """JSON → Python with arrays; only called on documents :func:`check_document` accepted."""
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return np.asarray(obj["data"], dtype=np.dtype(obj["__ndarray__"])).reshape(obj["shape"])
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


# --------------------------------------------------------------------------- reading safely


class _Refused(Exception):
    """Raised inside the JSON parser hooks; becomes a ModelFileError naming the file."""


def _read_bounded(path: Path) -> bytes:
    """The bytes of a regular file no larger than MAX_MODEL_BYTES (FIFOs, devices refused).

    Opened non-blocking and checked with ``fstat`` on the open descriptor, so a FIFO cannot
    hang the open and a file swapped after the check is not read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ModelFileError(
            f"model file {path} does not exist; pass an existing file to --model or omit it to "
            "use the shipped model"
        ) from None
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = (
                "a folder" if stat.S_ISDIR(st.st_mode)
                else "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file"
            )  # fmt: skip
            raise ModelFileError(
                f"model file {path} is {kind}, not a regular file; pass a model JSON file "
                "written by `neuroharmony train`"
            )
        if st.st_size > MAX_MODEL_BYTES:
            raise ModelFileError(
                f"model file {path} is {st.st_size / 2**20:.0f} MiB, larger than any model "
                f"({MAX_MODEL_BYTES // 2**20} MiB limit); it is not a neuroharmony model"
            )
        with os.fdopen(fd, "rb") as fh:
            fd = -1
            raw = fh.read(MAX_MODEL_BYTES + 1)
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc.strerror}") from None
    finally:
        if fd >= 0:
            os.close(fd)
    if len(raw) > MAX_MODEL_BYTES:
        raise ModelFileError(f"model file {path} grew beyond {MAX_MODEL_BYTES} bytes while read")
    return raw


def _bare_constant(name: str) -> float:
    raise _Refused(f"bare {name} (not valid JSON; a model stores finite numbers only)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {text[:40]} is out of range for a 64-bit float")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 19:
        raise _Refused(f"integer {text[:40]}... is out of range")
    return int(text)


def _depth(obj: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, iteratively (stops early beyond ``limit``)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, d = stack.pop()
        if d > limit:
            return d
        deepest = max(deepest, d)
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node if isinstance(v, dict | list))
    return deepest


def _parse(raw: bytes, path: Path) -> dict:
    protocol0 = raw[:1] in (b"(", b"c") and raw.rstrip().endswith(b".")
    if raw[:1] == b"\x80" or raw[:2] == b"PK" or protocol0:
        raise ModelFileError(
            f"{path} is a pickle/zip archive, not a neuroharmony JSON model; refusing to load it "
            "(pickles can execute code). Retrain or convert with `neuroharmony train`"
        )
    try:
        doc = json.loads(
            raw.decode("utf-8"),
            parse_constant=_bare_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except _Refused as exc:
        raise ModelFileError(f"{path} is not a valid neuroharmony model: {exc}") from None
    except RecursionError:
        raise ModelFileError(
            f"{path} is not a valid neuroharmony model: JSON nested too deeply"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(
            f"{path} is not a valid neuroharmony model (corrupt or truncated JSON: {exc}); "
            "download or retrain it"
        ) from None
    if _depth(doc, MAX_DEPTH) > MAX_DEPTH:
        raise ModelFileError(
            f"{path} is not a valid neuroharmony model: JSON nested deeper than {MAX_DEPTH} levels"
        )
    return doc


def read_document(path: str | Path | None = None) -> tuple[dict, str]:
    """Parse, verify and schema-check a model file; return (document, file sha256)."""
    path = Path(path) if path is not None else DEFAULT_MODEL
    raw = _read_bounded(path)
    doc = _parse(raw, path)
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
    problems = check_document(doc)
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ModelFileError(
            f"{path}: model content is incomplete or inconsistent: "
            f"{'; '.join(problems[:3])}{more}. Restore the original file or retrain the model"
        )
    return doc, hashlib.sha256(raw).hexdigest()


# --------------------------------------------------------------------------- schema


class _Check:
    """Collects schema problems; every accessor returns a safe value (None on a problem)."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self._seen: dict[int, np.ndarray | None] = {}
        self._failed: set[str] = set()

    def fail(self, where: str, text: str) -> None:
        if where not in self._failed:  # one problem per field
            self._failed.add(where)
            self.problems.append(f"{where} {text}")

    def obj(self, parent: Any, key: str, where: str, optional: bool = False) -> dict | None:
        node = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(node, dict):
            return node
        if not (optional and (not isinstance(parent, dict) or key not in parent)):
            self.fail(f"{where}.{key}", "is missing or not an object")
        return None

    def names(self, node: Any, where: str, unique: bool = True) -> list[str] | None:
        if not isinstance(node, list) or not all(isinstance(v, str) for v in node):
            self.fail(where, "is missing or not a list of names")
            return None
        if unique and len(set(node)) != len(node):
            dup = sorted({v for v in node if node.count(v) > 1})
            self.fail(where, f"repeats {', '.join(map(repr, dup[:5]))}")
            return None
        return node

    def number(self, node: Any, where: str, lo: float = -math.inf, hi: float = math.inf):
        if isinstance(node, bool) or not isinstance(node, int | float):
            self.fail(where, f"must be a number, got {type(node).__name__}")
            return None
        if not lo <= node <= hi:
            self.fail(where, f"= {node!r} is outside [{lo:g}, {hi:g}]")
            return None
        return float(node)

    def pair(self, node: Any, where: str) -> None:
        if not (isinstance(node, list) and len(node) == 2):
            self.fail(where, "must be a [low, high] pair")
        elif None not in (self.number(node[0], where), self.number(node[1], where)):
            if node[0] > node[1]:
                self.fail(where, f"low {node[0]!r} > high {node[1]!r}")

    def array(self, node: Any, where: str, shape: tuple | None, *, positive: bool = False,
              nonnegative: bool = False, unit: bool = False) -> np.ndarray | None:  # fmt: skip
        """An array node of the expected shape, finite (and positive etc.), else None.

        Shape and length are checked before the numbers are converted, so an oversized
        array costs nothing beyond the parse.
        """
        if not isinstance(node, dict) or not {"__ndarray__", "shape", "data"} <= set(node):
            self.fail(where, "is missing or not an array")
            return None
        try:
            dtype = np.dtype(node["__ndarray__"])
        except (TypeError, ValueError):
            self.fail(where, f"has an unknown type {str(node['__ndarray__'])[:30]!r}")
            return None
        if dtype.kind not in "fiub" or dtype.itemsize > 8:
            self.fail(where, f"holds unsupported type {dtype}")
            return None
        given, data = node["shape"], node["data"]
        if not isinstance(given, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in given
        ):
            self.fail(where, "has an invalid shape")
            return None
        if shape is not None and tuple(given) != tuple(shape):
            self.fail(where, f"has shape {given} but the model's lists imply {list(shape)}")
            return None
        if not isinstance(data, list) or len(data) != math.prod(given):
            self.fail(where, f"holds {len(data) if isinstance(data, list) else 'no'} values, "
                      f"its shape {given} needs {math.prod(given)}")  # fmt: skip
            return None
        key = id(node)
        if key not in self._seen:
            try:  # null becomes NaN (refused below); text or nested lists raise
                self._seen[key] = np.asarray(data, dtype=float)
            except (TypeError, ValueError):
                self._seen[key] = None
        arr = self._seen[key]
        if arr is None or arr.ndim != 1:
            self.fail(where, "holds non-numeric values (a damaged model)")
            return None
        bad = ~np.isfinite(arr)
        if positive:
            bad |= arr <= 0
        if nonnegative:
            bad |= arr < 0
        if unit:
            bad |= (arr < 0) | (arr > 1)
        if bad.any():
            what = "positive" if positive else "≥ 0" if nonnegative else "in [0, 1]" if unit else ""
            what = f"finite{' and ' + what if what else ''} (null, NaN or out of range)"
            self.fail(where, f"has {int(bad.sum())} value(s) that are not {what} "
                      f"(first at flat index {int(np.flatnonzero(bad)[0])})")  # fmt: skip
            return None
        return arr.reshape(given)


def _generic_arrays(node: Any, where: str, check: _Check) -> None:
    """Every array anywhere in ``node``: well-formed and finite (shapes checked elsewhere)."""
    if isinstance(node, dict):
        if "__ndarray__" in node:
            check.array(node, where, None)
        else:
            for k, v in node.items():
                _generic_arrays(v, f"{where}.{k}", check)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            if isinstance(v, dict | list):
                _generic_arrays(v, f"{where}[{i}]", check)


def _check_params(params: Any, check: _Check) -> None:
    if not isinstance(params, dict):
        check.fail("params", "is missing or not an object")
        return
    unknown = sorted(set(params) - set(NeuroHarmonizer().get_params()))
    if unknown:
        check.fail("params", f"has unknown parameter(s) {', '.join(unknown)} (a newer model?)")
    if "covariates" in params:
        check.names(params["covariates"], "params.covariates")


def _design_width(state: dict, params: dict, check: _Check) -> int | None:
    """Columns of the ComBat design the model builds: age, age², sex, [eTIV], covariates."""
    use_etiv = state.get("use_etiv_")
    if not isinstance(use_etiv, bool):
        check.fail("state.use_etiv_", "must be true or false")
        return None
    if use_etiv:
        check.number(state.get("etiv_mean_"), "state.etiv_mean_", 0.0)
    width = 3 + int(use_etiv)
    enc = check.obj(state, "covariate_encoding_", "state")
    covs = params.get("covariates", []) if isinstance(params, dict) else []
    if enc is None or not isinstance(covs, list):
        return None
    for cov in covs:
        e, where = enc.get(cov), f"state.covariate_encoding_.{cov}"
        if not isinstance(e, dict):
            check.fail(where, "is missing")
            return None
        if e.get("kind") == "numeric":
            check.number(e.get("mean"), f"{where}.mean")
            width += 1
        elif e.get("kind") == "categorical":
            levels = check.names(e.get("levels"), f"{where}.levels")
            freq = e.get("freq")
            if levels is None or not isinstance(freq, list) or len(freq) != len(levels):
                check.fail(where, "needs matching 'levels' and 'freq' lists")
                return None
            for i, f in enumerate(freq):
                check.number(f, f"{where}.freq[{i}]", 0.0, 1.0)
            width += len(levels) - 1
        else:
            check.fail(where, "has no valid 'kind' (numeric or categorical)")
            return None
    return width


def check_document(doc: dict) -> list[str]:
    """Every way ``doc`` differs from what :func:`load_model` needs; empty when it is usable.

    Shapes follow from the lists: R regions, P design columns, K training sites, Q IQMs.
    """
    check = _Check()
    params, state = doc.get("params"), doc.get("state")
    _check_params(params, check)
    if not isinstance(state, dict):
        return [*check.problems, "state is missing or not an object"]
    _generic_arrays(state, "state", check)
    missing = [k for k in _STATE if k not in state and k not in _OPTIONAL_STATE]
    if missing:
        check.fail("state", f"lacks {', '.join(missing)}")
    regions = check.names(state.get("regions_"), "state.regions_")
    design = check.names(state.get("design_names_"), "state.design_names_")
    iqms = check.names(state.get("iqms_"), "state.iqms_")
    combat = check.obj(state, "combat_", "state")
    sites = check.names(combat.get("sites"), "state.combat_.sites") if combat else None
    width = _design_width(state, params if isinstance(params, dict) else {}, check)
    if design is not None and width is not None and len(design) != width:
        check.fail("state.design_names_", f"has {len(design)} names, the covariates imply {width}")
    if regions is not None and not regions:
        check.fail("state.regions_", "is empty")
    if regions is None or design is None or iqms is None or combat is None or sites is None:
        return check.problems
    R, P, K, Q = len(regions), len(design), len(sites), len(iqms)
    c = "state.combat_"
    check.array(combat.get("alpha"), f"{c}.alpha", (R,))
    check.array(combat.get("beta"), f"{c}.beta", (P, R))
    check.array(combat.get("sigma"), f"{c}.sigma", (R,), positive=True)
    check.array(combat.get("gamma"), f"{c}.gamma", (K, R))
    check.array(combat.get("delta"), f"{c}.delta", (K, R), positive=True)
    extra = sorted(set(combat) - {f.name for f in fields(ComBatFit)})
    if extra:
        check.fail(c, f"has unknown field(s) {', '.join(extra)}")
    within = check.array(state.get("within_cov_"), "state.within_cov_", (R, R))
    between = check.array(state.get("between_cov_"), "state.between_cov_", (R, R))
    if within is not None and between is not None:
        try:  # the posterior and the profile test solve with these: they must be invertible
            np.linalg.cholesky(within)
            np.linalg.cholesky(within + between)
        except np.linalg.LinAlgError:
            check.fail("state.within_cov_", "is not a positive-definite covariance")
    check.array(state.get("ref_harmonized_sd_"), "state.ref_harmonized_sd_", (R,),
                nonnegative=True)  # fmt: skip
    check.array(state.get("iqm_center_"), "state.iqm_center_", (Q,))
    check.array(state.get("iqm_scale_"), "state.iqm_scale_", (Q,), positive=True)
    check.array(state.get("iqm_site_shift_"), "state.iqm_site_shift_", (Q,), nonnegative=True)
    ranges = check.obj(state, "iqm_range_", "state")
    if ranges is not None:
        for name in iqms:
            check.pair(ranges.get(name), f"state.iqm_range_.{name}")
    sets = check.obj(state, "iqm_sets_", "state")
    prior = check.obj(state, "prior_", "state")
    if sets is not None and prior is not None:
        for set_name in ("core", "full"):
            cols = check.names(sets.get(set_name), f"state.iqm_sets_.{set_name}")
            if cols is None:
                continue
            unknown = [x for x in cols if x not in iqms]
            if unknown:
                check.fail(f"state.iqm_sets_.{set_name}", f"names IQMs not in iqms_: {unknown[:5]}")
            p, where = check.obj(prior, set_name, "state.prior_"), f"state.prior_.{set_name}"
            if p is None:
                continue
            check.array(p.get("coef"), f"{where}.coef", (len(cols), R))
            check.array(p.get("intercept"), f"{where}.intercept", (R,))
            grid = p.get("dist_grid")
            n_grid = len(grid.get("data", [])) if isinstance(grid, dict) else 0
            g = check.array(grid, f"{where}.dist_grid", (n_grid,))
            check.array(p.get("confidence"), f"{where}.confidence", (n_grid,), unit=True)
            if g is not None and (n_grid < 2 or (np.diff(g) < 0).any()):
                check.fail(f"{where}.dist_grid", "must hold ≥ 2 increasing distances")
    sp = state.get("scale_prior_")
    if not (isinstance(sp, list) and len(sp) == 2):
        check.fail("state.scale_prior_", "must hold two numbers")
    else:
        for i, v in enumerate(sp):
            check.number(v, f"state.scale_prior_[{i}]", 1e-300)
    check.number(state.get("profile_limit_"), "state.profile_limit_", 0.0, 1.0)
    check.pair(state.get("age_range_"), "state.age_range_")
    if state.get("etiv_range_") is not None:
        check.pair(state.get("etiv_range_"), "state.etiv_range_")
    fs = state.get("freesurfer_version_")
    if fs is not None and not isinstance(fs, str):
        check.fail("state.freesurfer_version_", "must be a version string or null")
    for key in ("cv_prior_", "training_summary_", "cv_metrics_"):
        if key in state and not isinstance(state[key], dict):
            check.fail(f"state.{key}", "is not an object")
    return check.problems


def load_model(path: str | Path | None = None) -> NeuroHarmonizer:
    """Load a model (``None``: the shipped ABIDE-I model) without executing any code."""
    return _model_from(*read_document(path))


def load_model_with_info(path: str | Path | None = None) -> tuple[NeuroHarmonizer, dict]:
    """The model and :func:`model_info` from one read of the file (the BIDS App's drivers)."""
    doc, sha = read_document(path)
    return _model_from(doc, sha), _info_from(doc, sha, path)


def _model_from(doc: dict, sha: str) -> NeuroHarmonizer:
    params = _decode(doc["params"])
    state = _decode(doc["state"])
    combat = state.pop("combat_")
    model = NeuroHarmonizer(**params)
    model.combat_ = ComBatFit(
        **combat,
        site_codes=np.zeros(0, dtype=int),
        residuals=np.zeros((0, len(combat["alpha"]))),
    )
    for name in _STATE:
        if name in state:
            setattr(model, name, state[name])
    model.scale_prior_ = tuple(model.scale_prior_)
    model.model_sha256_ = sha
    model.metadata_ = doc.get("metadata", {})
    return model


def model_info(path: str | Path | None = None) -> dict:
    """Everything a user needs to identify a model, without the arrays (validated as a load)."""
    return _info_from(*read_document(path), path)


def _info_from(doc: dict, sha: str, path: str | Path | None) -> dict:
    state = doc["state"]
    return {
        "path": str(Path(path) if path is not None else DEFAULT_MODEL),
        "sha256": sha,
        "format": doc["format"],
        "schema_version": doc["schema_version"],
        "package_version": doc.get("package_version", "unknown"),
        "metadata": doc.get("metadata", {}) if isinstance(doc.get("metadata"), dict) else {},
        "params": doc["params"],
        "design": state["design_names_"],
        "regions": state["regions_"],
        "iqms": state["iqm_sets_"],
        "age_range": state["age_range_"],
        "training_summary": state.get("training_summary_", {}),
        "iqm_prior_cv": state.get("cv_prior_", {}),
        "cv_metrics": state.get("cv_metrics_", {}),
    }


# --------------------------------------------------------------------------- rebuild check


def _differences(a: Any, b: Any, where: str, rtol: float, out: list, worst: list) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        if "__ndarray__" in a and "__ndarray__" in b:
            if a["shape"] != b["shape"]:
                out.append(f"{where}: shape {a['shape']} vs {b['shape']}")
                return
            x, y = np.asarray(a["data"], dtype=float), np.asarray(b["data"], dtype=float)
            scale = max(float(np.abs(x).max(initial=0.0)), float(np.abs(y).max(initial=0.0)))
            diff = float(np.abs(x - y).max(initial=0.0)) / scale if scale > 0 else 0.0
            worst.append((diff, where))
            if diff > rtol:
                out.append(f"{where}: differs by {diff:.3g} of its largest value")
            return
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{where}.{k}: only in {'the first' if k in a else 'the second'}")
            else:
                _differences(a[k], b[k], f"{where}.{k}", rtol, out, worst)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{where}: {len(a)} vs {len(b)} items")
        else:
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                _differences(x, y, f"{where}[{i}]", rtol, out, worst)
    elif isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        scale = max(abs(a), abs(b))
        diff = abs(a - b) / scale if scale > 0 else 0.0
        worst.append((diff, where))
        if diff > rtol:
            out.append(f"{where}: {a!r} vs {b!r}")
    elif a != b:
        out.append(f"{where}: {str(a)[:40]!r} vs {str(b)[:40]!r}")


def compare_documents(a: dict, b: dict, rtol: float = COMPARE_RTOL) -> tuple[list[str], float]:
    """Where two model documents disagree; (differences, largest relative difference seen).

    Names, flags and integers must be equal; each array agrees when its largest absolute
    difference is at most ``rtol`` times its largest magnitude, each scalar float within ``rtol``
    relative. Parameters, state and metadata are compared; the package version and the hashes
    (which differ between machines by construction) are not.
    """
    out: list[str] = []
    worst: list[tuple[float, str]] = []
    for part in ("params", "state", "metadata"):
        _differences(a.get(part), b.get(part), part, rtol, out, worst)
    return out, max((d for d, _ in worst), default=0.0)
