"""The one version string, read from the repository's ``version`` file.

Order: ``$NEUROHARMONY_VERSION_FILE``, the ``version`` file beside the package (a source
checkout), ``/version`` (the container), then the installed distribution's metadata.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path


def _read_version() -> str:
    candidates = []
    if os.environ.get("NEUROHARMONY_VERSION_FILE"):
        candidates.append(Path(os.environ["NEUROHARMONY_VERSION_FILE"]))
    candidates += [Path(__file__).resolve().parent.parent / "version", Path("/version")]
    for path in candidates:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text:
            return text
    try:
        return metadata.version("neuroharmony-bids")
    except metadata.PackageNotFoundError:  # pragma: no cover - broken install
        return "0+unknown"


__version__ = _read_version()
