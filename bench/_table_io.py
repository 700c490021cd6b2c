"""``neuroharmony harmonize`` on a large table vs pyarrow's own read+write of the same file.

Each measurement runs in a fresh process (peak RSS is per process), alternating the two so
that a busy shared machine slows both alike; the best wall time of each is kept. Every child
first touches and frees a buffer larger than any peak measured here (4× the CSV + 512 MiB),
writes and deletes a file larger than any output (2× the CSV: the page cache does not reuse
freed anonymous memory, but does reuse a deleted file's pages), then resets its peak RSS, and
only then starts its clock: on a VM whose host backs guest memory lazily, the first touch of
memory not used recently costs ~8 ms per MiB (a 400 MiB output file: ~3 s of CPU cold, 0.1 s
warm), which would otherwise be charged to whichever tool runs first (a normal machine pays
~50× less). The files live in /dev/shm when it has room, so that the shared disk (and
its writeback of other people's files) is not what is measured.
Printed:

- wall-time ratio CLI / (pyarrow read + write), target ≤ 1.3;
- peak RSS of the CLI / the input table's size in memory (pyarrow), target ≤ 2;
- whether two CLI runs give byte-identical files, and whether pandas (and R, when ``Rscript``
  is on PATH) read the output back with every row and column;
- with ``$NEUROHARMONY_BENCH_BASE`` set to another checkout (e.g. the code at the start of a
  round), the same figures for its CLI, measured alternately in the same run, and whether its
  output has the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Peak RSS is VmHWM of this process image: ru_maxrss would include the benchmark parent's
# memory (Linux keeps the high-water mark of the forked copy across exec).
_STATS = """
def _warm(nbytes, folder, file_bytes):
    buf = bytearray(nbytes)  # zero-filled: every page touched
    buf[::4096] = b"\\x01" * len(range(0, nbytes, 4096))
    del buf
    # page-cache pages are not taken from freed anonymous memory: a file written and deleted
    # leaves warm pages that the tool's output file then reuses
    import os
    scratch = os.path.join(folder, ".warm-%d" % os.getpid())
    block = bytes(2**24)
    with open(scratch, "wb") as fh:
        for _ in range(file_bytes // len(block) + 1):
            fh.write(block)
    os.unlink(scratch)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # VmHWM from here on: the warm-up buffer is not the tool's peak

def _stats(t0, c0):
    hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
    return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0, "rss": hwm}
"""

_ARROW = (
    """
import json, os, sys, time
"""
    + _STATS
    + """
_warm(int(sys.argv[3]), os.path.dirname(sys.argv[2]), int(sys.argv[4]))
t, c = time.perf_counter(), time.process_time()
import pyarrow.csv as pc
table = pc.read_csv(sys.argv[1])
read = time.perf_counter() - t
pc.write_csv(table, sys.argv[2])
print(json.dumps({**_stats(t, c), "read": read, "nbytes": table.nbytes}))
"""
)

_CLI = (
    """
import json, os, sys, time
"""
    + _STATS
    + """
_warm(int(sys.argv[3]), os.path.dirname(sys.argv[2]), int(sys.argv[4]))
t, c = time.perf_counter(), time.process_time()
from neuroharmony_bids.cli.table import main
main(["harmonize", sys.argv[1], sys.argv[2]])
import neuroharmony_bids  # which checkout was measured
print(json.dumps({**_stats(t, c), "package": os.path.dirname(neuroharmony_bids.__file__)}))
"""
)


# The CLI's stages one after another (no overlap), CPU seconds each: what the I/O costs
# beside pyarrow's, and what the harmonization itself costs. "read" is pyarrow's parse of a
# block (columns passed through as their text, then converted to numbers), "pandas" the
# DataFrame the harmonizer takes, "assemble" the output table (columns
# passed through from the block as read, rounded volumes' text by tabular.decimal_text),
# "format" the block's text (tabular.format_block: pyarrow's writer), "file" writing it out.
# BLAS single-threaded, as in the CLI's streamed pipeline.
_STAGES = (
    """
import json, os, sys, time
"""
    + _STATS
    + """
_warm(int(sys.argv[3]), os.path.dirname(sys.argv[2]), int(sys.argv[4]))
import warnings
from pathlib import Path
import pandas as pd
from neuroharmony_bids import tabular as T
from neuroharmony_bids.cli.table import _compact, _rounded
from neuroharmony_bids.harmonize.apply import harmonize_table
from neuroharmony_bids.harmonize.features import FLAG_COLUMNS
from neuroharmony_bids.harmonize.io import load_model
from threadpoolctl import threadpool_limits
warnings.simplefilter("ignore", pd.errors.PerformanceWarning)  # as the CLI
model, path = load_model(), Path(sys.argv[1])
names = T.read_header(path, ",")
rounded = _rounded(names, model)
stages = ("read", "pandas", "harmonize", "assemble", "format", "file")
cpu = dict.fromkeys(stages, 0.0)
with open(sys.argv[2], "wb") as fh, threadpool_limits(limits=1, user_api="blas"):  # as the CLI
    writer = T.TableWriter(fh, ",")
    changed = [*rounded, *FLAG_COLUMNS]
    blocks = T._arrow_blocks(path, ",", names, T.BLOCK_BYTES, frozenset(names) - set(changed))
    c = [time.process_time()]
    for table, numbers in blocks:
        c.append(time.process_time())
        block = numbers.to_pandas()  # as tabular._with_frames
        c.append(time.process_time())
        out = harmonize_table(block, model)
        c.append(time.process_time())
        out = T.passed_through(table, _compact(out, model), changed, rounded)
        c.append(time.process_time())
        writer.header(out)
        text = T.format_block(out, ",", rounded)
        c.append(time.process_time())
        writer.put(*text)
        c.append(time.process_time())
        for k, a, b in zip(stages, c, c[1:]):
            cpu[k] += b - a
        c = [c[-1]]
print(json.dumps(cpu))
"""
)


def _child(code: str, *args: str, repo: Path = REPO) -> dict:
    """Run ``code`` in a fresh Python importing the package from ``repo``.

    The child runs in ``repo``: ``python -c`` puts its working folder first on ``sys.path``,
    before ``PYTHONPATH``, so a base checkout's child started from this repo's root would
    import this repo's package (and compare this code with itself).
    """
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True, text=True, env=env, cwd=repo, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed ({proc.returncode}): {proc.stderr[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _r_reads(path: Path, rows: int, cols: int) -> str:
    if shutil.which("Rscript") is None:
        return "not checked (Rscript not on PATH)"
    expr = f"d <- read.csv('{path}', check.names=FALSE); cat(nrow(d), ncol(d))"
    out = subprocess.run(["Rscript", "-e", expr], capture_output=True, text=True)
    return "yes" if out.stdout.split() == [str(rows), str(cols)] else f"NO: {out.stdout[:200]}"


def table_io(table, repeat: int = 2) -> list[tuple[str, str]]:
    """Measure on ``table`` (a DataFrame the shipped model accepts); return printable rows."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pcsv

    base = os.environ.get("NEUROHARMONY_BENCH_BASE")
    base = Path(base).resolve() if base else None
    # files in memory (tmpfs) when there is room: the disk is shared, and its writeback (or a
    # neighbour's) would be measured instead of the tools
    shm = Path("/dev/shm")
    room = shm.is_dir() and shutil.disk_usage(shm).free > 16 * table.memory_usage().sum()
    with tempfile.TemporaryDirectory(prefix="nh-table-io-", dir=shm if room else None) as tmp:
        src = Path(tmp) / "scans.csv"
        pcsv.write_csv(pa.Table.from_pandas(table, preserve_index=False), src)
        warm = (str(4 * src.stat().st_size + 2**29), str(2 * src.stat().st_size))
        arrow, cli, old = [], [], []
        for i in range(repeat):  # alternate, so that a busy machine slows all alike
            arrow.append(_child(_ARROW, str(src), str(Path(tmp) / "arrow.csv"), *warm))
            cli.append(_child(_CLI, str(src), str(Path(tmp) / f"cli{i}.csv"), *warm))
            if base:
                old.append(_child(_CLI, str(src), str(Path(tmp) / "base.csv"), *warm, repo=base))
        stages = _child(_STAGES, str(src), str(Path(tmp) / "stages.csv"), *warm)
        a, c = _best(arrow), _best(cli)
        nbytes = a["nbytes"]
        first = (Path(tmp) / "cli0.csv").read_bytes()
        same = all((Path(tmp) / f"cli{i}.csv").read_bytes() == first for i in range(repeat))
        back = pd.read_csv(Path(tmp) / "cli0.csv")
        pandas_ok = back.shape[0] == len(table) and back.shape[1] >= table.shape[1]
        io_cpu = sum(stages.values()) - stages["harmonize"]
        rows = [
            ("table", f"{len(table):,} rows × {table.shape[1]} columns, "
                      f"{src.stat().st_size / 2**20:.0f} MiB CSV, {nbytes / 2**20:.0f} MiB in memory"),
            ("files in", f"{tmp} ({'tmpfs: no disk I/O' if room else 'the default temp folder'})"),
            ("memory warm-up", f"every child touched and freed {int(warm[0]) / 2**20:,.0f} MiB "
                               f"and wrote and deleted a {int(warm[1]) / 2**20:,.0f} MiB file "
                               "before its clock and peak RSS started (this VM's first touch)"),
            ("pyarrow read + write", f"{a['wall']:.2f} s wall, {a['cpu']:.2f} s CPU (read "
                                     f"{a['read']:.2f} s), peak RSS {a['rss'] / 2**20:.0f} MiB"),
            ("neuroharmony harmonize", f"{_run(c)} (package imported from {c['package']})"),
            ("time ratio CLI / pyarrow", f"{c['wall'] / a['wall']:.2f} wall, "
                                         f"{c['cpu'] / a['cpu']:.2f} CPU (target ≤ 1.3)"),
            ("CLI stages, CPU s (one after another)", ", ".join(
                f"{k} {v:.2f}" for k, v in stages.items()) + f"; I/O alone (all but harmonize) "
                f"/ pyarrow: {io_cpu / a['cpu']:.2f}"),
            ("peak RSS / table in memory", f"{c['rss'] / nbytes:.2f} (target ≤ 2; pyarrow alone: "
                                           f"{a['rss'] / nbytes:.2f})"),
            ("output bytes", f"{len(first) / 2**20:.0f} MiB"),
            (f"byte-identical across {repeat} runs", "yes" if same else "NO"),
            ("pandas reads it back", "yes" if pandas_ok else f"NO: {back.shape}"),
            ("R reads it back", _r_reads(Path(tmp) / "cli0.csv", len(back), back.shape[1])),
            ("rounded volumes' text, CPU ms per 1M cells (best of 5)", _rounded_text_cost(back)),
        ]  # fmt: skip
        if base:
            b = _best(old)
            same_as_base = (Path(tmp) / "base.csv").read_bytes() == first
            rows += [
                ("base CLI", f"{_run(b)} (package imported from {b['package']})"),
                ("base ratio CLI / pyarrow", f"{b['wall'] / a['wall']:.2f} wall, "
                                             f"{b['cpu'] / a['cpu']:.2f} CPU"),
                ("this CLI / base CLI", f"{c['wall'] / b['wall']:.2f} wall, "
                                        f"{c['cpu'] / b['cpu']:.2f} CPU, "
                                        f"{c['rss'] / b['rss']:.2f} peak RSS"),
                ("same bytes as base", "yes" if same_as_base else "NO"),
            ]  # fmt: skip
    return rows


def _rounded_text_cost(out) -> str:
    """tabular.decimal_text vs pyarrow's float text of the same rounded volumes (what the CLI
    wrote before), each then written by pyarrow's CSV writer; same bytes checked."""
    import time

    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv

    from neuroharmony_bids.cli.table import _rounded
    from neuroharmony_bids.harmonize.io import load_model
    from neuroharmony_bids.tabular import decimal_text

    volumes = out[list(_rounded(list(out.columns), load_model()))].to_numpy()
    values = np.ascontiguousarray(volumes[:10_000].T).ravel()[: 2**20]

    def text(column) -> bytes:
        buf = pa.BufferOutputStream()
        opts = pcsv.WriteOptions(include_header=False, quoting_style="none")
        pcsv.write_csv(pa.table({"v": column}), buf, opts)
        return buf.getvalue().to_pybytes()

    ways = {
        "decimal_text": lambda: text(decimal_text(values, 3)),
        "pyarrow float": lambda: text(pa.array(np.round(values, 3))),
    }
    best = dict.fromkeys(ways, float("inf"))
    got = {}
    for _ in range(5):
        for name, way in ways.items():
            c = time.process_time()
            got[name] = way()
            best[name] = min(best[name], time.process_time() - c)
    scale = 1e3 * 2**20 / len(values)
    same = "same bytes" if len(set(got.values())) == 1 else "DIFFERENT BYTES"
    return ", ".join(f"{k} {v * scale:.0f}" for k, v in best.items()) + f" ({same})"


def _best(runs: list[dict]) -> dict:
    """The fastest run's figures, with the least CPU of all runs (the least disturbed)."""
    best = dict(min(runs, key=lambda r: r["wall"]))
    best["cpu"] = min(r["cpu"] for r in runs)
    return best


def _run(r: dict) -> str:
    return f"{r['wall']:.2f} s wall, {r['cpu']:.2f} s CPU, peak RSS {r['rss'] / 2**20:.0f} MiB"
