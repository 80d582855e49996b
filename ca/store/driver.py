"""The issuance hot path's statements, run on the database driver's own cursor.

Every X509-SVID batch writes the same few statements (insert the issued certificates, read the audit
chain's head, append the audit record). Through SQLAlchemy each costs more Python than the database
work it asks for: the ORM session's unit of work, then Core compiling, wrapping and converting every
statement anew. Here each statement is compiled once per dialect by SQLAlchemy itself and its values
converted by the column types' own bind processors, so the driver receives exactly what a Core
statement would send; only the per-call machinery around it is gone.

:class:`DriverTransaction` runs such statements either inside an ORM unit of work
(:meth:`DriverTransaction.of`, for code that writes other rows in the same transaction) or alone on a
pooled connection (:meth:`ca.store.engine.Database.driver_transaction`, the per-call issuance
record). Driver errors come out as the SQLAlchemy exceptions a Core statement would raise, so callers
and :class:`~ca.store.engine.Database` handle both paths alike.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Dialect, Executable, Table
from sqlalchemy.event import listen as event_listen
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.orm import Session

_Processor = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A statement as one dialect runs it. ``slots`` pairs each positional parameter, in order, with
    its column's bind processor (None: the value goes to the driver as it is), so binding a row is one
    pass with no look-ups; for a dialect with named parameters ``slots`` is None and ``processors``
    holds the columns that have one. ``own`` are the values the statement itself holds (a LIMIT's)."""

    sql: str
    slots: tuple[tuple[str, _Processor | None], ...] | None
    processors: Mapping[str, _Processor]
    own: Mapping[str, Any]


class DriverStatement:
    """A Core statement compiled once per dialect, executed on a driver cursor with its values converted
    by the bind processors of ``table``'s column types (matched by name). ``columns`` limits an INSERT
    to those columns (the others take their server defaults, as an autoincrement ID must)."""

    def __init__(
        self, statement: Executable, table: Table | None = None, columns: Collection[str] | None = None
    ) -> None:
        self._statement = statement
        self._table = table
        self._columns = None if columns is None else list(columns)
        self._compiled: dict[str, _Compiled] = {}

    def compiled(self, dialect: Dialect) -> _Compiled:
        """The statement compiled for ``dialect``, with the bind processor of each parameter resolved."""
        if dialect.name not in self._compiled:
            compiled = self._statement.compile(dialect=dialect, column_keys=self._columns)  # type: ignore[attr-defined]
            processors: dict[str, _Processor] = {}
            if self._table is not None:
                processors = {
                    column.name: processor
                    for column in self._table.columns
                    # The dialect's own implementation of the type (SQLite's DATETIME writes its text format).
                    if (processor := column.type.dialect_impl(dialect).bind_processor(dialect)) is not None
                }
            slots = (
                tuple((name, processors.get(name)) for name in compiled.positiontup or ())
                if compiled.positional
                else None
            )
            self._compiled[dialect.name] = _Compiled(compiled.string, slots, processors, dict(compiled.params))
        return self._compiled[dialect.name]


class DriverTransaction:
    """Statements on one driver cursor within an open transaction (see the module docstring)."""

    def __init__(self, cursor: Any, dialect: Dialect, on_commit: Callable[[Callable[[], None]], None]) -> None:
        self._cursor = cursor
        self.dialect = dialect
        self._on_commit = on_commit

    @classmethod
    def of(cls, session: Session) -> DriverTransaction:
        """The transaction of an ORM unit of work: what the session holds is flushed first (driver
        statements do not flush it), so rows they reference go in before, as a Core statement's would."""
        session.flush()
        connection = session.connection()

        def on_commit(callback: Callable[[], None]) -> None:
            event_listen(session, "after_commit", lambda _session: callback(), once=True)

        return cls(connection.connection.cursor(), connection.dialect, on_commit)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the transaction has committed (never when it rolls back)."""
        self._on_commit(callback)

    def execute(self, statement: DriverStatement, values: Mapping[str, object] | None = None) -> Any:
        """Run ``statement`` with ``values`` (by column name); returns the cursor to fetch from."""
        compiled = statement.compiled(self.dialect)
        own = compiled.own
        params = _params(compiled, ({**own, **values} if own else values) if values else own, None)
        return self._run(self._cursor.execute, compiled.sql, params)

    def executemany(self, statement: DriverStatement, rows: Sequence[Mapping[str, object]]) -> None:
        """Run ``statement`` once per row, as one driver ``executemany``. A value repeated across rows
        (a batch's shared timestamps) is converted once."""
        compiled = statement.compiled(self.dialect)
        converted: dict[tuple[str, object], object] | None = {} if len(rows) > 1 else None
        self._run(self._cursor.executemany, compiled.sql, [_params(compiled, row, converted) for row in rows])

    def _run(self, method: Callable[[str, Any], Any], sql: str, params: Any) -> Any:
        # Not `with sqlalchemy_errors(...)`: a generator context manager costs more than the statement's
        # own Python work here, and this runs for every statement of every issuance record.
        try:
            method(sql, params)
        except self.dialect.loaded_dbapi.Error as err:
            raise _translated(self.dialect, sql, params, err) from err
        return self._cursor


@contextmanager
def sqlalchemy_errors(dialect: Dialect, sql: str | None = None, params: Any = None) -> Iterator[None]:
    """Raise what the driver raises as the SQLAlchemy exception Core would have raised for it."""
    try:
        yield
    except dialect.loaded_dbapi.Error as err:
        raise _translated(dialect, sql, params, err) from err


def _translated(dialect: Dialect, sql: str | None, params: Any, err: Exception) -> StatementError:
    return DBAPIError.instance(sql, params, err, dialect.loaded_dbapi.Error, dialect=dialect)


def _params(
    compiled: _Compiled, values: Mapping[str, object], converted: dict[tuple[str, object], object] | None
) -> Any:
    """The driver's parameters for ``values``: each converted by its column's bind processor (None is
    never converted); with ``converted``, a value repeated across rows is converted once."""
    slots = compiled.slots
    if converted is None:
        if slots is not None:
            return tuple([v if (v := values[n]) is None or p is None else p(v) for n, p in slots])
        processors = compiled.processors
        return {n: v if v is None or (p := processors.get(n)) is None else p(v) for n, v in values.items()}

    def bind(name: str, processor: _Processor | None, value: object) -> object:
        if processor is None or value is None:
            return value
        key = (name, value)
        if key not in converted:
            converted[key] = processor(value)
        return converted[key]

    if slots is not None:
        return tuple([bind(n, p, values[n]) for n, p in slots])
    return {n: bind(n, compiled.processors.get(n), v) for n, v in values.items()}
