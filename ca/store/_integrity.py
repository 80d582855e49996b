"""Which constraint an ``IntegrityError`` broke, read the same way on SQLite and PostgreSQL.

Repositories turn a taken unique key into ``AlreadyExists`` and a dangling reference into ``NotFound``;
to do that without parsing driver messages they look at the SQLSTATE (psycopg) or the extended SQLite
result code name (Python ≥ 3.11).
"""

from __future__ import annotations

import enum

from sqlalchemy.exc import IntegrityError


class Violation(enum.Enum):
    UNIQUE = "unique"
    FOREIGN_KEY = "foreign key"
    OTHER = "other"


_PG_SQLSTATES = {"23505": Violation.UNIQUE, "23503": Violation.FOREIGN_KEY}
_SQLITE_NAMES = {
    "SQLITE_CONSTRAINT_UNIQUE": Violation.UNIQUE,
    "SQLITE_CONSTRAINT_PRIMARYKEY": Violation.UNIQUE,
    "SQLITE_CONSTRAINT_FOREIGNKEY": Violation.FOREIGN_KEY,
}


def violation_of(err: IntegrityError) -> Violation:
    sqlstate = getattr(err.orig, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate in _PG_SQLSTATES:
        return _PG_SQLSTATES[sqlstate]
    name = getattr(err.orig, "sqlite_errorname", None)
    if isinstance(name, str) and name in _SQLITE_NAMES:
        return _SQLITE_NAMES[name]
    return Violation.OTHER
