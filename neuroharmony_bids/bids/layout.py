"""The input dataset's T1w scans: entities, paths and scanner metadata, through pybids.

pybids never touches the network; BIDS validation is a separate step (:mod:`.validate`), so
the layout is built with ``validate=False``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuroharmony_bids.errors import InvalidBIDSError, NothingSelectedError

#: Sidecar fields carried into every output (scanner identity).
SCANNER_FIELDS = (
    "Manufacturer",
    "ManufacturersModelName",
    "MagneticFieldStrength",
    "DeviceSerialNumber",
    "SoftwareVersions",
)


_LABEL_RE = re.compile(r"^[a-zA-Z0-9]+$")


@dataclass(frozen=True)
class Scan:
    """One T1w image: its BIDS entities, path and scanner metadata."""

    subject: str
    path: Path
    entities: tuple[tuple[str, str], ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def session(self) -> str | None:
        return dict(self.entities).get("ses")

    @property
    def participant_id(self) -> str:
        return f"sub-{self.subject}"

    @property
    def session_id(self) -> str | None:
        return f"ses-{self.session}" if self.session else None

    @property
    def prefix(self) -> str:
        """``sub-X[_ses-Y][_acq-Z][_run-N]``: the stem shared by all outputs of this scan."""
        return "_".join([f"sub-{self.subject}"] + [f"{k}-{v}" for k, v in self.entities])

    @property
    def bids_name(self) -> str:
        """MRIQC's name for the scan (``sub-X[_ses-Y]..._T1w``)."""
        return f"{self.prefix}_T1w"

    @property
    def rel_dir(self) -> str:
        """``sub-X[/ses-Y]/anat``."""
        ses = self.session
        return f"sub-{self.subject}/" + (f"ses-{ses}/" if ses else "") + "anat"

    def relpath(self, bids_dir: str | os.PathLike) -> str:
        """Path of the image relative to the dataset root (POSIX), symlinked roots included."""
        path, root = Path(self.path), Path(bids_dir)
        try:
            return path.relative_to(root).as_posix()
        except ValueError:  # pybids resolves symlinks; the user may have passed a link
            return path.resolve().relative_to(root.resolve()).as_posix()


def load_layout(bids_dir: str | os.PathLike, database_dir: str | os.PathLike | None = None):
    """A pybids layout of the raw dataset (derivatives not indexed, no validation, no network).

    Sidecar metadata is not indexed (that is most of pybids' indexing time on large datasets);
    :func:`sidecar_metadata` reads the few sidecars of the selected scans instead.
    """
    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    bids_dir = Path(bids_dir)
    if not (bids_dir / "dataset_description.json").is_file():
        raise InvalidBIDSError(
            f"{bids_dir} has no dataset_description.json: not a BIDS dataset root. Point "
            f"bids_dir at the dataset root folder"
        )
    kwargs: dict[str, Any] = {}
    if database_dir is not None:
        kwargs["database_path"] = str(database_dir)
    try:
        return BIDSLayout(
            str(bids_dir),
            validate=False,
            derivatives=False,
            indexer=BIDSLayoutIndexer(validate=False, index_metadata=False),
            **kwargs,
        )
    except Exception as exc:  # pybids raises many types for unreadable datasets
        raise InvalidBIDSError(f"pybids cannot index {bids_dir}: {exc}") from exc


def scanner_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`SCANNER_FIELDS` present in a sidecar (inheritance already applied)."""
    return {k: metadata[k] for k in SCANNER_FIELDS if k in metadata and metadata[k] is not None}


def find_scans(
    bids_dir: str | os.PathLike,
    participant_label: Sequence[str] = (),
    session_label: Sequence[str] = (),
    layout: Any = None,
) -> list[Scan]:
    """Every T1w image (per subject, session, acquisition and run) the filters select.

    Labels come without their ``sub-``/``ses-`` prefix, as :class:`Settings` holds them.

    Raises NothingSelectedError (18) when the filters match nothing, naming what exists.
    """
    bids_dir = Path(bids_dir).resolve()
    subjects, sessions = tuple(participant_label), tuple(session_label)
    layout = layout if layout is not None else load_layout(bids_dir)
    # One query, entities parsed from names: pybids' get_subjects()/get_entities() cost
    # seconds on 1,000 subjects.
    every = [
        (f, *parse_scan_name(Path(f.path).name))
        for f in layout.get(
            suffix="T1w", extension=[".nii", ".nii.gz"], datatype="anat", return_type="object"
        )
    ]
    all_subjects = sorted({sub for _, sub, _ in every})
    missing = [s for s in subjects if s not in all_subjects]
    if subjects and len(missing) == len(subjects):
        shown = ", ".join(all_subjects[:10]) + (" ..." if len(all_subjects) > 10 else "")
        raise NothingSelectedError(
            f"--participant-label {' '.join(subjects)}: no participant with a T1w image of "
            f"that label in {bids_dir} (participants with T1w images: "
            f"{shown or 'none'})"
        )
    selected = [
        (f, sub, ents)
        for f, sub, ents in every
        if (not subjects or sub in subjects) and (not sessions or dict(ents).get("ses") in sessions)
    ]
    if not selected:
        what = []
        if subjects:
            what.append(f"participants {', '.join(subjects)}")
        if sessions:
            what.append(f"sessions {', '.join(sessions)}")
        have = ", ".join(sorted({dict(e).get("ses") for _, _, e in every} - {None})) or "none"
        raise NothingSelectedError(
            f"no T1w image (sub-*/[ses-*/]anat/*_T1w.nii[.gz]) in {bids_dir}"
            + (f" for {' and '.join(what)}" if what else "")
            + (f"; sessions in the dataset: {have}" if sessions else "")
            + ". Check the labels, or the dataset layout"
        )
    cache: dict[Any, Any] = {}
    scans = [
        Scan(
            subject=sub,
            path=Path(f.path),
            entities=ents,
            metadata=scanner_metadata(sidecar_metadata(bids_dir, Path(f.path), cache)),
        )
        for f, sub, ents in selected
    ]
    scans.sort(key=lambda s: s.prefix)
    return scans


def _entities_of(name: str) -> dict[str, str] | None:
    """Key-value entities of a sidecar name (``sub-01_acq-x_T1w.json`` or ``T1w.json``)."""
    parts = name[: -len(".json")].split("_")[:-1]
    out = {}
    for part in parts:
        key, sep, value = part.partition("-")
        if not sep:
            return None
        out[key] = value
    return out


def sidecar_metadata(
    bids_dir: str | os.PathLike, image: str | os.PathLike, cache: dict[Any, Any] | None = None
) -> dict[str, Any]:
    """The image's JSON metadata after the BIDS inheritance principle.

    Sidecars ``*_T1w.json`` whose entities are all among the image's, from the dataset root
    down to the image's folder, are merged; deeper (more specific) files win.
    """
    cache = {} if cache is None else cache
    bids_dir = Path(bids_dir).resolve()
    image = Path(image)
    _, ents = parse_scan_name(image.name)
    subject = image.name.split("_", 1)[0][4:]
    image_ents = {"sub": subject, **dict(ents)}
    suffix = image.name.split(".", 1)[0].rsplit("_", 1)[-1]
    folders = [bids_dir]
    try:
        rel = image.parent.resolve().relative_to(bids_dir)
    except ValueError:
        rel = Path()
    for part in rel.parts:
        folders.append(folders[-1] / part)
    merged: dict[str, Any] = {}
    for folder in folders:
        key = ("listing", folder)
        names = cache.get(key)
        if names is None:
            try:
                names = sorted(n for n in os.listdir(folder) if n.endswith(f"{suffix}.json"))
            except OSError:
                names = []
            cache[key] = names
        for name in names:
            if not (name == f"{suffix}.json" or name.endswith(f"_{suffix}.json")):
                continue
            side = _entities_of(name)
            if side is None or any(image_ents.get(k) != v for k, v in side.items()):
                continue
            path = folder / name
            data = cache.get(path)
            if data is None:
                try:
                    data = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError) as exc:
                    raise InvalidBIDSError(
                        f"{path}: unreadable JSON sidecar ({exc}); fix or remove it"
                    ) from None
                cache[path] = data
            if isinstance(data, dict):
                merged.update(data)
    return merged


def parse_scan_name(filename: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``sub-01_ses-1_acq-mp_run-2_T1w.nii.gz`` → ("01", (("ses","1"), ("acq","mp"), ("run","2"))).

    Entities keep the file's own order (BIDS fixes it), so the output prefix reproduces the
    input name. Pure string work: pybids' per-file entity queries cost ~10 ms each.
    """
    stem = filename.split(".", 1)[0]
    parts = stem.split("_")
    if not parts[0].startswith("sub-") or len(parts) < 2:
        raise InvalidBIDSError(f"{filename}: not a BIDS file name (sub-<label>_..._T1w)")
    pairs = []
    for part in parts[1:-1]:
        key, sep, value = part.partition("-")
        if not sep:
            raise InvalidBIDSError(f"{filename}: {part!r} is not a key-value entity")
        pairs.append((key, value))
    return parts[0][4:], tuple(pairs)


def scans_per_subject(layout: Any) -> dict[str, int]:
    """How many T1w images each subject has (all sessions)."""
    counts: dict[str, int] = {}
    for path in layout.get(
        suffix="T1w", extension=[".nii", ".nii.gz"], datatype="anat", return_type="filename"
    ):
        sub = parse_scan_name(Path(path).name)[0]
        counts[sub] = counts.get(sub, 0) + 1
    return counts


def freesurfer_subject_candidates(scan: Scan, single_scan_subject: bool) -> list[str]:
    """FreeSurfer subject names that may hold this scan, most specific first.

    ``sub-X`` alone is only accepted when the subject has a single T1w in the dataset (sMRIPrep
    merges sessions into one ``sub-X``; using it for each session would be wrong).
    """
    names = [scan.prefix]
    if scan.session:
        names.append(f"{scan.participant_id}_{scan.session_id}")
    if single_scan_subject:
        names.append(scan.participant_id)
    return list(dict.fromkeys(names))


__all__ = [
    "SCANNER_FIELDS",
    "Scan",
    "find_scans",
    "freesurfer_subject_candidates",
    "load_layout",
    "parse_scan_name",
    "scanner_metadata",
    "scans_per_subject",
    "sidecar_metadata",
]
