"""Random secrets every CA replica shares, by name (the x509pop challenge key, :mod:`ca.bridge_attestation`).

A secret is created once and never changed: the first replica that asks inserts its candidate if no
row of that name exists (``INSERT … ON CONFLICT DO NOTHING``), then every replica reads the one row that
won. Two replicas asking at once therefore end up with the same secret, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from ca.store.models import SharedSecretRow
from ca.store.repositories._sql import upsert


class SharedSecretRepository:
    """Shared secrets, within the caller's unit of work."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def get_or_create(self, name: str, candidate: Callable[[], bytes], now: datetime) -> bytes:
        """The secret called ``name``; when there is none yet, ``candidate()`` becomes it (unless
        another replica's insert wins the race: then that one is returned)."""
        self._session.execute(
            upsert(self._session, SharedSecretRow)
            .values(name=name, value=candidate(), created_at=now)
            .on_conflict_do_nothing(index_elements=["name"])
        )
        return self._session.execute(select(SharedSecretRow.value).where(SharedSecretRow.name == name)).scalar_one()
