"""``neuroharmony``: harmonize, train and inspect models on tables (CSV/TSV), no BIDS needed."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import traceback
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from neuroharmony_bids import __version__
from neuroharmony_bids import tabular as T
from neuroharmony_bids.cli.labels import parse_sex_mapping
from neuroharmony_bids.errors import DataError, NeuroharmonyError, UsageError

if TYPE_CHECKING:
    import pyarrow as pa


def non_negative_float(text: str) -> float:
    """argparse type of ``--profile-weight``: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0 (e.g. 1)")
    return value


def read_table(path: str | Path) -> pd.DataFrame:
    """Read CSV or TSV by extension, keeping identifiers as text (see :mod:`tabular`)."""
    return T.read_table(path)


def _parse_mapping(items: list[str] | None) -> dict[str, str] | None:
    return parse_sex_mapping(items) or None


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad usage; BIDS-Apps and sysexits say 64."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(64, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="neuroharmony",
        description="Harmonize FreeSurfer regional volumes from MRIQC IQMs (tables in, tables out).",
    )
    parser.add_argument("--version", action="version", version=f"neuroharmony {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    h = sub.add_parser("harmonize", help="harmonize a table of scans")
    h.add_argument("input", help="CSV/TSV: one row per scan (age, sex, IQMs, volumes)")
    h.add_argument("output", help="CSV/TSV to write (same rows and columns + nh_* flags)")
    h.add_argument("--model", default=None, help="model file (default: the shipped model)")
    h.add_argument(
        "--site-column",
        default=None,
        help="harmonize scans sharing this column's value together (several scans per scanner)",
    )
    h.add_argument("--sex-mapping", nargs="+", metavar="CODE=M|F", help="e.g. 1=M 2=F")
    h.add_argument(
        "--profile-weight",
        type=non_negative_float,
        default=None,
        metavar="W",
        help="How far a scan's own regional profile may move its scanner estimate (default: the model's, 1). 0: IQM prior only, keeps all of a person's anatomy, removes least site effect; 2: removes more site effect and keeps about 95 %% of a 10 %% atrophy (worst region about 85 %%); the shipped default keeps about 97 %% (worst region 90 %%). See docs/faq.md.",
    )

    t = sub.add_parser("train", help="train a dataset-specific model")
    t.add_argument("input", help="CSV/TSV with a site column, age, sex, IQMs and volumes")
    t.add_argument("model", help="model file to write (JSON)")
    t.add_argument("--site-column", required=True, help="column naming each scan's site/scanner")
    t.add_argument("--covariates", nargs="*", default=[], help="extra columns to protect (e.g. dx)")
    t.add_argument("--sex-mapping", nargs="+", metavar="CODE=M|F", help="e.g. 1=M 2=F")
    t.add_argument("--cv", action="store_true", help="compute leave-one-site-out figures (slow)")
    t.add_argument("--name", default=None, help="model name recorded in the file")

    i = sub.add_parser("info", help="print a model's identity, training data and metrics")
    i.add_argument("model", nargs="?", default=None, help="model file (default: shipped)")
    i.add_argument("--json", action="store_true", help="print JSON instead of text")
    i.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="check that two models agree within --rtol (a rebuild on another machine differs "
        "in the last bits); exit 0 if they agree, 1 if not",
    )
    i.add_argument(
        "--rtol",
        type=float,
        default=None,
        help="relative tolerance of --compare (default 1e-9 of each array's largest value)",
    )
    return parser


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _check_paths(inp: Path, out: Path, what: str = "output") -> None:
    """Usage checks before any work: input exists, output is another, writable file."""
    T.check_input(inp)
    if _same_file(inp, out):
        raise UsageError(
            f"the {what} {out} is the input table itself; writing it would destroy the input. "
            "Choose another output file name"
        )
    T.probe_writable(out)


def _compact(result: pd.DataFrame, model) -> pd.DataFrame:
    """``nh_features_used`` as the IQM set name (not the IQM list)."""
    names = {";".join(v): k for k, v in model.iqm_sets_.items()}
    used = result["nh_features_used"]
    result["nh_features_used"] = used.map(names).where(used.isin(list(names)), used)
    return result


def _rounded(columns: list[str], model) -> dict[str, int]:
    """The harmonized volume columns, written rounded to :data:`neuroharmony_bids.tabular.HARMONIZED_DECIMALS`."""
    from neuroharmony_bids.harmonize.table import region_columns

    rmap = region_columns(columns)
    return {rmap[r]: T.HARMONIZED_DECIMALS for r in model.regions_ if r in rmap}


def _renumber(exc: DataError, offset: int) -> DataError:
    """A block's error with row numbers counted from the table's first data row."""
    if not offset:
        return exc
    text = re.sub(r"\brow (\d+)\b", lambda m: f"row {int(m.group(1)) + offset}", str(exc))
    return type(exc)(text)


def _harmonized_blocks(
    blocks: Iterable[tuple[pa.Table, pd.DataFrame]],
    path: Path,
    model,
    sex_mapping,
    summary: dict,
    profile_weight: float | None = None,
    rounded: dict[str, int] | None = None,
) -> Iterator[pa.Table]:
    """Scan-by-scan harmonization streamed block by block (rows are independent).

    Columns the harmonizer passes through are written from the block as read; the
    harmonized volumes (``rounded``, as their rounded text, made on this thread: see
    :func:`tabular.passed_through`) and the ``nh_*`` columns from its result.
    """
    from neuroharmony_bids.harmonize.apply import harmonize_table
    from neuroharmony_bids.harmonize.features import FLAG_COLUMNS
    from neuroharmony_bids.harmonize.table import ID_COLUMNS, check_duplicates

    ids, offset, rounded = [], 0, rounded or {}
    changed = [*rounded, *FLAG_COLUMNS]
    for table, block in blocks:
        try:
            result = harmonize_table(
                block, model, sex_mapping=sex_mapping, profile_weight=profile_weight
            )
        except DataError as exc:
            raise _renumber(exc, offset) from None
        ids.append(block[[c for c in ID_COLUMNS if c in block.columns]])
        offset += len(block)
        summary["rows"] += len(result)
        summary["ood"] += int(result["nh_out_of_range"].sum())
        written = T.passed_through(table, _compact(result, model), changed, rounded)
        del table, block, result  # not kept alive while the writer formats this block
        yield written
        del written
    if offset == 0:
        raise DataError(f"{path}: the input table has no rows; it needs one row per scan")
    check_duplicates(pd.concat(ids, ignore_index=True))  # across blocks


def _harmonize(args) -> None:
    inp, out = Path(args.input), Path(args.output)
    if out.suffix.lower() not in (".csv", ".tsv"):
        raise UsageError(f"{out}: output must end in .csv or .tsv")
    T.separator(inp)
    _check_paths(inp, out)
    names = T.read_header(inp, T.separator(inp))
    mapping = _parse_mapping(args.sex_mapping)
    streamed = None
    kept: Future = Future()  # the columns passed through: known once the model is loaded
    if args.site_column is None:
        try:  # reading starts now, beside the imports and the model load
            streamed = T.iter_blocks(inp, arrow=True, keep_text=kept.result)
        except T.Unstreamable:
            pass
    try:
        _harmonize_with(args, inp, out, names, mapping, streamed, kept)
    finally:
        if not kept.done():  # (an error before the model loaded): the reader must not wait
            kept.set_result(())
        if streamed is not None:
            streamed.close()


def _harmonize_with(
    args, inp: Path, out: Path, names: list[str], mapping, streamed, kept: Future
) -> None:
    """Load the model, then stream ``streamed`` blocks (or, for ``--site-column`` or a table
    pyarrow cannot type in blocks, the whole table) through the harmonizer to ``out``.

    Columns passed through are written from the table as read; number columns among them
    as their text in the input (``kept``, set here, tells the reader which columns).
    """
    from threadpoolctl import threadpool_limits

    from neuroharmony_bids.harmonize.apply import harmonize_table
    from neuroharmony_bids.harmonize.features import FLAG_COLUMNS
    from neuroharmony_bids.harmonize.io import load_model

    model = load_model(args.model)
    rounded = _rounded(names, model)
    changed = [*rounded, *FLAG_COLUMNS]
    kept.set_result(frozenset(names) - set(changed))
    summary: dict = {"rows": 0, "ood": 0}
    neutralised = None
    if streamed is not None:
        try:  # the pipeline's threads use the cores; BLAS threads would only spin beside them
            with threadpool_limits(limits=1, user_api="blas"):
                blocks = _harmonized_blocks(
                    streamed, inp, model, mapping, summary, args.profile_weight, rounded
                )
                neutralised = T.write_blocks(out, blocks, rounded=rounded)
        except T.Unstreamable:  # e.g. a text cell in a numeric column: exact messages below
            summary = {"rows": 0, "ood": 0}
    if neutralised is None:
        fast = args.site_column is not None  # (else pandas' reader: messages name the row)
        table, text = T.read_table_and_text(inp, fast, kept.result())
        result = harmonize_table(
            table,
            model,
            site_column=args.site_column,
            sex_mapping=mapping,
            profile_weight=args.profile_weight,
        )
        summary = {"rows": len(result), "ood": int(result["nh_out_of_range"].sum())}
        del table
        written = T.passed_through(text, _compact(result, model), changed, rounded)
        del result, text
        neutralised = T.write_blocks(out, [written], rounded=rounded)
    note = (
        f"; {neutralised} text cell(s) starting with = + - @ were prefixed with ' so that "
        "spreadsheets show them as text"
        if neutralised
        else ""
    )
    print(
        f"harmonized {summary['rows']} scans → {out} ({summary['ood']} flagged out of range)" + note
    )


def _train(args) -> None:
    import hashlib

    from neuroharmony_bids.harmonize.io import save_model
    from neuroharmony_bids.harmonize.train import train

    _check_paths(Path(args.input), Path(args.model), what="model file")
    table = read_table(args.input)
    model = train(
        table,
        args.site_column,
        covariates=args.covariates,
        sex_mapping=_parse_mapping(args.sex_mapping),
        validate=args.cv,
    )
    meta = {
        "name": args.name or Path(args.model).stem,
        "training_table": Path(args.input).name,
        "training_table_sha256": hashlib.sha256(Path(args.input).read_bytes()).hexdigest(),
        "site_column": args.site_column,
    }
    sha = save_model(model, args.model, meta)
    print(f"wrote {args.model} (sha256 {sha})")


def format_info(info: dict) -> str:
    """Human-readable model summary; what it shows is owned by reports.model_summary."""
    from neuroharmony_bids.reports.model_summary import model_text

    return model_text(info)


def _compare(a: str, b: str, rtol: float | None) -> int:
    from neuroharmony_bids.harmonize.io import COMPARE_RTOL, compare_documents, read_document

    rtol = COMPARE_RTOL if rtol is None else rtol
    if not 0 <= rtol < 1:
        raise UsageError(f"--rtol {rtol} must be in [0, 1)")
    (da, sha_a), (db, sha_b) = read_document(a), read_document(b)
    diffs, worst = compare_documents(da, db, rtol)
    if sha_a == sha_b:
        print(f"{a} and {b} are the same file content (sha256 {sha_a})")
        return 0
    if not diffs:
        print(
            f"{a} and {b} agree within rtol={rtol:g} (largest relative difference {worst:.3g}); "
            "they are the same model"
        )
        return 0
    print(f"{a} and {b} differ beyond rtol={rtol:g} in {len(diffs)} place(s):")
    for d in diffs[:20]:
        print(f"  {d}")
    if len(diffs) > 20:
        print(f"  ... and {len(diffs) - 20} more")
    return 1


def _info(args) -> int:
    from neuroharmony_bids.harmonize.io import model_info

    if args.compare:
        if args.model is not None:
            raise UsageError("give either a model or --compare A B, not both")
        return _compare(*args.compare, args.rtol)
    info = model_info(args.model)
    print(json.dumps(info, indent=2, sort_keys=True) if args.json else format_info(info))
    return 0


def _crash_log(command: str) -> Path | None:
    """Write the traceback of an unexpected error to a log file; its path, or None."""
    try:
        fd, name = tempfile.mkstemp(prefix=f"neuroharmony-{command}-", suffix=".log")
        with os.fdopen(fd, "w") as fh:
            fh.write(f"neuroharmony {__version__} {' '.join(sys.argv)}\n")
            fh.write(traceback.format_exc())
        return Path(name)
    except OSError:
        return None


def main(argv: list[str] | None = None) -> None:
    """Run one command; exit with its code. Errors are one line on stderr, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prefix = f"neuroharmony {args.command}: error:"
    try:
        with warnings.catch_warnings():  # pandas' note on its own internals, not on the data
            warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
            code = {"harmonize": _harmonize, "train": _train, "info": _info}[args.command](args)
    except NeuroharmonyError as exc:
        print(f"{prefix} {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print(f"neuroharmony {args.command}: interrupted; nothing was written", file=sys.stderr)
        sys.exit(130)
    except MemoryError:
        print(f"{prefix} out of memory; use a machine with more memory or split the table",
              file=sys.stderr)  # fmt: skip
        sys.exit(1)
    except OSError as exc:  # disk full, permissions changed during the run, ...
        where = f" {exc.filename}" if exc.filename else ""
        print(f"{prefix} cannot read or write{where}: {exc.strerror or exc}; nothing was "
              "written. Free space or fix permissions and run again", file=sys.stderr)  # fmt: skip
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 (the last line of defence: no traceback to users)
        log = _crash_log(args.command)
        print(f"{prefix} unexpected error ({type(exc).__name__}: {exc}); this is a bug, please "
              f"report it with {log or 'the command line'}", file=sys.stderr)  # fmt: skip
        sys.exit(1)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
