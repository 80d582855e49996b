"""Fixtures shared by every test package: datastores on both SQL engines (DESIGN §1, §8).

Tests that take ``database_url`` (an empty database) or ``database`` (a :class:`Database`, opened,
migrated and empty of rows) run once on SQLite (a file in ``tmp_path``) and once on PostgreSQL (the
session's throwaway server, started only if some test asks for it). On PostgreSQL, ``database_url`` is
a fresh schema and ``database`` a shared migrated database whose tables are truncated before each test:
both far quicker than a database per test. A machine without PostgreSQL fails those tests with the fix,
not a skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from ca.store import Database
from ca.store.models import Base
from tests.support.enterprise_pki import EnterprisePki, generate_enterprise_pki
from tests.support.postgres import PostgresNotAvailable, PostgresServer

ENGINES = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


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


@pytest.fixture(scope="session")
def postgres_migrated_url(postgres_server: PostgresServer) -> str:
    """A database migrated once per session, shared by every ``database`` test on PostgreSQL."""
    url = postgres_server.url(postgres_server.create_database())
    db = Database.open(url)
    try:
        db.migrate()
    finally:
        db.close()
    return url


@pytest.fixture(params=ENGINES)
def database_engine(request: pytest.FixtureRequest) -> str:
    engine: str = request.param
    return engine


@pytest.fixture
def database_url(database_engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a new, empty database (no schema yet)."""
    if database_engine == "sqlite":
        yield f"sqlite:///{tmp_path / 'ca.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    schema = server.create_schema()
    try:
        yield server.url(schema=schema)
    finally:
        server.drop_schema(schema)


@pytest.fixture
def database(database_engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A database at the newest schema with no rows, opened; closed after the test."""
    if database_engine == "sqlite":
        db = Database.open(f"sqlite:///{tmp_path / 'ca.db'}")
        db.migrate()
    else:
        db = Database.open(request.getfixturevalue("postgres_migrated_url"))
        tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
        with db.transaction() as session:
            session.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))
    try:
        yield db
    finally:
        db.close()


@pytest.fixture(scope="session")
def enterprise_pki(tmp_path_factory: pytest.TempPathFactory) -> EnterprisePki:
    """Example Corp's enterprise PKI (pki-fixtures/README.md), generated once per session."""
    return generate_enterprise_pki(tmp_path_factory.mktemp("enterprise-pki"))
