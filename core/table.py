"""The one text table of the repository: the ``ainode`` commands', the benchmarks' and training's reports.

Plain (the default), as ``ainode jobs`` prints it::

    id  state  summary / error
    --  -----  ---------------
    7   done   SR and GSPS

or, with ``markdown=True``, as the benchmarks print theirs to paste into a README::

    | id | state | summary / error |
    |----|-------|-----------------|
    | 7  | done  | SR and GSPS     |
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table"]

#: A column cut to fit a width keeps at least its header's width, and at least this many characters.
MIN_CUT_WIDTH = 5


def format_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    width: int | None = None,
    *,
    markdown: bool = False,
) -> str:
    """Rows under headers, each column padded to its widest cell.

    Parameters
    ----------
    headers : sequence of str
        One per column.
    rows : sequence of sequences
        The cells, as many per row as headers; ``None`` is an empty cell.
    width : int, optional
        Plain tables only: the widest columns are cut (their last character ``…``)
        until the table fits this many characters, never below their header's width
        (or :data:`MIN_CUT_WIDTH`). ``None``: no limit.
    markdown : bool
        A Markdown table between ``|`` (cells as given, their indentation kept)
        instead of the plain one, whose cells are each one line (runs of white space,
        line breaks included, become one space) and whose lines carry no trailing blanks.

    Returns
    -------
    str
        The table's lines joined by newlines, no newline at the end.
    """
    if markdown:
        cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
        widths = _widths(cells, len(headers))
        lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + " |" for row in cells]
        lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
        return "\n".join(lines)
    cells = [[str(h) for h in headers]] + [["" if c is None else " ".join(str(c).split()) for c in row] for row in rows]
    widths = _widths(cells, len(headers))
    if width is not None:
        floor = [max(len(str(h)), MIN_CUT_WIDTH) for h in headers]
        while sum(widths) + 2 * (len(widths) - 1) > width:
            shrinkable = [i for i in range(len(widths)) if widths[i] > floor[i]]
            if not shrinkable:
                break
            widest = max(shrinkable, key=lambda i: widths[i])
            widths[widest] -= 1
        cells = [[_cut(c, w) for c, w in zip(row, widths, strict=False)] for row in cells]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _widths(cells: Sequence[Sequence[str]], columns: int) -> list[int]:
    return [max(len(row[i]) for row in cells) for i in range(columns)]


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"
