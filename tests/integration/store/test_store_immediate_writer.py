"""The driver transaction an event loop may take (Database.driver_transaction_now, ca.store.immediate):
it begins only when it need not wait, and otherwise gives way having written nothing; it never
checkpoints the WAL itself, and the checkpoints handed to its own thread keep the WAL bounded."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ca.authority import AuthorityState
from ca.store import AuditLogRepository, AuthorityRepository, Database, IssuedCertificateRepository
from ca.store.immediate import CHECKPOINT_COMMITS, WouldWait
from ca.store.records import CertificateQuery
from ca.store.repositories.certificates import record_issued
from tests.integration.store.test_store_driver_transaction import _certificate, _record
from tests.support.store import authority


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    database = Database.open(f"sqlite:///{tmp_path / 'ca.db'}")
    database.migrate()
    with database.transaction() as session:
        AuthorityRepository(session).add(authority("a1", state=AuthorityState.ACTIVE))
    yield database
    database.close()


@pytest.fixture
def other_writer(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """Another connection (a worker thread, another process) holding SQLite's writer lock."""
    connection = sqlite3.connect(tmp_path / "ca.db", timeout=0, isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    yield connection
    if connection.in_transaction:
        connection.execute("ROLLBACK")
    connection.close()


def _certificates(database: Database) -> int:
    with database.transaction() as session:
        return IssuedCertificateRepository(session).count(CertificateQuery())


def _wal_bytes(tmp_path: Path) -> int:
    wal = tmp_path / "ca.db-wal"
    return wal.stat().st_size if wal.exists() else 0


def test_commits_what_it_writes_like_a_driver_transaction(sqlite_db: Database) -> None:
    with sqlite_db.driver_transaction_now() as transaction:
        record_issued(transaction, [_certificate(1)])
    assert _certificates(sqlite_db) == 1


def test_gives_way_at_once_having_written_nothing_while_another_connection_writes(
    sqlite_db: Database, other_writer: sqlite3.Connection
) -> None:
    started = time.monotonic()
    with pytest.raises(WouldWait, match="cannot begin at once"), sqlite_db.driver_transaction_now() as transaction:
        record_issued(transaction, [_certificate(1)])
    assert time.monotonic() - started < 0.5  # not the 10 s a waiting writer queues for
    other_writer.execute("ROLLBACK")
    assert _certificates(sqlite_db) == 0


def test_begins_again_once_the_other_writer_is_done(sqlite_db: Database, other_writer: sqlite3.Connection) -> None:
    with pytest.raises(WouldWait), sqlite_db.driver_transaction_now():
        pass
    other_writer.execute("COMMIT")
    with sqlite_db.driver_transaction_now() as transaction:
        record_issued(transaction, [_certificate(1)])
    assert _certificates(sqlite_db) == 1


def test_gives_way_to_a_caller_that_has_its_connection(sqlite_db: Database) -> None:
    with (
        sqlite_db.driver_transaction_now(),
        pytest.raises(WouldWait, match="in use"),
        sqlite_db.driver_transaction_now(),
    ):
        pass


def test_rolls_back_what_it_wrote_when_the_block_raises(sqlite_db: Database) -> None:
    def fail_after_recording() -> None:
        with sqlite_db.driver_transaction_now() as transaction:
            record_issued(transaction, [_certificate(1)])
            raise RuntimeError("signing failed after recording")

    with pytest.raises(RuntimeError):
        fail_after_recording()
    with sqlite_db.driver_transaction_now() as transaction:  # usable again, and nothing was left behind
        record_issued(transaction, [_certificate(2)])
    assert _certificates(sqlite_db) == 1


def test_holds_the_writer_lock_so_worker_transactions_queue_behind_it(sqlite_db: Database) -> None:
    """A worker's transaction begun meanwhile waits (busy timeout) and commits after it."""
    done: list[str] = []
    with sqlite_db.driver_transaction_now() as transaction:

        def record_on_a_worker() -> None:
            _record(sqlite_db, [_certificate(2)])
            done.append("worker")

        worker = threading.Thread(target=record_on_a_worker)
        worker.start()
        worker.join(timeout=0.3)
        assert worker.is_alive()  # queued on the writer lock
        record_issued(transaction, [_certificate(1)])
        done.append("now")
    worker.join(timeout=10)
    assert done == ["now", "worker"]
    with sqlite_db.transaction() as session:
        assert len(AuditLogRepository(session).list()) == 1  # the worker's record, after ours committed


def test_a_database_closed_meanwhile_is_given_way_to(sqlite_db: Database) -> None:
    sqlite_db.close()
    with pytest.raises(WouldWait, match="closed"), sqlite_db.driver_transaction_now():
        pass


def test_a_database_it_cannot_open_is_given_way_to(tmp_path: Path) -> None:
    """The worker path then reports the datastore's error, as it always did."""
    (tmp_path / "gone").mkdir()
    database = Database.open(f"sqlite:///{tmp_path / 'gone' / 'ca.db'}")
    database.migrate()
    shutil.rmtree(tmp_path / "gone")
    try:
        with pytest.raises(WouldWait, match="cannot connect"), database.driver_transaction_now():
            pass
    finally:
        database.close()


def test_postgresql_always_gives_way(postgres_migrated_url: str) -> None:
    database = Database.open(postgres_migrated_url)
    try:
        with pytest.raises(WouldWait, match="commit waits on the network"), database.driver_transaction_now():
            pass
    finally:
        database.close()


def _wal_salt(tmp_path: Path) -> bytes:
    """The WAL header's salts: SQLite draws new ones each time a writer restarts the WAL from its
    start, which it does only once a checkpoint has copied all of it into the database file."""
    with (tmp_path / "ca.db-wal").open("rb") as wal:
        return wal.read(24)[16:24]


def test_its_commits_never_checkpoint_the_wal_but_its_checkpoint_thread_does(
    sqlite_db: Database, tmp_path: Path
) -> None:
    """Its commits leave the database file alone (the WAL grows past SQLite's autocheckpoint of 1,000
    pages, so a commit that checkpointed would have changed it); the CHECKPOINT_COMMITS-th hands a
    checkpoint to the checkpoint thread, after which the WAL is restarted from its start instead of
    growing for ever, although commits went on all the while."""
    database_file = tmp_path / "ca.db"
    serial = 0

    def commit() -> None:
        nonlocal serial
        try:
            with sqlite_db.driver_transaction_now() as transaction:
                record_issued(transaction, [_certificate(serial + n) for n in range(1, 11)])
        except WouldWait:
            return  # the checkpoint holds the writer lock: a caller goes to a worker thread meanwhile
        serial += 10

    before = database_file.read_bytes()
    for _ in range(CHECKPOINT_COMMITS - 1):
        commit()
    assert (_wal_bytes(tmp_path) - 32) // (4096 + 24) > 1000  # WAL frames: past SQLite's autocheckpoint
    assert database_file.read_bytes() == before
    salt = _wal_salt(tmp_path)
    commit()
    deadline = time.monotonic() + 10
    while _wal_salt(tmp_path) == salt and time.monotonic() < deadline:
        time.sleep(0.01)
        commit()  # restarts the WAL once the checkpoint thread has copied it all
    assert _wal_salt(tmp_path) != salt
    assert database_file.read_bytes() != before
    assert _certificates(sqlite_db) == serial


def test_a_checkpoint_held_up_by_a_long_read_stalls_other_writers_only_briefly(
    sqlite_db: Database, tmp_path: Path
) -> None:
    """A checkpoint cannot finish while a reader holds an old snapshot (a long audit export); it
    gives up waiting after CHECKPOINT_WAIT_MS instead of keeping every writer out meanwhile."""
    reader = sqlite3.connect(tmp_path / "ca.db", isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM sqlite_master").fetchone()  # its snapshot, held from here
        for serial in range(1, CHECKPOINT_COMMITS + 1):
            with sqlite_db.driver_transaction_now() as transaction:
                record_issued(transaction, [_certificate(serial)])
        slowest = 0.0
        for serial in range(CHECKPOINT_COMMITS + 1, CHECKPOINT_COMMITS + 21):  # a worker's writes meanwhile
            started = time.monotonic()
            _record(sqlite_db, [_certificate(serial)])
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.01)
    finally:
        reader.close()
    assert slowest < 1.0  # not the 10 s busy timeout a writer would queue behind the checkpoint
    assert _certificates(sqlite_db) == CHECKPOINT_COMMITS + 20
