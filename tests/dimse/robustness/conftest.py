"""Fixtures of the DICOM protocol robustness suite (issue 16): one node per module, one :class:`Case` per test.

Every test module here runs the node as a process and marks itself ``integration``. At the end of the run the
suite prints the table of its cases (case, the node's answer, the largest RSS growth during the case) and writes
it to ``robustness.txt`` in pytest's base temporary directory.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from robust_harness import Case, MiB, RobustNode, Row, running_node

_ROWS: list[Row] = []
_TABLE_FILE: list[str] = []


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RobustNode]:
    """One node for the module, with the suite's limits (robust_harness.LIMITS)."""
    with running_node(tmp_path_factory.mktemp("robust-node")) as started:
        yield started


@pytest.fixture(scope="session")
def _table_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Write the table of every case run to robustness.txt in pytest's base temporary directory, at the end."""
    yield
    if _ROWS:
        path = tmp_path_factory.getbasetemp() / "robustness.txt"
        path.write_text(_table(_ROWS) + "\n")
        _TABLE_FILE.append(str(path))


@pytest.fixture
def case(node: RobustNode, request: pytest.FixtureRequest, _table_file: None) -> Iterator[Case]:
    """The running case; its end checks run at teardown (node alive, C-ECHO, nothing stored, no traceback, RSS)."""
    current = Case(node, request.node.name)
    yield current
    try:
        current.finish()
    finally:
        if current.row is not None:  # failed cases stay in the table too
            _ROWS.append(current.row)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _ROWS:
        return
    terminalreporter.section("DICOM robustness: the node's answer and RSS growth per case")
    terminalreporter.write_line(_table(_ROWS))
    worst = sorted(_ROWS, key=lambda r: r.rss_growth, reverse=True)[:3]
    terminalreporter.write_line(
        "worst RSS growth: " + ", ".join(f"{r.case} {r.rss_growth / MiB:.1f} MiB" for r in worst)
    )
    for path in _TABLE_FILE:
        terminalreporter.write_line(f"table written to {path}")


def _table(rows: list[Row]) -> str:
    width = max(len(r.case) for r in rows)
    answer_width = min(70, max(len(r.answer) for r in rows))
    lines = [f"{'case':<{width}}  {'answer':<{answer_width}}  {'RSS growth':>10}  {'time':>6}"]
    for r in rows:
        lines.append(
            f"{r.case:<{width}}  {r.answer[:answer_width]:<{answer_width}}  "
            f"{r.rss_growth / MiB:>6.1f} MiB  {r.seconds:>5.1f}s"
        )
    return "\n".join(lines)
