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
