"""Fixtures shared by the node's state-machine tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node.db import Base, Database


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """An empty node database: SQLite (WAL) in ``tmp_path``, then the session's PostgreSQL (fsync on)."""
    url = f"sqlite:///{tmp_path / 'node.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres")
    database = Database(url)
    Base.metadata.drop_all(database.engine)
    database.create_schema()
    yield database
    database.dispose()
