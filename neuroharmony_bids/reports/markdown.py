"""Escaping text that leaves as Markdown (``logs/CITATION.md``, model cards).

Version strings, site and dataset names come from files a user (or anyone) wrote. Put into
Markdown as they are, ``|`` breaks a table, ``[x](javascript:...)`` becomes a link, ``<script>``
becomes raw HTML and a leading ``#`` a heading. :func:`escape` makes any value one line of
literal text (CommonMark backslash escapes, which GitHub and every CommonMark renderer honour);
:func:`code` makes it a literal code span. Ordinary text (``7.4.1``, ``ABIDE-I``) is unchanged.
"""

from __future__ import annotations

import re
from typing import Any

#: Characters that start inline markup anywhere in a line (links, emphasis, code, HTML, tables,
#: GitHub strikethrough and math, entities).
_INLINE = re.compile(r"([\\`*_\[\]<>|~$&])")
#: Markup that only counts at the start of a line: headings, lists, block quotes, ordered lists.
_LEADING = re.compile(r"^([#+\-=>]|\d+[.)](?=\s|$))")


def _one_line(value: Any) -> str:
    return " ".join(("" if value is None else str(value)).split())


def escape(value: Any) -> str:
    """``value`` as one line of literal Markdown text (safe in a paragraph or a table cell)."""
    text = _INLINE.sub(r"\\\1", _one_line(value))
    return _LEADING.sub(lambda m: m.group(1)[:-1] + "\\" + m.group(1)[-1], text)


def code(value: Any) -> str:
    """``value`` as a literal inline code span (for hashes, file and model names).

    The fence is one backtick longer than the longest run inside, so no content can close it;
    a span cannot hold ``|`` inside a GitHub table, so pipes become ``¦``.
    """
    text = _one_line(value).replace("|", "¦")
    fence = "`" * (max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"
