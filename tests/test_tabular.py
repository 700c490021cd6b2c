"""tabular's writer: the documented text of numbers, quoting and missing values, per field."""

from __future__ import annotations

import pandas as pd
import pytest

from neuroharmony_bids import tabular


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "participant_id": ["sub-1", "sub-2", "=cmd", "sub-4", None],
            "note": ["a,b", "plain", 'say "hi"\ue000', "two\nlines", ""],
            "value": [1234.5, 0.00001, None, 1.5e20, 0.1 + 0.2],
        }
    )


CSV = (
    "participant_id,note,value\n"
    'sub-1,"a,b",1234.5\n'
    "sub-2,plain,0.00001\n"
    '\'=cmd,"say ""hi""\ue000",\n'
    'sub-4,"two\nlines",1.5e+20\n'
    ",,0.30000000000000004\n"
)


@pytest.mark.parametrize("cuts", [[5], [1, 4], [2, 3], [1, 1, 1, 1, 1]])
def test_fields_are_quoted_alone_whatever_the_blocks(tmp_path, cuts):
    """Only a field holding the delimiter, a quote or a line break is quoted (even one holding
    a private-use character, which the writer uses internally), in one block or many."""
    table, blocks, start = _table(), [], 0
    for n in cuts:
        blocks.append(table.iloc[start : start + n])
        start += n
    out = tmp_path / "out.csv"
    assert tabular.write_blocks(out, blocks) == 1  # '=cmd' neutralised
    assert out.read_bytes() == CSV.encode()
    back = pd.read_csv(out, keep_default_na=False)
    assert back["note"].tolist() == ["a,b", "plain", 'say "hi"\ue000', "two\nlines", ""]


def test_tsv_missing_is_na_and_tab_is_quoted(tmp_path):
    table = pd.DataFrame({"note": ["a\tb", "c,d"], "value": [None, 2.0]})
    out = tmp_path / "out.tsv"
    tabular.write_blocks(out, [table.iloc[:1], table.iloc[1:]])
    assert out.read_bytes() == b'note\tvalue\n"a\tb"\tn/a\nc,d\t2\n'


def test_categories_are_written_as_their_text(tmp_path):
    table = pd.DataFrame({"site": pd.Categorical(["a,b", "=x", "c"]), "value": [1.0, 2.0, 3.0]})
    out = tmp_path / "out.csv"
    assert tabular.write_blocks(out, [table]) == 1
    assert out.read_bytes() == b'site,value\n"a,b",1\n\'=x,2\nc,3\n'


def test_a_failing_block_leaves_no_output(tmp_path):
    def blocks():
        yield _table()
        raise ValueError("late block")

    out = tmp_path / "out.csv"
    with pytest.raises(ValueError, match="late block"):
        tabular.write_blocks(out, blocks())
    assert list(tmp_path.iterdir()) == []


def _written(column) -> list[str]:
    """The CSV text pyarrow's writer gives each cell of ``column``."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    buf = pa.BufferOutputStream()
    pcsv.write_csv(
        pa.table({"x": column}), buf, pcsv.WriteOptions(include_header=False, quoting_style="none")
    )
    return buf.getvalue().to_pybytes().decode().split("\n")[:-1]


@pytest.mark.parametrize("decimals", [0, 1, 2, 3])
def test_decimal_text_is_pyarrows_text_of_the_rounded_float(decimals):
    """Same bytes as writing ``numpy.round(v, decimals)`` as a float, over every magnitude,
    ties, the integer-route limits, negatives, -0, NaN and infinities."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(decimals)
    random = 10.0 ** rng.uniform(-5, 13, 20_000) * rng.choice([1, 1, 1, -1], 20_000)
    ties = (np.arange(-2000, 2000) + 0.5) / 10**decimals  # halfway cells: rint's even rule
    limits = np.array([1e9 - 10.0**-decimals, 1e9 - 0.5 * 10.0**-decimals, 1e9, 1e10, 1e15])
    special = [0.0, -0.0, np.nan, np.inf, -np.inf, 5e-324, 0.0004999, 0.0005, 1234.0, 0.1 + 0.2]
    values = np.concatenate([random, ties, limits, -limits, special, np.round(random, 1)])
    expected = _written(pa.array(np.round(values, decimals), from_pandas=True))
    got = tabular.decimal_text(values, decimals)
    assert got.null_count == int(np.isnan(values).sum())
    assert _written(got) == expected
    assert "1234" in _written(tabular.decimal_text(np.array([1234.0001]), decimals))


def test_decimal_text_refuses_more_than_three_decimals():
    import numpy as np

    with pytest.raises(ValueError, match="decimals must be 0 to 3"):
        tabular.decimal_text(np.ones(2), 4)


def test_prefetched_keeps_order_passes_errors_and_stops_when_closed():
    import threading

    made = []

    def items():
        for i in range(1000):
            made.append(i)
            yield i

    ahead = tabular.Prefetched(items(), depth=2)
    assert [next(ahead) for _ in range(3)] == [0, 1, 2]
    ahead.close()
    ahead._thread.join(timeout=5)
    assert not ahead._thread.is_alive() and len(made) <= 6  # bounded: never ran far ahead

    def failing():
        yield 1
        raise ValueError("bad block")

    ahead = tabular.Prefetched(failing())
    assert next(ahead) == 1
    with pytest.raises(ValueError, match="bad block"):
        next(ahead)
    with pytest.raises(StopIteration):  # raised once, then the end (no hang)
        next(ahead)
    assert list(tabular.prefetched(iter(range(5)))) == [0, 1, 2, 3, 4]
    for t in threading.enumerate():  # every producer has ended
        if t.name == "neuroharmony-prefetch":
            t.join(timeout=5)
            assert not t.is_alive()


def test_blocks_keep_number_text_beside_the_numbers(tmp_path):
    """``iter_blocks(keep_text=)``: number columns as their text (marked, spaces dropped) and,
    in the frame, as the numbers pyarrow's reader gives; other columns as before."""
    import pyarrow as pa

    path = tmp_path / "t.csv"
    path.write_bytes(b"id,x,n,note\n" + b"".join(
        b"s%d,%s,%d,%s\n" % (i, x, i, b"=1" if i == 3 else b"t") for i, x in enumerate(
            [b"1.50", b" 2.5 ", b"", b"1E+03", b"-0.0"] * 40)
    ))  # fmt: skip
    with tabular.iter_blocks(path, 256, arrow=True, keep_text={"x", "n", "note"}) as blocks:
        pairs = list(blocks)
    assert len(pairs) > 3
    table = pa.concat_tables([t for t, _ in pairs])
    frame = pd.concat([f for _, f in pairs], ignore_index=True)
    assert table.column("x").to_pylist()[:5] == ["1.50", "2.5", None, "1E+03", "-0.0"]
    assert frame["x"].tolist()[:2] == [1.5, 2.5] and frame["x"].isna().sum() == 40
    assert frame["n"].dtype == "int64" and frame["n"].tolist() == list(range(200))
    assert tabular._is_number_text(table.schema.field("x"))
    assert not tabular._is_number_text(table.schema.field("note"))  # text: guarded as ever
    assert frame["note"].tolist()[3] == "=1"


@pytest.mark.parametrize("cell", [b"1.5\xff", b"\xff"])
def test_bytes_that_are_not_utf8_are_unstreamable(tmp_path, cell):
    """A number column's text is read as bytes; a cell that is not a number (here not even
    UTF-8) still sends the table to the exact reader, as in a text column."""
    path = tmp_path / "t.csv"
    path.write_bytes(b"x,note\n" + b"1.5,a\n" * 50 + cell + b",b\n")
    with pytest.raises(tabular.Unstreamable):
        with tabular.iter_blocks(path, 128, arrow=True, keep_text={"x"}) as blocks:
            list(blocks)
    path.write_bytes(b"x,note\n" + b"1.5,a\n" + b"2," + cell + b"\n")
    with pytest.raises(tabular.Unstreamable):
        with tabular.iter_blocks(path, arrow=True, keep_text={"x"}) as blocks:
            list(blocks)
