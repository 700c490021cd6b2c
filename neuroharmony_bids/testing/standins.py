"""Datasets for runs with the stand-in tools (``tests/standins``): no derivatives in the dataset,
the outputs the tools must produce kept aside as the stand-ins' content.

The stand-ins copy ``data/freesurfer/<subject>/stats/*`` and ``data/mriqc/<bids name>.json``,
so a test can compare every derivative with the files the "tools" wrote. Their content is a
real-format corpus when one is given (``tests/data/real``: real FreeSurfer 5.3-7.4.1 stats and
MRIQC 21-24 JSONs, dealt to the scans in turn), else the files :mod:`.fixtures` renders from
the table rows in the FreeSurfer 7.3.2 and MRIQC 24 layouts.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from neuroharmony_bids.testing.fixtures import build_bids_dataset

#: Text of the placeholder license file; the recon-all stand-in only checks that it exists.
PLACEHOLDER_LICENSE = "placeholder for the recon-all stand-in; not a FreeSurfer license\n"


@dataclass
class StandinDataset:
    """A BIDS dataset without derivatives and what the stand-ins will write for it."""

    bids: Path
    data: Path
    license: Path
    bids_names: list[str]
    participants: list[str]


def build_standin_dataset(
    root: str | os.PathLike, rows: pd.DataFrame, corpus: str | os.PathLike | None = None
) -> StandinDataset:
    """``root/bids`` (no derivatives), ``root/data`` (the tools' outputs), a placeholder license.

    ``corpus``: a folder laid out like ``tests/data/real`` whose files become the outputs.
    """
    root = Path(root)
    fixture = build_bids_dataset(root / "bids", rows, fs_version="7.3.2")
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    shutil.move(fixture.freesurfer_dir, data / "freesurfer")
    shutil.move(fixture.mriqc_dir, data / "mriqc")
    shutil.rmtree(root / "bids" / "derivatives")
    if corpus is not None:
        _deal_corpus(Path(corpus), data, fixture.bids_names)
    license_file = root / "license.txt"
    license_file.write_text(PLACEHOLDER_LICENSE)
    return StandinDataset(root / "bids", data, license_file, fixture.bids_names,
                          fixture.participants)  # fmt: skip


def _deal_corpus(corpus: Path, data: Path, bids_names: list[str]) -> None:
    """Give each scan, in turn, a real FreeSurfer subject's stats and a real MRIQC JSON."""
    names = ("aseg.stats", "lh.aparc.stats", "rh.aparc.stats")
    subjects = sorted(
        d for d in corpus.glob("freesurfer/*/*") if all((d / "stats" / n).is_file() for n in names)
    )
    jsons = sorted(corpus.glob("mriqc/*/sub-*_T1w.json"))
    if not subjects or not jsons:
        raise FileNotFoundError(f"{corpus}: no freesurfer/*/*/stats or mriqc/*/sub-*_T1w.json")
    for i, name in enumerate(bids_names):
        stats = data / "freesurfer" / name[: -len("_T1w")] / "stats"
        for n in names:
            shutil.copyfile(subjects[i % len(subjects)] / "stats" / n, stats / n)
        shutil.copyfile(jsons[i % len(jsons)], data / "mriqc" / f"{name}.json")


def standin_env(
    standins: str | os.PathLike, data: str | os.PathLike, log: str | os.PathLike, **switches: str
) -> dict[str, str]:
    """The environment of a run with the stand-ins first on PATH (``switches``: e.g.
    ``fail="recon-all:sub-01"`` sets ``NEUROHARMONY_STANDIN_FAIL``)."""
    env = dict(os.environ)
    env["PATH"] = f"{standins}{os.pathsep}{env.get('PATH', '')}"
    env["NEUROHARMONY_STANDIN_DATA"] = str(data)
    env["NEUROHARMONY_STANDIN_LOG"] = str(log)
    env.pop("FREESURFER_HOME", None)
    for key, value in switches.items():
        env[f"NEUROHARMONY_STANDIN_{key.upper()}"] = value
    return env


__all__ = ["PLACEHOLDER_LICENSE", "StandinDataset", "build_standin_dataset", "standin_env"]
