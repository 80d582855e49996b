"""A SQLite connection that writes only when it need not wait: the event loop's own.

A node API call that asks for one X509-SVID costs the CA more in handing the work to a worker thread
and back (waking the thread, the loop's self-pipe, GIL hand-offs: about 0.6 ms of CPU per call,
measured with ``bench/node_api.py``) than signing it and writing its record do. The event loop may
do that work itself only if nothing in it can wait, which is what this connection guarantees:

- it is opened outside the connection pool (an engine of its own, without a pool) and is the
  caller's alone while it writes (a lock taken without blocking), so there is no wait for the pool
  or for another caller;
- its busy timeout is 0, so ``BEGIN IMMEDIATE`` fails at once instead of queueing when another
  connection (a worker thread, another process) holds SQLite's single writer lock;
- it never checkpoints the WAL on commit (``wal_autocheckpoint = 0``): a checkpoint copies the WAL into
  the database file and fsyncs it, which a slow disk can stretch to tens of milliseconds. Instead,
  every :data:`CHECKPOINT_COMMITS` commits a checkpoint is handed to a thread of its own (at most one
  pending), which keeps the WAL about as short as SQLite's own autocheckpoint (1,000 pages) would.
  That checkpoint is a ``RESTART`` one: it takes the writer lock while it copies (so this
  connection's writers give way meanwhile) and so copies the whole WAL, which lets the next writer
  start the WAL over. A ``PASSIVE`` one would copy only what was there when it began; under
  steady writes it would never catch up, and the WAL would grow without end. While a ``RESTART``
  waits for the writer lock and for readers of the WAL, every other writer waits too, so it waits
  at most :data:`CHECKPOINT_WAIT_MS` (a long read, an audit export, must not stall issuance) and
  then copies what it can, as a passive one would; the next one tries again.

With WAL and ``synchronous = NORMAL`` a commit writes to the WAL without an fsync, so what is left on
the loop is CPU work of a fraction of a millisecond. Whenever the connection cannot begin at once,
:class:`WouldWait` is raised before anything is written, and the caller does the work on a worker
thread as before. PostgreSQL has no such connection: its commit is a network round trip.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from sqlalchemy import Engine, PoolProxiedConnection
from sqlalchemy.exc import DBAPIError

from spiffe_core.backoff import LogThrottle

log = logging.getLogger(__name__)

# Commits between two checkpoints. A lone X509-SVID's record dirties about five pages (the
# certificate row, the audit record and their indexes), so this is about SQLite's default of 1,000.
CHECKPOINT_COMMITS = 200
# How long a checkpoint waits for the writer lock and for readers, blocking other writers meanwhile.
CHECKPOINT_WAIT_MS = 50


class WouldWait(Exception):
    """The write cannot begin without waiting (or at all, here); nothing was written. Do it where
    waiting is allowed: :meth:`ca.store.engine.Database.driver_transaction` on a worker thread."""


class ImmediateWriter:
    """The one connection of a SQLite database that begins a write only when it can at once (see the
    module docstring). ``engine`` opens the database without a pool (``NullPool``), with the pragmas
    of every connection of the CA's. Thread-safe; connects lazily; closed by :meth:`close`."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._claim = threading.Lock()
        self._connection: PoolProxiedConnection | None = None
        self._commits = 0
        self._checkpoint_pending = threading.Event()
        self._checkpoints = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-checkpoint")
        self._log_throttle = LogThrottle()  # only the checkpoint thread uses it
        self._closed = False

    @contextmanager
    def begun(self) -> Iterator[PoolProxiedConnection]:
        """The connection, inside a ``BEGIN IMMEDIATE`` it took without waiting; the caller commits
        before its block ends, or raises having rolled back. Raises :class:`WouldWait` when another
        caller has the connection, when another connection holds the writer lock, or when the
        connection cannot be had at all."""
        if not self._claim.acquire(blocking=False):
            raise WouldWait("the immediate connection is in use")
        try:
            if self._closed:
                raise WouldWait("the database is closed")
            connection = self._connected()
            cursor = connection.cursor()
            try:
                cursor.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as err:  # busy (another writer), or anything else: the worker path says
                raise WouldWait(f"cannot begin at once: {err}") from err
            finally:
                cursor.close()
            try:
                yield connection
            finally:
                if not connection.is_valid:  # the caller's rollback failed and closed it: open anew next time
                    self._connection = None
            self._committed()
        finally:
            self._claim.release()

    def _committed(self) -> None:
        """Count a commit (the caller's block ended without raising, so it committed); every
        :data:`CHECKPOINT_COMMITS` of them, hand a checkpoint to the checkpoint thread unless one is still
        pending there. Runs under the claim, so :meth:`close` cannot have shut that thread down."""
        self._commits += 1
        if self._commits % CHECKPOINT_COMMITS or self._checkpoint_pending.is_set():
            return
        self._checkpoint_pending.set()
        self._checkpoints.submit(self._checkpoint)

    def _connected(self) -> PoolProxiedConnection:
        if self._connection is None:
            try:
                connection = self._engine.raw_connection()
            except (DBAPIError, sqlite3.Error) as err:
                raise WouldWait(f"cannot connect: {err}") from err
            try:
                cursor = connection.cursor()
                cursor.execute("PRAGMA busy_timeout = 0")
                cursor.execute("PRAGMA wal_autocheckpoint = 0")
                cursor.close()
            except sqlite3.Error as err:
                connection.close()
                raise WouldWait(f"cannot set the connection up: {err}") from err
            self._connection = connection
        return self._connection

    def _checkpoint(self) -> None:
        """Copy the whole WAL into the database file (``RESTART``, waiting at most
        :data:`CHECKPOINT_WAIT_MS` for the writer lock and for readers of the WAL), on a connection
        of its own, outside any transaction."""
        try:
            connection = self._engine.raw_connection()
            try:
                cursor = connection.cursor()
                cursor.execute(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}")
                cursor.execute("PRAGMA wal_checkpoint(RESTART)")
            finally:
                connection.close()
        except (DBAPIError, sqlite3.Error) as err:  # the next one tries again; SQLite loses nothing meanwhile
            if self._log_throttle.should_log(time.monotonic()):
                log.warning("WAL checkpoint failed: %s%s", err, self._log_throttle.note())
        finally:
            self._checkpoint_pending.clear()

    def close(self) -> None:
        """Close the connection (waiting for a writer that has it) and finish a pending checkpoint."""
        with self._claim:
            self._closed = True
            if self._connection is not None:
                self._connection.close()
                self._connection = None
        self._checkpoints.shutdown(wait=True)
