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
from typing import Any

from sqlalchemy import Dialect, Executable, Table
from sqlalchemy.event import listen as event_listen
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

_Processor = Callable[[Any], Any]
_Compiled = tuple[str, tuple[str, ...] | None, dict[str, _Processor], dict[str, Any]]


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
        """The SQL, the order of positional parameters (None: named), the bind processors and the values
        the statement itself holds (a LIMIT's)."""
        if dialect.name not in self._compiled:
            compiled = self._statement.compile(dialect=dialect, column_keys=self._columns)  # type: ignore[attr-defined]
            order = tuple(compiled.positiontup or ()) if compiled.positional else None
            processors: dict[str, _Processor] = {}
            if self._table is not None:
                processors = {
                    column.name: processor
                    for column in self._table.columns
                    # The dialect's own implementation of the type (SQLite's DATETIME writes its text format).
                    if (processor := column.type.dialect_impl(dialect).bind_processor(dialect)) is not None
                }
            self._compiled[dialect.name] = (compiled.string, order, processors, dict(compiled.params))
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
        sql, order, processors, own = statement.compiled(self.dialect)
        params = _params(order, processors, {**own, **values} if values else own, None)
        return self._run(self._cursor.execute, sql, params)

    def executemany(self, statement: DriverStatement, rows: Sequence[Mapping[str, object]]) -> None:
        """Run ``statement`` once per row, as one driver ``executemany``. A value repeated across rows
        (a batch's shared timestamps) is converted once."""
        sql, order, processors, _own = statement.compiled(self.dialect)
        converted: dict[tuple[str, object], object] = {}
        self._run(self._cursor.executemany, sql, [_params(order, processors, row, converted) for row in rows])

    def _run(self, method: Callable[[str, Any], Any], sql: str, params: Any) -> Any:
        with sqlalchemy_errors(self.dialect, sql, params):
            method(sql, params)
        return self._cursor


@contextmanager
def sqlalchemy_errors(dialect: Dialect, sql: str | None = None, params: Any = None) -> Iterator[None]:
    """Raise what the driver raises as the SQLAlchemy exception Core would have raised for it."""
    try:
        yield
    except dialect.loaded_dbapi.Error as err:
        raise DBAPIError.instance(sql, params, err, dialect.loaded_dbapi.Error, dialect=dialect) from err


def _params(
    order: tuple[str, ...] | None,
    processors: Mapping[str, _Processor],
    values: Mapping[str, object],
    converted: dict[tuple[str, object], object] | None,
) -> Any:
    def bind(name: str, value: object) -> object:
        processor = processors.get(name)
        if processor is None or value is None:
            return value
        if converted is None:
            return processor(value)
        key = (name, value)
        if key not in converted:
            converted[key] = processor(value)
        return converted[key]

    if order is None:
        return {name: bind(name, value) for name, value in values.items()}
    return tuple(bind(name, values[name]) for name in order)
