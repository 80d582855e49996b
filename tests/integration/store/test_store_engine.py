"""Database: opening, migrating, units of work and timestamps, on SQLite and PostgreSQL (DESIGN §1, §3)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text

from ca.authority import AuthorityState
from ca.store import AuthorityRepository, Database, RegistrationEntryRepository
from ca.store.models import Base
from spiffe_core.errors import AlreadyExists, ConfigError, InvalidArgument, UpstreamUnavailable
from tests.support.store import NOW, authority, entry_spec


def test_migrate_twice_is_a_no_op(database: Database) -> None:
    database.migrate()
    with database.transaction() as session:
        assert AuthorityRepository(session).list() == ()


def test_migrations_create_exactly_the_models_schema(database_url: str) -> None:
    db = Database.open(database_url)
    db.migrate()
    db.close()
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    finally:
        engine.dispose()


def test_concurrent_migrations_from_two_threads_both_succeed(database_url: str) -> None:
    databases = [Database.open(database_url) for _ in range(2)]
    barrier = threading.Barrier(2, timeout=10)
    errors: list[BaseException] = []

    def migrate(db: Database) -> None:
        try:
            barrier.wait()
            db.migrate()
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=migrate, args=(db,)) for db in databases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    try:
        assert errors == []
        with databases[0].transaction() as session:
            AuthorityRepository(session).add(authority())
        with databases[1].transaction() as session:
            assert [a.id for a in AuthorityRepository(session).list()] == ["a1"]
    finally:
        for db in databases:
            db.close()


def test_refuses_a_schema_newer_than_the_code(database_url: str) -> None:
    db = Database.open(database_url)
    db.migrate()
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    engine.dispose()
    try:
        with pytest.raises(ConfigError) as raised:
            db.migrate()
    finally:
        db.close()
    assert str(raised.value) == (
        "database schema '9999_from_the_future' is newer than this trustmesh; upgrade trustmesh"
    )


def test_failed_unit_of_work_leaves_nothing_written(database: Database) -> None:
    def add_first_twice() -> None:
        with database.transaction() as session:
            repository = RegistrationEntryRepository(session)
            repository.add(entry_spec("/first"), NOW)
            repository.add(entry_spec("/first"), NOW)

    with pytest.raises(AlreadyExists):
        add_first_twice()
    with database.transaction() as session:
        assert RegistrationEntryRepository(session).list() == ()


def test_unit_of_work_commits_when_the_block_ends(database: Database) -> None:
    with database.transaction() as session:
        AuthorityRepository(session).add(authority())
    with database.transaction() as session:
        assert AuthorityRepository(session).get("a1").state is AuthorityState.PREPARED


def test_timestamps_come_back_timezone_aware_in_utc(database: Database) -> None:
    created_at = datetime(2026, 3, 1, 9, 30, 15, 654321, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    with database.transaction() as session:
        AuthorityRepository(session).add(authority(created_at=created_at))
    with database.transaction() as session:
        stored = AuthorityRepository(session).get("a1")
    assert stored.created_at == created_at
    assert stored.created_at.tzinfo is UTC
    assert stored.created_at.hour == 4


def test_refuses_naive_timestamps(database: Database) -> None:
    naive = datetime(2026, 3, 1, 9, 30)  # naive on purpose
    with pytest.raises(InvalidArgument) as raised, database.transaction() as session:
        AuthorityRepository(session).add(authority(created_at=naive))
    assert str(raised.value) == (
        "timestamp 2026-03-01T09:30:00 has no time zone; pass an aware UTC datetime, e.g. datetime.now(UTC)"
    )


def test_unreachable_database_is_reported_unavailable() -> None:
    db = Database.open("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(UpstreamUnavailable) as raised, db.transaction() as session:
        session.execute(text("SELECT 1"))
    assert str(raised.value) == "the postgresql datastore did not answer or stayed busy; retry shortly"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param(
            "mysql://root@localhost/ca",
            "database URL scheme 'mysql' is not supported; write sqlite:////absolute/path/ca.db or "
            "postgresql://user:password@host:5432/dbname",
            id="unsupported-engine",
        ),
        pytest.param(
            "sqlite://",
            "SQLite database URL names no file; the datastore needs a file (WAL journal, several connections) "
            "— write sqlite:////absolute/path/ca.db or postgresql://user:password@host:5432/dbname",
            id="sqlite-in-memory",
        ),
        pytest.param(
            "postgresql+psycopg2://u@h/db",
            "PostgreSQL driver 'psycopg2' is not supported; use postgresql+psycopg://…",
            id="other-postgres-driver",
        ),
        pytest.param(
            "not a url",
            "database URL is malformed; write sqlite:////absolute/path/ca.db or "
            "postgresql://user:password@host:5432/dbname",
            id="malformed",
        ),
    ],
)
def test_refuses_unusable_database_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Database.open(url)
    assert str(raised.value) == message


def test_refuses_sqlite_file_in_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        Database.open(f"sqlite:///{tmp_path}/missing/ca.db")
    assert str(raised.value) == (
        f"directory '{tmp_path}/missing' of the SQLite database does not exist; create it or point the "
        "database URL at an existing directory"
    )


def test_sqlite_database_runs_in_wal_mode(tmp_path: Path) -> None:
    db = Database.open(f"sqlite:///{tmp_path}/ca.db")
    try:
        with db.transaction() as session:
            assert session.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
            assert session.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
    finally:
        db.close()
