"""Opening the CA datastore, migrating its schema, and units of work (DESIGN §1, §3 datastore).

SQLite (WAL) is the embedded engine; PostgreSQL (psycopg 3) the one several CA replicas share. A
:class:`Database` owns the engine; ``with db.transaction() as session:`` is one unit of work that commits
when the block ends and rolls back when it raises. Repositories take that session and never commit.

On SQLite every unit of work starts with ``BEGIN IMMEDIATE``: it takes the single writer lock up front,
so read-then-write sequences (consume a join token, bump a bundle sequence) cannot interleave, and a
waiting writer queues on ``busy_timeout`` instead of failing on a lock upgrade.

:meth:`Database.migrate` runs Alembic to the newest revision this code ships, under a lock (PostgreSQL
advisory lock; SQLite's writer lock), so replicas starting together migrate exactly once. A database
whose schema is newer than this code is refused: running old code on it could corrupt it.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import (
    BigInteger,
    Connection,
    Dialect,
    Engine,
    PoolProxiedConnection,
    bindparam,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, InterfaceError, OperationalError, StatementError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from ca.store.driver import DriverStatement, DriverTransaction, sqlalchemy_errors
from ca.store.immediate import ImmediateWriter, WouldWait
from spiffe_core.errors import ConfigError, TrustmeshError, UpstreamUnavailable

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# How long a SQLite writer waits for the writer lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 10_000
_WAL_RETRY_MS = 20

_URL_HELP = "write sqlite:////absolute/path/ca.db or postgresql://user:password@host:5432/dbname"


def advisory_lock_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_xact_lock`` derived from a readable name."""
    return int.from_bytes(hashlib.sha256(f"trustmesh:{name}".encode()).digest()[:8], "big", signed=True)


def lock_for_writers(connection: Connection | Session | DriverTransaction, name: str) -> None:
    """Serialize writers of one resource until the current transaction ends.

    PostgreSQL gets a transaction-scoped advisory lock; SQLite needs nothing more, because every unit
    of work there already holds the database's single writer lock (``BEGIN IMMEDIATE``)."""
    if isinstance(connection, DriverTransaction):
        if connection.dialect.name == "postgresql":
            connection.execute(_ADVISORY_LOCK, {"key": advisory_lock_key(name)})
        return
    bind = connection.get_bind() if isinstance(connection, Session) else connection
    if bind.dialect.name == "postgresql":
        connection.execute(select(func.pg_advisory_xact_lock(advisory_lock_key(name))))


_ADVISORY_LOCK = DriverStatement(select(func.pg_advisory_xact_lock(bindparam("key", type_=BigInteger))))


def _normalized_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise ConfigError(f"database URL is malformed; {_URL_HELP}") from err
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:" or parsed.database.startswith("file:"):
            raise ConfigError(
                "SQLite database URL names no file; the datastore needs a file (WAL journal, several "
                f"connections) — {_URL_HELP}"
            )
        directory = Path(parsed.database).parent
        if not directory.is_dir():
            raise ConfigError(
                f"directory {str(directory)!r} of the SQLite database does not exist; create it or "
                "point the database URL at an existing directory"
            )
        return parsed.set(drivername="sqlite+pysqlite")
    if backend == "postgresql":
        if "+" in parsed.drivername and driver != "psycopg":
            raise ConfigError(f"PostgreSQL driver {driver!r} is not supported; use postgresql+psycopg://…")
        return parsed.set(drivername="postgresql+psycopg")
    raise ConfigError(f"database URL scheme {parsed.drivername!r} is not supported; {_URL_HELP}")


# SQLite result codes (and their extended codes, which start with the same name) that retrying cannot
# fix: the file itself is the problem. What the operator should do about each.
_SQLITE_FILE_PROBLEMS = (
    ("SQLITE_NOTADB", "is not a SQLite database or is damaged", "restore it from a backup"),
    ("SQLITE_CORRUPT", "is damaged", "restore it from a backup"),
    (
        "SQLITE_READONLY",
        "is read-only",
        "make it, and the directory that holds it, writable by the CA's user (SQLite also writes -wal and "
        "-shm files beside it)",
    ),
    (
        "SQLITE_CANTOPEN",
        "cannot be opened",
        "make it, and the directory that holds it, readable and writable by the CA's user",
    ),
    ("SQLITE_PERM", "may not be written", "make it writable by the CA's user"),
)


def _sqlite_file_problem(err: DatabaseError, path: str | None) -> str | None:
    """What is wrong with the file, naming it and the fix, when SQLite refused the file itself."""
    name = getattr(err.orig, "sqlite_errorname", "")
    for prefix, problem, fix in _SQLITE_FILE_PROBLEMS:
        if name.startswith(prefix):
            return f"SQLite datastore {path} {problem} ({name}: {err.orig}); {fix}"
    return None


def _ensure_wal(cursor: sqlite3.Cursor) -> None:
    """Switch the database file to WAL (persistent, so usually a no-op). The switch needs the file to
    itself and SQLite does not wait on ``busy_timeout`` for it, so when two processes open a new
    database at once, the loser retries here for as long as a busy writer would wait."""
    for _attempt in range(SQLITE_BUSY_TIMEOUT_MS // _WAL_RETRY_MS):
        try:
            mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) and "busy" not in str(err):
                raise
            time.sleep(_WAL_RETRY_MS / 1000)
            continue
        if mode != "wal":
            raise ConfigError(
                f"SQLite kept journal mode {mode!r} instead of WAL; put the database file on a local file system"
            )
        return
    raise UpstreamUnavailable("the SQLite database stayed locked while switching it to WAL; retry shortly")


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control from the sqlite3 module: the "begin" listener below opens every
    # transaction itself with BEGIN IMMEDIATE, which sqlite3's implicit BEGIN cannot do.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _ensure_wal(cursor)
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


_BEGIN_IMMEDIATE = DriverStatement(text("BEGIN IMMEDIATE"))


def _discard(pooled: PoolProxiedConnection, dialect: Dialect) -> None:
    """Roll back what a failed driver transaction wrote; a connection that cannot even roll back (its
    server went away) is closed instead of going back to the pool."""
    try:
        pooled.rollback()
    except dialect.loaded_dbapi.Error:
        pooled.invalidate()


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    return config


def _on_sqlite_begin(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """The datastore of one CA process: an engine plus units of work. Thread-safe; one per process."""

    def __init__(self, engine: Engine, immediate: ImmediateWriter | None = None) -> None:
        self._engine = engine
        self._immediate = immediate  # SQLite only: see driver_transaction_now
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str) -> Database:
        """Open (not yet connect to) the database at ``url``: ``sqlite:///path`` or ``postgresql://…``
        (always driven by psycopg 3). Raises :class:`ConfigError` for an unusable URL."""
        parsed = _normalized_url(url)
        if parsed.get_backend_name() == "sqlite":
            engine = create_engine(parsed)
            event.listen(engine, "connect", _on_sqlite_connect)
            event.listen(engine, "begin", _on_sqlite_begin)
            unpooled = create_engine(parsed, poolclass=NullPool)
            event.listen(unpooled, "connect", _on_sqlite_connect)
            return cls(engine, ImmediateWriter(unpooled))
        return cls(create_engine(parsed, pool_pre_ping=True))

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: commit when the block ends, roll back (nothing half-written) when it raises.

        A value the datastore refuses while binding (a naive timestamp) raises that refusal itself.

        A database that cannot be reached, or stays locked past the busy timeout, raises
        :class:`UpstreamUnavailable`; the driver's detail is kept as the cause, not in the message. A
        SQLite file that is damaged or read-only raises it too, naming the file and the fix."""
        with self._datastore_errors(), self._sessions.begin() as session:
            yield session

    @contextmanager
    def driver_transaction(self) -> Iterator[DriverTransaction]:
        """A unit of work for :class:`~ca.store.driver.DriverStatement` s alone, on a pooled connection
        without an ORM session or Core connection around it (the per-call issuance record: see
        :mod:`ca.store.driver`). The same transaction as :meth:`transaction` — ``BEGIN IMMEDIATE`` on
        SQLite, commit when the block ends, rollback when it raises — raising the same errors; callbacks
        given to ``after_commit`` run once it committed."""
        committed: list[Callable[[], None]] = []
        with self._datastore_errors():
            with sqlalchemy_errors(self._engine.dialect):
                pooled = self._engine.raw_connection()
            try:
                with self._driver_unit(pooled, committed, begin=self.dialect == "sqlite") as transaction:
                    yield transaction
            finally:
                pooled.close()  # back to the pool
        for callback in committed:
            callback()

    @contextmanager
    def driver_transaction_now(self) -> Iterator[DriverTransaction]:
        """:meth:`driver_transaction`, for a caller on an event loop: begun only if it needs no wait, on
        SQLite's immediate connection (:mod:`ca.store.immediate`). Raises :class:`WouldWait`, having
        done nothing, when it would wait, and always on PostgreSQL, whose commit is a network round
        trip; once begun, it raises what :meth:`driver_transaction` raises."""
        if self._immediate is None:
            raise WouldWait(f"a {self.dialect} commit waits on the network")
        committed: list[Callable[[], None]] = []
        with (
            self._datastore_errors(),
            self._immediate.begun() as connection,
            self._driver_unit(connection, committed, begin=False) as transaction,
        ):
            yield transaction
        for callback in committed:
            callback()

    @contextmanager
    def _driver_unit(
        self, connection: PoolProxiedConnection, committed: list[Callable[[], None]], *, begin: bool
    ) -> Iterator[DriverTransaction]:
        """A driver transaction on ``connection`` (begun here with ``BEGIN IMMEDIATE`` when ``begin``):
        commit when the block ends, roll back when it raises; callbacks go to ``committed``."""
        dialect = self._engine.dialect
        cursor = connection.cursor()
        transaction = DriverTransaction(cursor, dialect, committed.append)
        try:
            if begin:
                transaction.execute(_BEGIN_IMMEDIATE)
            yield transaction
            with sqlalchemy_errors(dialect, "COMMIT"):
                connection.commit()
        except BaseException:
            _discard(connection, dialect)
            raise
        finally:
            cursor.close()

    @contextmanager
    def _datastore_errors(self) -> Iterator[None]:
        """Turn what the driver raises into the errors :meth:`transaction` promises."""
        try:
            yield
        except DatabaseError as err:
            problem = _sqlite_file_problem(err, self._engine.url.database) if self.dialect == "sqlite" else None
            if problem is not None:
                raise UpstreamUnavailable(problem) from err  # the file, not a busy lock: say which and why
            if not isinstance(err, OperationalError):
                raise
            raise UpstreamUnavailable(
                f"the {self.dialect} datastore did not answer or stayed busy; retry shortly"
            ) from err
        except InterfaceError as err:
            raise UpstreamUnavailable(
                f"the {self.dialect} datastore did not answer or stayed busy; retry shortly"
            ) from err
        except StatementError as err:
            # A value refused while binding (a naive timestamp) arrives wrapped; hand out our own error.
            if isinstance(err.orig, TrustmeshError):
                raise err.orig from err
            raise

    def ping(self) -> None:
        """Raise :class:`UpstreamUnavailable` unless the datastore answers a trivial query (readiness)."""
        with self.transaction() as session:
            session.execute(text("SELECT 1"))

    def migrate(self) -> None:
        """Bring the schema to the newest revision this code knows; a no-op when it is there already.

        Safe to call from several processes or threads at once: they queue on a lock and all but the
        first find nothing to do. Raises :class:`ConfigError` when the database was migrated by a newer
        trustmesh (its revision is unknown here)."""
        config = _alembic_config()
        scripts = ScriptDirectory.from_config(config)
        try:
            with self._engine.begin() as connection:
                lock_for_writers(connection, "schema-migration")
                for revision in MigrationContext.configure(connection).get_current_heads():
                    try:
                        scripts.get_revision(revision)
                    except CommandError as err:
                        raise ConfigError(
                            f"database schema {revision!r} is newer than this trustmesh; upgrade trustmesh"
                        ) from err
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except DatabaseError as err:
            problem = _sqlite_file_problem(err, self._engine.url.database) if self.dialect == "sqlite" else None
            if problem is not None:
                raise ConfigError(problem) from err
            if not isinstance(err, OperationalError):
                raise
            raise UpstreamUnavailable(
                f"the {self.dialect} datastore did not answer while migrating its schema; retry shortly"
            ) from err
        except InterfaceError as err:
            raise UpstreamUnavailable(
                f"the {self.dialect} datastore did not answer while migrating its schema; retry shortly"
            ) from err

    def schema_is_current(self) -> bool:
        """Whether the schema is at the newest revision this code ships, read without changing anything
        (a read-only tool must not migrate a datastore behind the CA's back). Raises what connecting
        raises."""
        heads = set(ScriptDirectory.from_config(_alembic_config()).get_heads())
        with self._engine.connect() as connection:
            return set(MigrationContext.configure(connection).get_current_heads()) == heads

    def close(self) -> None:
        """Close every connection (at shutdown, and in tests before dropping a database)."""
        if self._immediate is not None:
            self._immediate.close()
        self._engine.dispose()
