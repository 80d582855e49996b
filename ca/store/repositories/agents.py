"""Attested node agents (DESIGN §3 "Node attestation"): who they are, how they attested, which SVID
they hold, and whether an operator banned them.

Re-attestation of a banned agent is refused in the same statement that would record it, so a ban
cannot be raced by an attestation already in flight. A renewal keeps the serial it replaced for a
short overlap (``previous_serial`` until ``previous_serial_until``); an attestation forgets it.

When an agent was last seen and which version it reports (issue 11's inventory) are written on
attestation and renewal, and otherwise at most once per ``every`` by :meth:`AgentRepository.record_contact`,
so an agent's calls cost the datastore a write a minute, not one per call.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from ca.store.models import AgentRow
from ca.store.records import Agent
from ca.store.repositories._sql import serial_from_text, serial_to_text, upsert
from spiffe_core.errors import NotAuthorized, NotFound
from spiffe_core.spiffe_id import SpiffeId


def _record(row: AgentRow) -> Agent:
    return Agent(
        spiffe_id=SpiffeId.parse(row.spiffe_id),
        attestation_type=row.attestation_type,
        serial=serial_from_text(row.serial),
        expires_at=row.expires_at,
        banned=row.banned,
        created_at=row.created_at,
        updated_at=row.updated_at,
        previous_serial=None if row.previous_serial is None else serial_from_text(row.previous_serial),
        previous_serial_until=row.previous_serial_until,
        last_seen_at=row.last_seen_at,
        version=row.version,
    )


class AgentRepository:
    """Node agents by SPIFFE ID, within the caller's unit of work."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def upsert(
        self,
        spiffe_id: SpiffeId,
        attestation_type: str,
        serial: int,
        expires_at: datetime,
        now: datetime,
        *,
        previous_valid_until: datetime | None = None,
        version: str = "",
    ) -> Agent:
        """Record a (re-)attested or renewed agent and the SVID it now holds, seen at ``now``; a known
        agent keeps its creation time, and its version unless ``version`` names one. ``previous_valid_until``
        (a renewal) keeps the serial being replaced valid until then; without it (an attestation) only
        the new serial is valid.

        Raises :class:`NotAuthorized` when the agent is banned."""
        values: dict[str, object] = {
            "attestation_type": attestation_type,
            "serial": serial_to_text(serial),
            "expires_at": expires_at,
            "updated_at": now,
            "last_seen_at": now,
        }
        if version:
            values["version"] = version
        statement = upsert(self._session, AgentRow).values(
            spiffe_id=str(spiffe_id), banned=False, created_at=now, **{"version": version, **values}
        )
        replaced: dict[str, object] = (
            {"previous_serial": None, "previous_serial_until": None}
            if previous_valid_until is None
            # The row's serial before this statement: the SVID being replaced.
            else {"previous_serial": AgentRow.serial, "previous_serial_until": previous_valid_until}
        )
        statement = statement.on_conflict_do_update(
            index_elements=[AgentRow.spiffe_id], set_={**values, **replaced}, where=AgentRow.banned.is_(False)
        ).returning(AgentRow.created_at, AgentRow.previous_serial, AgentRow.previous_serial_until, AgentRow.version)
        row = self._session.execute(statement).one_or_none()
        if row is None:
            raise NotAuthorized(
                f"agent {spiffe_id} is banned; an operator must lift the ban before it can attest again"
            )
        created_at, previous_serial, previous_until, stored_version = row
        return Agent(
            spiffe_id=spiffe_id,
            attestation_type=attestation_type,
            serial=serial,
            expires_at=expires_at,
            banned=False,
            created_at=created_at,
            updated_at=now,
            previous_serial=None if previous_serial is None else serial_from_text(previous_serial),
            previous_serial_until=previous_until,
            last_seen_at=now,
            version=stored_version,
        )

    def record_contact(self, spiffe_id: SpiffeId, now: datetime, version: str, every: timedelta) -> bool:
        """Note that the agent called at ``now`` (and reports ``version``; "" leaves the stored one), unless
        that was noted less than ``every`` ago with the same version. Returns whether a row changed; an
        unknown agent changes nothing (authentication refuses it anyway)."""
        row = AgentRow
        values: dict[str, object] = {"last_seen_at": now}
        stale = or_(row.last_seen_at.is_(None), row.last_seen_at <= now - every)
        if version:
            values["version"] = version
            stale = or_(stale, row.version != version)
        changed = self._session.execute(
            update(row)
            .where(row.spiffe_id == str(spiffe_id), stale)
            .values(values)
            .returning(row.spiffe_id)
            .execution_options(synchronize_session="fetch")
        ).scalar_one_or_none()
        return changed is not None

    def get(self, spiffe_id: SpiffeId) -> Agent:
        # populate_existing: an upsert bypasses the session's identity map, so never trust a cached row.
        row = self._session.get(AgentRow, str(spiffe_id), populate_existing=True)
        if row is None:
            raise NotFound(f"agent {spiffe_id} has never attested")
        return _record(row)

    def list(self) -> tuple[Agent, ...]:
        """Every known agent, by SPIFFE ID."""
        return tuple(_record(row) for row in self._session.scalars(select(AgentRow).order_by(AgentRow.spiffe_id)))

    def set_banned(self, spiffe_id: SpiffeId, banned: bool, now: datetime) -> Agent:
        """Ban an agent (it can no longer attest or renew) or lift its ban; :class:`NotFound` if unknown."""
        changed = self._session.execute(
            update(AgentRow)
            .where(AgentRow.spiffe_id == str(spiffe_id))
            .values(banned=banned, updated_at=now)
            .returning(AgentRow.spiffe_id)
            .execution_options(synchronize_session="fetch")
        ).scalar_one_or_none()
        if changed is None:
            raise NotFound(f"agent {spiffe_id} has never attested")
        return self.get(spiffe_id)

    def delete(self, spiffe_id: SpiffeId) -> Agent:
        """Forget an agent (it must attest again); :class:`NotFound` if unknown. Its ban goes with it."""
        record = self.get(spiffe_id)
        self._session.execute(
            delete(AgentRow).where(AgentRow.spiffe_id == str(spiffe_id)).execution_options(synchronize_session=False)
        )
        return record
