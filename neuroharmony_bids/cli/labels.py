"""Command-line values that need more than argparse: participant/session labels, sex codes."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from neuroharmony_bids.errors import UsageError

_LABEL_RE = re.compile(r"^[a-zA-Z0-9]+$")


def clean_labels(labels: Iterable[str] | None, entity: str = "sub") -> tuple[str, ...]:
    """Labels without their ``sub-``/``ses-`` prefix; anything but letters/digits is refused.

    Refusing ``/``, ``..``, wildcards and shell characters keeps a label from ever naming a
    path outside the dataset.
    """
    out: list[str] = []
    flag = "--participant-label" if entity == "sub" else "--session-label"
    for raw in labels or ():
        label = str(raw).strip()
        if label.startswith(f"{entity}-"):
            label = label[len(entity) + 1 :]
        if not _LABEL_RE.match(label):
            raise UsageError(
                f"{flag} {raw!r}: a BIDS label has only letters and digits (e.g. 01 or "
                f"{entity}-01); paths, '..', '/', wildcards and shell characters are refused"
            )
        if label not in out:
            out.append(label)
    return tuple(out)


def parse_sex_mapping(pairs: Iterable[str] | Mapping[str, str] | None) -> dict[str, str]:
    """``["1=M", "2=F"]`` → ``{"1": "M", "2": "F"}``."""
    if pairs is None:
        return {}
    if isinstance(pairs, Mapping):
        items = list(pairs.items())
    else:
        items = []
        for pair in pairs:
            key, sep, value = str(pair).partition("=")
            if not sep or not key.strip():
                raise UsageError(
                    f"--sex-mapping {pair!r}: write CODE=SEX pairs, e.g. --sex-mapping 1=M 2=F"
                )
            items.append((key.strip(), value.strip()))
    out = {}
    for key, value in items:
        if value.upper() not in ("M", "F"):
            raise UsageError(f"--sex-mapping {key}={value}: the sex must be M or F")
        out[str(key)] = value.upper()
    return out


__all__ = [
    "clean_labels",
    "parse_sex_mapping",
]
