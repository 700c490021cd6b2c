"""Fake MRIQC IQM JSONs for tests, benchmarks and the example (never for real data).

:func:`write_iqm_json` writes MRIQC 24's ``IQMFileSink`` layout (sorted keys, two-space indent,
trailing newline, serialized with orjson like MRIQC): the tests check it is byte-identical to a
file written by MRIQC's own sink.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from neuroharmony_bids.atomic import write_text


def _md5(path: str | os.PathLike) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def render_iqm_json(
    iqms: Mapping[str, float],
    bids_meta: Mapping[str, Any] | None = None,
    mriqc_version: str = "24.0.2",
    provenance: Mapping[str, Any] | None = None,
    source_file: str | os.PathLike | None = None,
) -> str:
    """MRIQC JSON text (IQMFileSink layout); IQM keys may carry an ``iqm_`` prefix."""
    out: dict[str, Any] = {}
    for key, value in iqms.items():
        key = str(key)
        if key.startswith("iqm_"):
            key = key[4:]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            out[key] = None
        elif key.startswith("size_") and float(value).is_integer():
            out[key] = int(value)
        else:
            out[key] = float(value)
    meta = {"modality": "T1w"}
    meta.update(dict(bids_meta or {}))
    out["bids_meta"] = meta
    prov: dict[str, Any] = {
        "md5sum": _md5(source_file) if source_file else "",
        "settings": {"testing": False},
        "software": "mriqc",
        "version": mriqc_version,
        "warnings": {"large_rot_frame": False, "small_air_mask": False},
    }
    prov.update(dict(provenance or {}))
    out["provenance"] = prov
    try:  # MRIQC's own serializer and options (IQMFileSink), for byte-identical files
        import orjson
    except ImportError:  # same layout; small floats spelled 1e-06 instead of orjson's 1e-6
        return json.dumps(out, indent=2, sort_keys=True, allow_nan=False) + "\n"
    opts = orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE
    return orjson.dumps(out, option=opts | orjson.OPT_SERIALIZE_NUMPY).decode("utf-8")


def write_iqm_json(
    path: str | os.PathLike,
    iqms: Mapping[str, float],
    bids_meta: Mapping[str, Any] | None = None,
    mriqc_version: str = "24.0.2",
    provenance: Mapping[str, Any] | None = None,
    source_file: str | os.PathLike | None = None,
) -> Path:
    """Write one MRIQC-style T1w IQM JSON atomically (for tests, benchmarks and examples)."""
    return write_text(
        path, render_iqm_json(iqms, bids_meta, mriqc_version, provenance, source_file)
    )


__all__ = ["render_iqm_json", "write_iqm_json"]
