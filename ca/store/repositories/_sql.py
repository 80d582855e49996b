"""Small SQL helpers the repositories share: dialect-specific upserts and serial number encoding."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ca.store.models import Base


def upsert(session: Session, model: type[Base]) -> Any:
    """``INSERT … ON CONFLICT`` for the session's dialect (both SQLite ≥ 3.24 and PostgreSQL have it,
    with the same ``on_conflict_do_update`` API in SQLAlchemy)."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)


def serial_to_text(serial: int) -> str:
    """Serials are up to 159 bits (RFC 5280 caps them at 20 octets), past every SQL integer type, so
    they are stored as lowercase hex without leading zeros — the form ``openssl`` prints."""
    return format(serial, "x")


def serial_from_text(text: str) -> int:
    return int(text, 16)
