"""A BIDS dataset whose derivatives are the real-format corpus (``tests/data/real``).

Shared by ``bench/real_outputs.py`` and the tests, so both run the participant level on the
same pairs of real FreeSurfer/FastSurfer stats and real MRIQC JSONs. Images are stand-ins and
age/sex are stand-in covariates; the stats and IQM files are copied byte for byte.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from neuroharmony_bids.testing.fixtures import build_bids_dataset

#: (subject label, stats folder, MRIQC JSON, stand-in age, stand-in sex), relative to the
#: corpus root (``tests/data/real``) and its ``mriqc`` folder.
REAL_PAIRS: list[tuple[str, str, str, int, str]] = [
    ("fs53", "freesurfer/5.3/copy-hcp", "21.0.0rc2/sub-01_T1w.json", 28, "M"),
    ("fs60", "freesurfer/6.0/nfmrix-sub-01", "22.0.0rc1/sub-0001_T1w.json", 24, "F"),
    ("fs70", "freesurfer/7.0/soichi", "22.0.6/sub-113_T1w.json", 31, "M"),
    (
        "fs741",
        "freesurfer/7.4.1/nimh-dasb-sub-01",
        "22.0.6/copy-nan-qi_1_sub-113_T1w.json",
        26,
        "F",
    ),
    ("fs741b", "freesurfer/7.4.1/copy-fs741", "23.0.1/sub-0206_T1w.json", 22, "M"),
    (
        "fastsurfer",
        "fastsurfer/2.x/copy-assembled",
        "24.1.0.dev0/sub-001_ses-pilot003_acq-morphobox_T1w.json",
        29,
        "F",
    ),
]


def build_real_dataset(
    root: str | os.PathLike,
    real_dir: str | os.PathLike,
    pairs: Sequence[tuple[str, str, str, int, str]] = REAL_PAIRS,
) -> tuple[Path, Path, Path]:
    """Write ``root/bids`` plus ``root/freesurfer`` (SUBJECTS_DIR) and ``root/mriqc``; return
    the three folders (point ``--freesurfer-dir``/``--mriqc-dir`` at the last two)."""
    root, real_dir = Path(root), Path(real_dir)
    bids = root / "bids"
    rows = pd.DataFrame(
        [
            {"SUB_ID": s, "AGE_AT_SCAN": age, "sex": sex, "SITE_ID": s, "vendor": "stand-in"}
            for s, _, _, age, sex in pairs
        ]
    )
    build_bids_dataset(bids, rows, freesurfer=False, mriqc=False, model_column=None)
    fs_dir, mq_dir = root / "freesurfer", root / "mriqc"
    for sub, stats, iqm, _, _ in pairs:
        shutil.copytree(real_dir / stats / "stats", fs_dir / f"sub-{sub}" / "stats")
        target = mq_dir / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(real_dir / "mriqc" / iqm, target)
    return bids, fs_dir, mq_dir


__all__ = ["REAL_PAIRS", "build_real_dataset"]
