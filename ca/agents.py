"""The operator's use cases for attested agents (DESIGN §3 "Node attestation"): list and show them, ban
and unban one, evict one.

* **ban**: the agent can no longer call the node API, renew or attest again; its open Sync streams end
  at once (the ban announces a change for the agent; each stream reloads, is refused and ends with
  PERMISSION_DENIED). ``unban`` lifts it.
* **evict**: the agent's record is deleted, so its SVID no longer authenticates and the node must
  attest again with a new join token (under the same node name, if the operator wants: the agent ID
  and the registration entries parented to it stay usable). Its streams end too. A ban goes with the
  record, as in SPIRE: evict a banned agent only to let the node back in.

Called by the admin API (:mod:`ca.http_agents`). Every change is audited in its own unit of work.
"""

from __future__ import annotations

from ca.entries import AGENT_PATH
from ca.store.engine import Database
from ca.store.records import Actor, Agent, AuditEvent
from ca.store.repositories import AgentRepository, AuditLogRepository
from ca.sync import Change, ChangeHub, announce
from spiffe_core.clock import Clock
from spiffe_core.errors import InvalidArgument
from spiffe_core.spiffe_id import SpiffeId


def _check_agent_id(agent_id: SpiffeId) -> None:
    if not agent_id.path.startswith(AGENT_PATH + "/"):
        raise InvalidArgument(
            f"{agent_id} is not an agent ID; agent IDs read {agent_id.trust_domain.id}{AGENT_PATH}/<method>/<node> "
            "— `trustmesh-ca agent list` shows them"
        )


class AgentAdmin:
    """Operator actions on agents; ``actor`` is who the audit log names."""

    def __init__(self, database: Database, hub: ChangeHub, clock: Clock) -> None:
        self._database = database
        self._hub = hub
        self._clock = clock

    def list(self) -> tuple[Agent, ...]:
        """Every agent the CA knows, by SPIFFE ID."""
        with self._database.transaction() as session:
            return AgentRepository(session).list()

    def get(self, agent_id: SpiffeId) -> Agent:
        """One agent; NotFound when it never attested (or was evicted)."""
        _check_agent_id(agent_id)
        with self._database.transaction() as session:
            return AgentRepository(session).get(agent_id)

    def ban(self, agent_id: SpiffeId, actor: Actor) -> Agent:
        """Refuse the agent every node API call from now on and end its streams. NotFound if unknown."""
        return self._set_banned(agent_id, True, actor)

    def unban(self, agent_id: SpiffeId, actor: Actor) -> Agent:
        """Lift a ban: the agent's current SVID works again. NotFound if unknown."""
        return self._set_banned(agent_id, False, actor)

    def evict(self, agent_id: SpiffeId, actor: Actor) -> Agent:
        """Delete the agent's record (it must attest again) and end its streams; the record as it was.
        NotFound if unknown."""
        _check_agent_id(agent_id)
        now = self._clock.now()
        with self._database.transaction() as session:
            evicted = AgentRepository(session).delete(agent_id)
            AuditLogRepository(session).append(
                AuditEvent(now, actor, "agent.evict", str(agent_id), "ok", {"serial": format(evicted.serial, "x")})
            )
            announce(session, self._hub, Change.for_agents(agent_id))
        return evicted

    def _set_banned(self, agent_id: SpiffeId, banned: bool, actor: Actor) -> Agent:
        _check_agent_id(agent_id)
        now = self._clock.now()
        with self._database.transaction() as session:
            agent = AgentRepository(session).set_banned(agent_id, banned, now)
            AuditLogRepository(session).append(
                AuditEvent(now, actor, "agent.ban" if banned else "agent.unban", str(agent_id), "ok")
            )
            announce(session, self._hub, Change.for_agents(agent_id))
        return agent
