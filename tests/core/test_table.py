"""core.table.format_table: the commands' plain tables and the benchmarks' Markdown ones."""

from __future__ import annotations

from core.table import format_table


def test_plain_table_pads_columns_and_makes_each_cell_one_line() -> None:
    text = format_table(["id", "summary"], [(7, "SR and\nGSPS"), (12, None)])
    assert text.splitlines() == [
        "id  summary",
        "--  -----------",
        "7   SR and GSPS",
        "12",
    ]


def test_plain_table_cuts_the_widest_column_to_the_width_but_never_below_its_header() -> None:
    rows = [(1, "done", "x" * 40)]
    text = format_table(["id", "state", "summary / error"], rows, width=30)
    lines = text.splitlines()
    assert max(len(line) for line in lines) == 30
    assert lines[2].endswith("…") and lines[2].startswith("1   done   x")
    narrow = format_table(["id", "state", "summary / error"], rows, width=5).splitlines()
    assert narrow[1] == "--  -----  ---------------"  # no column below its header (or 5): wider than asked


def test_markdown_table_keeps_indentation_between_pipes() -> None:
    text = format_table(["phase", "median s"], [["end to end", "1.250"], ["  decode", "0.100"]], markdown=True)
    assert text.splitlines() == [
        "| phase      | median s |",
        "|------------|----------|",
        "| end to end | 1.250    |",
        "|   decode   | 0.100    |",
    ]
