"""Does the shipped model rebuild "the same" on another machine? (issue 11, part 3)

Another machine sums in another order inside BLAS. This script stands in for it by fitting the
shipped model's recipe (ABIDE-I, ``scripts/train_pretrained.py`` without its slow CV figures)
twice with one BLAS thread and once with two, in fresh processes, then prints:

- whether the one-thread rebuilds are bit-identical (the file hash is reproducible here);
- how many stored floats the two-thread rebuild changes, and how many would still differ after
  rounding to 12 or 10 significant digits (why rounding cannot make the hash portable);
- what ``neuroharmony info --compare`` says (the check the model card relies on).

Usage: python bench/rebuild.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_FIT = """
import sys
sys.path[:0] = [sys.argv[2], sys.argv[2] + "/scripts"]
import train_pretrained as tp
from neuroharmony_bids.harmonize.io import save_model
from neuroharmony_bids.harmonize.model import NeuroHarmonizer
table, _ = tp.load_abide(tp.shared_data() / tp.TABLE)
model = NeuroHarmonizer(covariates=("dx",)).fit(table, "site")
print(save_model(model, sys.argv[1], {"name": "rebuild"}))
"""


def _fit(out: Path, threads: int) -> str:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": str(REPO)}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", _FIT, str(out), str(REPO)], env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"fit failed: {proc.stderr[-800:]}")
    return proc.stdout.split()[-1]


def _floats(a, b, out: list) -> None:
    if isinstance(a, dict):
        for k in a:
            _floats(a[k], b[k], out)
    elif isinstance(a, list):
        for x, y in zip(a, b, strict=True):
            _floats(x, y, out)
    elif isinstance(a, float):
        out.append((a, b))


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="nh-rebuild-") as tmp:
        one, again, two = (Path(tmp) / n for n in ("one.json", "one_again.json", "two.json"))
        sha1, sha1b, sha2 = _fit(one, 1), _fit(again, 1), _fit(two, 2)
        pairs: list[tuple[float, float]] = []
        _floats(json.loads(one.read_text())["state"], json.loads(two.read_text())["state"], pairs)
        rounded = {d: sum(float(f"{x:.{d}g}") != float(f"{y:.{d}g}") for x, y in pairs)
                   for d in (12, 10)}  # fmt: skip
        cmp = subprocess.run(
            [sys.executable, "-m", "neuroharmony_bids.cli.table", "info", "--compare",
             str(one), str(two)],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
    print(f"1 BLAS thread, twice: {'bit-identical' if sha1 == sha1b else 'DIFFERENT'} ({sha1})")
    print(f"2 BLAS threads:       sha256 {sha2}")
    print(f"stored floats: {len(pairs)}; changed by the thread count: "
          f"{sum(x != y for x, y in pairs)}; still different after rounding to 12 significant "
          f"digits: {rounded[12]}, to 10: {rounded[10]}")  # fmt: skip
    print(f"neuroharmony info --compare (exit {cmp.returncode}): {cmp.stdout.strip()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
