"""The postgres fixture gives a working PostgreSQL database behind a SQLAlchemy URL."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError


def test_postgres_accepts_create_insert_select(postgres: str) -> None:
    engine = create_engine(postgres)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE infra_probe (id serial PRIMARY KEY, uid text NOT NULL)"))
            conn.execute(text("INSERT INTO infra_probe (uid) VALUES (:a), (:b)"), {"a": "1.2.3", "b": "1.2.4"})
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT uid FROM infra_probe ORDER BY id")).scalars().all()
            version = conn.execute(text("SHOW server_version")).scalar_one()
            conn.execute(text("DROP TABLE infra_probe"))
            conn.commit()
    finally:
        engine.dispose()
    assert rows == ["1.2.3", "1.2.4"]
    assert int(str(version).split(".")[0]) >= 13


def test_postgres_url_is_loopback_psycopg_with_password(postgres: str) -> None:
    url = make_url(postgres)
    assert url.drivername == "postgresql+psycopg"
    assert url.host == "127.0.0.1"
    assert url.password


def test_postgres_refuses_a_wrong_password(postgres: str) -> None:
    wrong = make_url(postgres).set(password="not-the-password")
    engine = create_engine(wrong)
    try:
        with pytest.raises(OperationalError, match="password authentication failed"), engine.connect():
            pass
    finally:
        engine.dispose()
