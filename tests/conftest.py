"""Fixtures shared by every test package: datastores on both SQL engines (DESIGN §1, §8).

``database_url`` runs a test once on SQLite (a file in ``tmp_path``) and once on PostgreSQL (a fresh
database on the session's throwaway server, started only if some test asks for it). ``database`` is the
same, opened and migrated. A machine without PostgreSQL fails those tests with the fix, not a skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ca.store import Database
from tests.support.postgres import PostgresNotAvailable, PostgresServer


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer.start()
    except PostgresNotAvailable as err:
        pytest.fail(str(err), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ca.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.create_database()
    try:
        yield server.url(name)
    finally:
        server.drop_database(name)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database.open(database_url)
    db.migrate()
    try:
        yield db
    finally:
        db.close()
