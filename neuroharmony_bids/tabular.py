"""User tables in and out (CSV/TSV) for the ``neuroharmony`` command: checked, fast, deterministic.

Reading refuses what pandas would silently "fix" (a repeated column name becomes ``age.1``) and
what would hang it (a FIFO, a header of a million columns), then parses with pyarrow's
multi-threaded reader, in blocks when the caller can stream. Writing goes through pyarrow's
CSV writer (pandas formats one float cell at a time), atomically:

- numbers are written with the shortest text that reads back to the same 64-bit float
  (``1234.5``, ``0.00001``, ``1.5e+20``), except number columns a caller passes through as
  read (:func:`iter_blocks` / :func:`read_table_and_text` ``keep_text``), which are written
  as the input spelled them (``1.50`` stays), spaces around a number dropped;
- missing values are empty in CSV and ``n/a`` in TSV; text is quoted only where a field holds
  the delimiter, a quote or a line break (that field alone, wherever its block falls);
- text cells starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return get a leading
  ``'`` (OWASP's CSV-injection guidance) so that a spreadsheet shows them as text, never runs
  them as a formula; numbers are never changed.

pyarrow is a pinned dependency: there is no second writer whose float text could differ.
pandas' reader is kept for tables pyarrow cannot type in blocks, so its messages name the row;
it parses floats round-trip, so both readers give the same doubles (and the same output bytes).
"""

from __future__ import annotations

import csv
import io
import os
import re
import stat
import threading
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import IO, TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    import pyarrow as pa

    #: What the writer takes: a DataFrame or a pyarrow table.
    Block = pd.DataFrame | pa.Table

from neuroharmony_bids.errors import DataError, MissingInputError, UsageError

#: Harmonized volumes and their posterior SDs are written rounded to this many decimals of a
#: mm³ (``numpy.round``), by the table CLI and the BIDS App alike: far below what FreeSurfer
#: resolves, and it keeps a scan's text the same whatever the last bits of the arithmetic.
HARMONIZED_DECIMALS = 3

#: More columns than any real table (FreeSurfer's largest atlases with every measure and all
#: MRIQC IQMs stay under 3,000).
MAX_COLUMNS = 20_000
#: A header line longer than this is not a table header.
MAX_HEADER_BYTES = 4 * 2**20
#: Bytes of CSV per block when streaming: memory stays a few blocks whatever the row count
#: (8 MiB: ~460 MiB peak RSS with the shipped model; 16 MiB: ~650 MiB, no faster).
BLOCK_BYTES = 8 * 2**20
#: Blocks formatted as text at once (pyarrow's writer is single-threaded per call).
FORMAT_THREADS = 2
#: pandas' default missing-value tokens plus BIDS' ``n/a``: the same in both readers.
NA_VALUES = (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
)  # fmt: skip
ID_COLUMNS = ("participant_id", "session_id")
#: Text a spreadsheet may run as a formula (OWASP CSV injection) ...
FORMULA = r"^[=+\-@\t\r]"
#: ... unless the text is a plain number.
NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


def separator(path: str | Path) -> str:
    """',' for .csv, tab for .tsv/.txt; anything else is a usage error."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".tsv", ".txt"):
        raise UsageError(f"{path}: unknown table extension {suffix!r}; use .csv or .tsv")
    return "," if suffix == ".csv" else "\t"


def check_input(path: str | Path) -> Path:
    """An existing regular file (a FIFO or device would block or never end)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise MissingInputError(
            f"input table {path} does not exist; check the path (CSV or TSV, one row per scan)"
        ) from None
    except OSError as exc:
        raise MissingInputError(f"cannot read input table {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise MissingInputError(f"input table {path} is {what}; pass a CSV or TSV file")
    return path


def read_header(path: Path, sep: str) -> list[str]:
    """Column names from the first line, refusing an endless, huge or ambiguous header."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(MAX_HEADER_BYTES + 1)
    except OSError as exc:
        raise MissingInputError(f"cannot read input table {path}: {exc.strerror}") from None
    end = head.find(b"\n")
    if end < 0 and len(head) > MAX_HEADER_BYTES:
        raise DataError(
            f"{path}, line 1: the header line is longer than {MAX_HEADER_BYTES // 2**20} MiB, which no "
            "table of scans needs; check that this is the right file and delimiter"
        )
    line = head[: end if end >= 0 else len(head)].decode("utf-8-sig", errors="replace")
    if not line.strip():
        raise DataError(f"{path}: empty file or empty header line; the first line names columns")
    names = next(csv.reader([line.rstrip("\r")], delimiter=sep))
    if len(names) > MAX_COLUMNS:
        raise DataError(
            f"{path}, line 1: {len(names):,} columns, more than the {MAX_COLUMNS:,} any table of "
            "scans needs; check the delimiter and that this is the right file"
        )
    seen: dict[str, list[int]] = {}
    for i, name in enumerate(names, start=1):
        seen.setdefault(name, []).append(i)
    dups = {n: cols for n, cols in seen.items() if len(cols) > 1}
    if dups:
        listed = "; ".join(
            f"{n!r} in columns {', '.join(map(str, cols))}" for n, cols in list(dups.items())[:5]
        )
        raise DataError(
            f"{path}, line 1: repeated column name(s): {listed}; each column needs a unique "
            "name so the table is not ambiguous. Rename or remove the repeats"
        )
    return names


def _arrow_options(sep: str, names: list[str], block_bytes: int):
    import pyarrow as pa
    import pyarrow.csv as pcsv

    ids = {c: pa.string() for c in ID_COLUMNS if c in names}
    return (
        pcsv.ReadOptions(block_size=block_bytes, use_threads=True),
        pcsv.ParseOptions(delimiter=sep, newlines_in_values=False),
        pcsv.ConvertOptions(
            column_types=ids,
            null_values=list(NA_VALUES),
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    )


def read_table(path: str | Path, fast: bool = True) -> pd.DataFrame:
    """The whole table, identifiers kept as text.

    ``fast``: pyarrow's multi-threaded reader when it yields only numbers and text (what
    pandas' reader gives for the same file); otherwise, or for dates, booleans or a cell pyarrow
    cannot convert, pandas' reader, whose messages name the row.
    """
    return read_table_and_text(path, fast)[0]


def read_table_and_text(
    path: str | Path, fast: bool = True, keep_text: Iterable[str] = ()
) -> tuple[pd.DataFrame, pa.Table]:
    """:func:`read_table`, and the text in the file of the ``keep_text`` columns that hold
    numbers, marked as number text (:data:`NUMBER_TEXT`); spaces and tabs around a number
    are dropped, and missing values are null, as the number readers see them.

    So that the table command writes a number column it passes through as the input had it
    (``1.50`` stays ``1.50``) on every path: the streamed one reads that text with the numbers
    (:func:`iter_blocks`); here, the same parser reads those columns again as text (same rows).
    """
    path = check_input(path)
    sep = separator(path)
    names = read_header(path, sep)
    if fast:
        try:
            frame = _arrow_table(path, sep, names)
            return frame, _number_text(path, sep, names, frame, keep_text, arrow=True)
        except Unstreamable:
            pass
    frame = _pandas_table(path, sep)
    return frame, _number_text(path, sep, names, frame, keep_text, arrow=False)


def _pandas_table(path: Path, sep: str) -> pd.DataFrame:
    try:  # round_trip: the same double as pyarrow's (pandas' default parse can be 1 ulp off)
        return pd.read_csv(
            path, sep=sep, dtype={c: str for c in ID_COLUMNS}, na_values=["n/a"],
            keep_default_na=True, low_memory=False, float_precision="round_trip",
        )  # fmt: skip
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(
            f"{path}: cannot parse as {'CSV' if sep == ',' else 'TSV'}: {exc}"
        ) from None


def _plain(batch, binary: Collection[str] = ()) -> None:
    """Refuse (as Unstreamable) column types pandas' reader would have left as text; bytes
    only in the ``binary`` columns (those read so on purpose; elsewhere they are text that is
    not UTF-8)."""
    import pyarrow.types as t

    for field in batch.schema:
        ty = field.type
        if t.is_binary(ty) and field.name in binary:
            continue
        if not (t.is_int64(ty) or t.is_float64(ty) or t.is_string(ty) or t.is_null(ty)):
            raise Unstreamable(f"column {field.name!r} read as {ty}")


def _arrow_table(path: Path, sep: str, names: list[str]) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    try:
        table = pcsv.read_csv(path, *_arrow_options(sep, names, BLOCK_BYTES))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise Unstreamable(str(exc)) from None
    _plain(table)
    return table.to_pandas(split_blocks=True, self_destruct=True)


class Unstreamable(Exception):
    """pyarrow could not read the table in typed blocks (e.g. text in a numeric column after the
    first block); the caller falls back to :func:`read_table`, whose messages name the cell."""


def _byte_blocks(fh: IO[bytes], size: int) -> Iterator[bytes]:
    """Whole lines, about ``size`` bytes at a time."""
    while True:
        data = fh.read(size)
        if not data:
            return
        yield data + fh.readline()


class Prefetched(Iterator):
    """``items`` produced by a background thread started at once, at most ``depth`` ahead
    (bounded memory).

    pyarrow parses and writes without the GIL, so reading the next block, harmonizing this one
    and writing the last one overlap on a multi-core machine; starting at once lets the first
    blocks be read while the caller still imports and loads its model. (Reading further ahead
    then would cost memory: the reader stays ahead, so the blocks it holds add to the peak.)
    Exceptions reach the consumer. :meth:`close` (or the end of a ``with`` block) stops it.
    """

    _DONE = object()

    def __init__(self, items: Iterable, depth: int = 1) -> None:
        self._items, self._depth = items, depth
        self._buffer: deque = deque()
        self._ready = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._produce, name="neuroharmony-prefetch")
        self._thread.daemon = True
        self._thread.start()

    def _produce(self) -> None:
        try:
            for item in self._items:
                with self._ready:
                    while not self._stopped and len(self._buffer) >= self._depth:
                        self._ready.wait()
                    if self._stopped:
                        return
                    self._buffer.append((item, None))
                    self._ready.notify_all()
                del item  # the consumer's alone now
            end = (self._DONE, None)
        except BaseException as exc:  # noqa: BLE001 (handed to the consumer)
            end = (self._DONE, exc)
        with self._ready:
            self._buffer.append(end)
            self._ready.notify_all()

    def __next__(self):
        with self._ready:
            while not self._buffer:
                self._ready.wait()
            item, exc = self._buffer[0]
            if item is not self._DONE:
                self._buffer.popleft()
            elif exc is not None:
                self._buffer[0] = (item, None)  # raised once; then the end
            self._ready.notify_all()
        if exc is not None:
            raise exc
        if item is self._DONE:
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop producing; items not taken are dropped."""
        with self._ready:
            self._stopped = True
            self._buffer.clear()
            self._ready.notify_all()

    def __enter__(self) -> Prefetched:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def prefetched(items: Iterable, depth: int = 1) -> Iterator:
    """``items`` made by a background thread at most ``depth`` ahead (see :class:`Prefetched`);
    the thread stops when the consumer stops, even half-way."""
    with Prefetched(items, depth) as ahead:
        yield from ahead


def iter_blocks(
    path: str | Path,
    block_bytes: int | None = None,
    arrow: bool = False,
    keep_text: Collection[str] | Callable[[], Collection[str]] | None = None,
) -> Prefetched:
    """The table in blocks of about ``block_bytes`` of CSV each; raises :class:`Unstreamable`.

    Each block is parsed by pyarrow (multi-threaded) with the column types of the first block,
    one block ahead of the consumer, so memory stays a few blocks whatever the table's size.
    Reading starts at once: close the result (or use it in a ``with`` block) if it may not be
    read to the end.
    ``arrow``: (pyarrow table, DataFrame) pairs, so that columns a caller does not change can
    be written from the table as read (:func:`passed_through`).
    ``keep_text`` (with ``arrow``): columns a caller passes through; those holding numbers
    are in the pyarrow table as their text in the file (:data:`NUMBER_TEXT`), in the DataFrame
    as numbers. A function is called once, when the first block is parsed, so that the caller
    may still be working out which columns while reading starts.
    """
    path = check_input(path)
    sep = separator(path)
    names = read_header(path, sep)
    blocks = _arrow_blocks(path, sep, names, block_bytes or BLOCK_BYTES, keep_text)
    return Prefetched(_with_frames(blocks, arrow))


def _with_frames(blocks: Iterator[tuple[pa.Table, pa.Table]], arrow: bool) -> Iterator:
    """Each block as a DataFrame (with its pyarrow table when ``arrow``).

    The frame is consolidated (one 2-D array per dtype), not a block per column: a block is a
    few MiB, and a consumer that copies it (the harmonizer's output frame does) would pay for
    consolidating it anyway, column by column (at 100k rows, harmonizing and assembling the
    blocks took 2.0 CPU s from consolidated frames, 2.4 s from split ones).
    """
    for table, numbers in blocks:
        if arrow:
            yield table, numbers.to_pandas()
        else:
            yield numbers.to_pandas(self_destruct=True)
        del table, numbers  # not kept alive while the next block is read


def passed_through(
    table: pa.Table,
    frame: pd.DataFrame,
    changed: Iterable[str],
    rounded: Mapping[str, int] | None = None,
) -> pa.Table:
    """``frame`` as a pyarrow table, taking from ``table`` (the block as read) every column
    of ``frame`` that is not in ``changed``: no pandas round trip for columns a caller passed
    through. An integer column with empty cells, which pandas holds as floats, still comes
    from ``frame``, so that its text is what the whole-table path writes. ``rounded``
    ({column: decimals}, among ``changed``): those columns of ``frame`` as their rounded text
    (:func:`round_columns`), made from the frame's 2-D array without a pyarrow copy first."""
    import pyarrow as pa

    changed = set(changed)
    read = set(table.column_names)
    text = _rounded_text(frame, rounded) if rounded else {}
    cols, fields = [], []
    for name in frame.columns:
        if name in text:
            cols.append(text[name])
            fields.append(pa.field(str(name), cols[-1].type))
            continue
        if name in read and name not in changed:
            col = table.column(name)
            if not (pa.types.is_integer(col.type) and col.null_count):
                cols.append(col)
                fields.append(table.field(name))  # with its mark, if number text
                continue
        cols.append(pa.array(frame[name], from_pandas=True))
        fields.append(pa.field(str(name), cols[-1].type))
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))


def _arrow_blocks(
    path: Path, sep: str, names: list[str], size: int, keep_text=None
) -> Iterator[tuple[pa.Table, pa.Table]]:
    """(table, numbers) per block: ``numbers`` is ``table`` with the number columns of
    ``keep_text`` (see :func:`iter_blocks`), which ``table`` holds as text, as numbers."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    read, parse, convert = _arrow_options(sep, names, size)
    read = pcsv.ReadOptions(column_names=names, use_threads=True, block_size=2**20)

    def parsed(chunk: bytes) -> pa.Table:
        try:
            table = pcsv.read_csv(pa.BufferReader(chunk), read, parse, convert)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise Unstreamable(str(exc)) from None
        _plain(table, numeric)
        return table

    numeric: dict[str, pa.DataType] = {}  # columns of keep_text read as text: their type
    with open(path, "rb") as fh:
        fh.readline()  # the header, checked by read_header
        for chunk in _byte_blocks(fh, size):
            table = parsed(chunk)
            if keep_text is not None:
                if callable(keep_text):
                    keep_text = keep_text()
                new = {
                    f.name: f.type
                    for f in table.schema
                    if f.name in keep_text and f.name not in numeric and _is_number(f.type)
                }
                if new:  # (the first block, or a column empty until now): again, as text
                    numeric.update(new)
                    text = dict.fromkeys(new, pa.binary())  # (no UTF-8 check: see below)
                    convert.column_types = {**convert.column_types, **text}
                    table = parsed(chunk)
            del chunk
            if table.num_rows == 0:
                continue
            fixed = {f.name: f.type for f in table.schema if not pa.types.is_null(f.type)}
            convert.column_types = {**fixed, **convert.column_types}
            yield _numbers_of_text(table, numeric)
            del table  # not kept alive while the next block is read


def _is_number(ty) -> bool:
    import pyarrow.types as t

    return t.is_int64(ty) or t.is_float64(ty)


def _numbers_of_text(table: pa.Table, numeric: Mapping[str, pa.DataType]):
    """(table with its ``numeric`` columns as marked text, the same with them as numbers),
    each number converted by pyarrow's parser as its CSV reader would (which first trims
    spaces and tabs: so is the text, where it has any).

    The text is read as bytes, not checked as UTF-8 (about 10 % of the reading time): a cell
    that converts to a number is ASCII.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    text, numbers = list(table.columns), list(table.columns)
    fields = list(table.schema)
    for name, ty in numeric.items():
        i = table.schema.get_field_index(name)
        try:
            numbers[i] = pc.cast(text[i], ty)
            # the same bytes seen as text (ASCII): the writer then need not check them
            chunks = [c.view(pa.string()) for c in text[i].chunks]
            text[i] = pa.chunked_array(chunks, type=pa.string())
        except pa.ArrowInvalid:  # spaces or tabs around a number (or not a number at all)
            try:
                text[i] = pc.utf8_trim(pc.cast(text[i], pa.string()), " \t")
                numbers[i] = pc.cast(text[i], ty)
            except pa.ArrowInvalid as exc:
                raise Unstreamable(f"column {name!r}: {exc}") from None
        fields[i] = _number_text_field(name, text[i].type)
    if not numeric:
        return table, table
    return pa.Table.from_arrays(text, schema=pa.schema(fields)), pa.Table.from_arrays(
        numbers, names=table.column_names
    )


#: Field metadata marking a column of numbers held as their text in the input file
#: (:func:`read_table_and_text`): written as it is, without the formula guard or quoting (a number's
#: text needs neither).
NUMBER_TEXT = {b"neuroharmony": b"number text"}


def _number_text_field(name: str, ty=None):
    import pyarrow as pa

    return pa.field(name, ty or pa.string(), metadata=NUMBER_TEXT)


def _is_number_text(field) -> bool:
    return bool(field.metadata) and field.metadata.get(b"neuroharmony") == b"number text"


def _number_text(
    path: Path, sep: str, names: list[str], frame: pd.DataFrame, columns, arrow: bool
) -> pa.Table:
    """The ``columns`` that hold numbers in ``frame`` as their text in the file, read again
    by the parser that read ``frame`` (see :func:`read_table_and_text`)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    cols = [
        c for c in columns if c in frame.columns and pd.api.types.is_numeric_dtype(frame[c])
        and not pd.api.types.is_bool_dtype(frame[c])
    ]  # fmt: skip
    if not cols:
        return pa.table({})
    if arrow:
        read, parse, convert = _arrow_options(sep, names, BLOCK_BYTES)
        convert.column_types = dict.fromkeys(cols, pa.string())
        convert.include_columns = cols
        table = pcsv.read_csv(path, read, parse, convert)
        arrays = [table.column(c) for c in cols]
    else:
        text = pd.read_csv(
            path, sep=sep, usecols=cols, dtype=str, na_values=["n/a"], keep_default_na=True,
            low_memory=False,
        )  # fmt: skip
        arrays = [pa.array(text[c], type=pa.string(), from_pandas=True) for c in cols]
    arrays = [pc.utf8_trim(a, " \t") for a in arrays]
    return pa.Table.from_arrays(arrays, schema=pa.schema([_number_text_field(c) for c in cols]))


# --------------------------------------------------------------------------- writing


def _neutralise_arrow(table):
    """Prefix ``'`` to text cells a spreadsheet would run as a formula (OWASP); only text
    columns, and in them only cells that are not numbers (``-3.5`` stays). Vectorized in C++
    on a pyarrow table: (table, count)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    count = 0
    cols = []
    for col in table.columns:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            risky = pc.and_kleene(
                pc.match_substring_regex(col, FORMULA),
                pc.invert(pc.match_substring_regex(col, NUMBER)),
            )
            n = pc.sum(risky).as_py() or 0
            if n:
                col = pc.if_else(risky, pc.binary_join_element_wise("'", col, ""), col)
                count += n
        cols.append(col)
    return pa.table(cols, names=table.column_names), count


def _header_line(names: list[str], sep: str) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, delimiter=sep, lineterminator="\n", quoting=csv.QUOTE_MINIMAL).writerow(names)
    return buf.getvalue().encode("utf-8")


class TableWriter:
    """Writes blocks of one table to an open binary file: header once, same bytes every run."""

    def __init__(self, fh: IO[bytes], sep: str) -> None:
        self.fh, self.sep, self.columns = fh, sep, None
        self.neutralised = 0

    def write(self, block: Block, rounded: Mapping[str, int] | None = None) -> None:
        self.header(block)
        self.put(*format_block(block, self.sep, rounded))

    def header(self, block: Block) -> None:
        """The header line, from the first block's columns (later calls do nothing)."""
        if self.columns is None:
            names = block.column_names if hasattr(block, "column_names") else block.columns
            self.columns = [str(c) for c in names]
            self.fh.write(_header_line(self.columns, self.sep))

    def put(self, data, neutralised: int) -> None:
        """A block's text from :func:`format_block`, in table order."""
        self.neutralised += neutralised
        self.fh.write(data)


def format_block(block: Block, sep: str, rounded: Mapping[str, int] | None = None):
    """A block's rows as CSV/TSV bytes (no header) and its count of neutralised cells.

    ``block``: a DataFrame or a pyarrow table. ``rounded``: {column: decimals} of number
    columns written rounded (:func:`decimal_text`). Pure, and pyarrow formats without the
    GIL: blocks can be formatted on several threads and written in order (:func:`write_blocks`).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    if isinstance(block, pa.Table):
        table = block
    else:
        table = pa.Table.from_pandas(block, preserve_index=False)
    for i, field in enumerate(table.schema):  # categories: their text, guarded and quoted too
        if pa.types.is_dictionary(field.type):
            table = table.set_column(i, field.name, table.column(i).cast(field.type.value_type))
    # numbers (perhaps already their text): no formula or quoting checks
    numbers = set(rounded or ()) | {f.name for f in table.schema if _is_number_text(f)}
    if numbers:
        names = table.column_names
        checked, count = _neutralise_arrow(table.select([n for n in names if n not in numbers]))
        checked, marks = _quote_where_needed(checked, sep)
        cols = dict(zip(checked.column_names, checked.columns, strict=True))
        table = pa.table([cols.get(n, table.column(n)) for n in names], names=names)
        table = round_columns(table, rounded) if rounded else table
    else:
        table, count = _neutralise_arrow(table)
        table, marks = _quote_where_needed(table, sep)
    if sep == "\t":  # BIDS: missing is n/a
        cols = []
        for col in table.columns:
            if col.null_count:
                col = pc.fill_null(pc.cast(col, pa.string()), "n/a")
            cols.append(col)
        table = pa.table(cols, names=table.column_names)
    buf = pa.BufferOutputStream()
    opts = pcsv.WriteOptions(include_header=False, delimiter=sep, quoting_style="none")
    pcsv.write_csv(table, buf, opts)  # raises, never drops, on a value it cannot write
    data = buf.getvalue()
    if marks:
        data = _unmark(data.to_pybytes(), marks, sep)
    return data, count


def round_columns(table: pa.Table, rounded: Mapping[str, int]) -> pa.Table:
    """``table`` with the ``rounded`` number columns as their rounded text (columns already
    text are left as they are), one :func:`decimal_text` call per number of decimals and a few
    MiB of cells (fewer, larger numpy passes).

    :func:`format_block` does this itself; a caller whose thread holds the GIL anyway (the
    table CLI's harmonizing thread) may do it first, so that numpy's many short GIL releases
    do not happen in the format threads, where each re-acquisition waits for that thread.
    """
    import numpy as np
    import pyarrow as pa

    by_decimals: dict[int, list[int]] = {}
    for name, decimals in rounded.items():
        i = table.schema.get_field_index(name)
        if i >= 0 and not pa.types.is_large_string(table.field(i).type):
            by_decimals.setdefault(decimals, []).append(i)
    n = table.num_rows
    cols = table.columns
    if not by_decimals:
        return table
    per_call = max(1, _ROUND_CELLS // max(n, 1))  # a few MiB of temporaries a call
    for decimals, every in by_decimals.items():
        for start in range(0, len(every), per_call):
            idx = every[start : start + per_call]
            values = np.empty(n * len(idx))
            for j, i in enumerate(idx):
                values[j * n : (j + 1) * n] = cols[i].to_numpy()  # null → NaN
            text = decimal_text(values, decimals)
            for j, i in enumerate(idx):
                cols[i] = text.slice(j * n, n)
    fields = [f if f.type == c.type else pa.field(f.name, c.type) for f, c in zip(
        table.schema, cols, strict=True)]  # fmt: skip
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))  # number-text marks kept


#: Cells rounded per :func:`decimal_text` call by :func:`round_columns` (~3 MiB of buffers).
_ROUND_CELLS = 2**17


def _rounded_text(frame: pd.DataFrame, rounded: Mapping[str, int]) -> dict:
    """{column: text} of the float ``rounded`` columns of ``frame``: :func:`round_columns`'
    text, from one 2-D array per group of columns."""
    import numpy as np

    by_decimals: dict[int, list[str]] = {}
    for name, decimals in rounded.items():
        if name in frame.columns and frame[name].dtype == np.float64:
            by_decimals.setdefault(decimals, []).append(name)
    n = len(frame)
    per_call = max(1, _ROUND_CELLS // max(n, 1))
    text = {}
    for decimals, every in by_decimals.items():
        for start in range(0, len(every), per_call):
            names = every[start : start + per_call]
            values = np.ascontiguousarray(frame[names].to_numpy().T).ravel()
            cells = decimal_text(values, decimals)
            for j, name in enumerate(names):
                text[name] = cells.slice(j * n, n)
    return text


#: Private-use characters standing for a quote, the delimiter, LF and CR inside a quoted field
#: while pyarrow writes it unquoted (its quoting is all text or none; ours is per field).
_MARK_BASES = range(0xE000, 0xF900 - 4, 4)


def _quote_where_needed(table, sep: str):
    """Quote, RFC 4180 style, just the text cells holding the delimiter, a quote or a line
    break; their structural characters become private-use marks that :func:`_unmark` turns
    back after pyarrow writes the block unquoted. So a field is quoted by what it holds, never
    by which block it fell in: (table, marks or None)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    structural = f'[{re.escape(sep)}"\n\r]'
    texts = [
        i
        for i, col in enumerate(table.columns)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
    ]
    needs = {}
    for i in texts:
        hit = pc.match_substring_regex(table.column(i), structural)
        if pc.any(hit).as_py():
            needs[i] = hit
    if not needs:
        return table, None
    for base in _MARK_BASES:  # marks no cell of this block already holds
        marks = "".join(map(chr, range(base, base + 4)))
        taken = f"[{marks}]"
        if not any(pc.any(pc.match_substring_regex(table.column(i), taken)).as_py() for i in texts):
            break
    else:  # pragma: no cover - needs a block holding all 6,400 private-use characters
        raise DataError("a text cell holds every private-use character; cannot quote it")
    for i, hit in needs.items():
        col = pc.replace_substring(table.column(i), '"', '""')
        col = pc.binary_join_element_wise('"', col, '"', "")
        for char, mark in zip(('"', sep, "\n", "\r"), marks, strict=True):
            col = pc.replace_substring(col, char, mark)
        table = table.set_column(i, table.field(i), pc.if_else(hit, col, table.column(i)))
    return table, marks


def _unmark(data: bytes, marks: str, sep: str) -> bytes:
    for char, mark in zip(('"', sep, "\n", "\r"), marks, strict=True):
        data = data.replace(mark.encode(), char.encode())
    return data


#: Largest integer part written by :func:`decimal_text`'s integer route (9 digits); larger
#: magnitudes, negatives and non-finite values take pyarrow's float text.
_DECIMAL_MAX_INT = 10**9


@lru_cache(maxsize=4)
def _decimal_tables(decimals: int):
    """uint64 lookup tables of ASCII bytes (little-endian, NUL-padded) for :func:`decimal_text`:
    three digits with leading zeros as NUL; the same then zero-padded (for a group after the
    number has begun); the same with the units digit kept, then zero-padded; the fraction
    ('.' + digits without trailing zeros; nothing for 0)."""
    import numpy as np

    g = np.arange(1000, dtype=np.uint64)
    digits = [48 + g // 100, 48 + g // 10 % 10, 48 + g % 10]
    padded = digits[0] | digits[1] << 8 | digits[2] << 16
    keep = [g >= 100, g >= 10, g >= 1]  # a digit is shown once the number has begun
    bare = sum(np.where(k, d, 0).astype(np.uint64) << (8 * i) for i, (k, d) in enumerate(
        zip(keep, digits, strict=True)))  # fmt: skip
    units = bare | np.where(g == 0, 48, 0).astype(np.uint64) << 16
    frac = np.zeros(10**decimals, dtype=np.uint64)
    for f in range(1, 10**decimals):
        frac[f] = int.from_bytes(f".{f:0{decimals}d}".rstrip("0").encode(), "little")
    return bare, np.concatenate([bare, padded]), np.concatenate([units, padded]), frac


def decimal_text(values, decimals: int = 3):
    """Text of ``numpy.round(values, decimals)`` as pyarrow's CSV writer prints that float
    (its shortest round-trip text: ``1234.5``, ``0.001``, ``-0``), null where NaN: the same
    bytes at about 60 % of the cost (``bench/speed.py`` prints both), because rounded
    harmonized volumes are most of what the table CLI formats.

    Why it is exact: for ``|v| < 1e9`` and ``decimals <= 3``, ``round(v, d)`` is ``k / 10**d``
    with ``k = rint(v * 10**d)`` (numpy's own definition) and at most 12 significant digits;
    a decimal of at most 15 significant digits is the shortest text of the double nearest to
    it, and pyarrow prints numbers below 1e10 without an exponent. So the text is ``k``'s
    digits with the point put back and trailing zeros dropped, built here from lookup tables
    in numpy. Other cells (negative, huge, infinite) get pyarrow's own text of the rounded
    float. ``values``: a 1-D float array; returns a pyarrow large_string array.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if not 0 <= decimals <= 3:
        raise ValueError(f"decimals must be 0 to 3, not {decimals}")
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    # 16 bytes a cell: integer part in bytes 0-8 (NUL before its first digit), fraction in
    # 9-12, NUL after; pyarrow trims the NULs, which is the variable-length concatenation
    cells = np.empty((n, 2), dtype=np.uint64)
    fast = np.empty(n, dtype=bool)
    for start in range(0, n, _DECIMAL_PIECE):  # small temporaries: they stay in cache
        part = slice(start, start + _DECIMAL_PIECE)
        fast[part] = _decimal_cells(values[part], decimals, cells[part])
    nan = np.isnan(values)
    nulls = int(nan.sum())
    valid = pa.py_buffer(np.packbits(~nan, bitorder="little")) if nulls else None
    offsets = np.arange(0, 16 * n + 1, 16, dtype=np.int64)
    text = pa.LargeStringArray.from_buffers(
        n, pa.py_buffer(offsets), pa.py_buffer(cells), valid, nulls
    )
    text = pc.ascii_trim(text, "\x00")
    slow = ~fast & ~nan
    if slow.any():  # rare: pyarrow's text of those rounded floats
        other = pc.cast(pa.array(np.round(values[slow], decimals)), pa.large_string())
        text = pc.replace_with_mask(text, pa.array(slow), other)
    return text


#: Cells per numpy pass of :func:`decimal_text` (temporaries of 256 KiB).
_DECIMAL_PIECE = 2**15


def _decimal_cells(values, decimals: int, out):
    """Fill ``out`` (n × 2 uint64) with the NUL-padded text of the cells that take the integer
    route; return which those are."""
    import numpy as np

    bare, mid_table, last_table, frac = _decimal_tables(decimals)
    scale = 10**decimals
    with np.errstate(invalid="ignore", over="ignore"):
        k = np.rint(values * scale)
        fast = (k < _DECIMAL_MAX_INT * scale) & ~np.signbit(k)  # False for NaN
    k[~fast] = 0
    # exact in float64: integers below 2**53, and floor(m / 10**j) of an integer m < 1e12
    # never rounds up to the next integer
    ip = np.floor(k / scale)
    fr = (k - ip * scale).astype(np.intp)
    top = np.floor(ip / 1000)
    last = (ip - top * 1000).astype(np.intp)
    hi = np.floor(top / 1000)
    mid = (top - hi * 1000).astype(np.intp)
    # a group's leading zeros are shown once the number has begun (tables' second half)
    mid += 1000 * (hi > 0)
    last += 1000 * (top > 0)
    u = np.uint64
    lows = last_table[last]
    out[:, 0] = bare[hi.astype(np.intp)] | mid_table[mid] << u(24) | lows << u(48)
    out[:, 1] = lows >> u(16) | frac[fr] << u(8)
    return fast


def write_blocks(
    path: str | Path,
    blocks: Iterable[Block],
    sep: str | None = None,
    rounded: Mapping[str, int] | None = None,
) -> int:
    """Write blocks (DataFrames or pyarrow tables) to ``path`` atomically; return cells
    neutralised. Nothing appears at ``path`` unless every block was written. ``rounded``:
    {column: decimals} written rounded (:func:`format_block`).

    The next block is made (read, harmonized) in a background thread while up to
    :data:`FORMAT_THREADS` blocks are formatted at once; blocks are written in order, so the
    bytes do not depend on the thread count or timing.
    """
    from concurrent.futures import ThreadPoolExecutor

    from neuroharmony_bids.atomic import atomic_path

    path = Path(path)
    sep = sep or separator(path)
    with (
        atomic_path(path) as tmp,
        open(tmp, "wb") as fh,
        ThreadPoolExecutor(FORMAT_THREADS, thread_name_prefix="neuroharmony-format") as pool,
    ):
        writer = TableWriter(fh, sep)
        pending: deque = deque()
        for block in prefetched(blocks):
            writer.header(block)
            pending.append(pool.submit(format_block, block, sep, rounded))
            del block  # the format task's alone now
            if len(pending) > FORMAT_THREADS:
                writer.put(*pending.popleft().result())
        while pending:
            writer.put(*pending.popleft().result())
    return writer.neutralised


def probe_writable(path: str | Path) -> None:
    """Fail before any work if ``path`` cannot be created (missing or read-only folder)."""
    import tempfile

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".nhtmp-probe-", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(
            f"cannot write the output table {path}: {exc.strerror or exc}; choose a folder you "
            "can write to"
        ) from None
