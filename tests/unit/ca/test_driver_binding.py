"""The driver statements of the issuance record (ca.store.driver) hand the driver the values Core would:
each parameter converted by the bind processor of its bind parameter's type, on SQLite (positional)
and PostgreSQL (named), for every column type the issued-certificate and audit rows use."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Dialect
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
from sqlalchemy.dialects.sqlite.pysqlite import dialect as sqlite_dialect

from ca.store.driver import DriverStatement, DriverTransaction
from ca.store.repositories.audit import _APPEND
from ca.store.repositories.certificates import _INSERT

NOW = datetime(2026, 11, 28, 1, 2, 3, 456789, tzinfo=UTC)
CERTIFICATE = {
    "serial": "1f",
    "spiffe_id": "spiffe://example.org/web",
    "authority_id": "a1",
    "not_before": NOW - timedelta(seconds=10),
    "not_after": NOW + timedelta(hours=1),
    "issued_at": NOW,
    "revoked_at": None,
    "revocation_reason": None,
    "agent_id": "spiffe://example.org/trustmesh/agent/join_token/n1",
}
AUDIT = {
    "at": NOW,
    "actor": "spiffe://example.org/agent",
    "auth_method": "node-api",
    "role": "",
    "action": "x509_svid.issue",
    "target": "spiffe://example.org/web",
    "outcome": "ok",
    "reason": "",
    "detail": {"count": 1, "serial": "1f", "ids": ["a", "é"]},
    "prev_hash": "0" * 64,
    "hash": "1" * 64,
}
DIALECTS = [pytest.param(sqlite_dialect(), id="sqlite"), pytest.param(psycopg_dialect(), id="postgresql")]
STATEMENTS = [pytest.param(_INSERT, CERTIFICATE, id="issued_certificates"), pytest.param(_APPEND, AUDIT, id="audit")]


class RecordingCursor:
    """A driver cursor that keeps what it is given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def execute(self, sql: str, params: Any) -> None:
        self.calls.append((sql, params))

    def executemany(self, sql: str, params: Any) -> None:
        self.calls.append((sql, list(params)))


def _comparable(value: object) -> object:
    """psycopg's JSON wrapper has no equality; what it wraps and how it dumps it is what counts."""
    wrapped = getattr(value, "obj", None)
    return value if wrapped is None else (type(value), wrapped)


def core_params(statement: DriverStatement, dialect: Dialect, values: Mapping[str, object]) -> Any:
    """What a Core execution sends: every bind parameter converted by its own type's processor."""
    compiled = statement._statement.compile(dialect=dialect, column_keys=statement._columns)  # type: ignore[attr-defined]
    processors: dict[str, Callable[[Any], Any] | None] = {
        name: bind.type.dialect_impl(dialect).bind_processor(dialect) for name, bind in compiled.binds.items()
    }

    def bound(name: str) -> object:
        processor, value = processors[name], values[name]
        return _comparable(value if processor is None or value is None else processor(value))

    if compiled.positional:
        return tuple(bound(name) for name in compiled.positiontup)
    return {name: bound(name) for name in values}


def sent(params: Any) -> Any:
    if isinstance(params, tuple):
        return tuple(_comparable(value) for value in params)
    return {name: _comparable(value) for name, value in params.items()}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(("statement", "values"), STATEMENTS)
def test_execute_sends_each_value_as_core_converts_it(
    dialect: Dialect, statement: DriverStatement, values: Mapping[str, object]
) -> None:
    cursor = RecordingCursor()
    DriverTransaction(cursor, dialect, lambda _callback: None).execute(statement, values)
    ((sql, params),) = cursor.calls
    assert sql == statement.compiled(dialect).sql
    assert sent(params) == core_params(statement, dialect, values)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("rows", [1, 3], ids=["one row", "several rows"])
def test_executemany_sends_every_row_as_core_converts_it(dialect: Dialect, rows: int) -> None:
    batch = [
        {**CERTIFICATE, "serial": f"{n:x}", "revoked_at": NOW if n % 2 else None, "revocation_reason": None}
        for n in range(rows)
    ]
    cursor = RecordingCursor()
    DriverTransaction(cursor, dialect, lambda _callback: None).executemany(_INSERT, batch)
    ((_sql, params),) = cursor.calls
    assert [sent(row) for row in params] == [core_params(_INSERT, dialect, row) for row in batch]


def test_sqlite_gets_utc_wall_time_text_and_postgresql_aware_datetimes() -> None:
    """The conversions the processors above stand for, spelled out once."""
    sqlite_params = _INSERT.compiled(sqlite_dialect())
    assert sqlite_params.slots is not None
    cursor = RecordingCursor()
    DriverTransaction(cursor, sqlite_dialect(), lambda _callback: None).execute(_INSERT, CERTIFICATE)
    (_sql, params) = cursor.calls[0]
    assert dict(zip((name for name, _ in sqlite_params.slots), params, strict=True))["issued_at"] == (
        "2026-11-28 01:02:03.456789"
    )
    cursor = RecordingCursor()
    DriverTransaction(cursor, psycopg_dialect(), lambda _callback: None).execute(_INSERT, CERTIFICATE)
    (_sql, named) = cursor.calls[0]
    assert named["issued_at"] == NOW
    assert named["revoked_at"] is None
