"""The HTTP edge for attested agents (DESIGN §3 "Node attestation"): list, show (any role), ban, unban,
evict (security officers; :mod:`ca.rbac`). Registered by :func:`ca.http_api.create_admin_app`.

Agents are named by their SPIFFE ID, which holds slashes, so it travels as a query parameter (reads)
or in the JSON body (changes), never in the path. Each route decodes, calls one method of
:class:`AgentOps` (:class:`ca.agents.AgentAdmin`) and encodes; errors are left to the app's
TrustmeshError handler.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from ca.http_caller import Caller
from ca.store.records import Actor, Agent
from spiffe_core.spiffe_id import SpiffeId


class AgentOps(Protocol):
    """The agent use cases this edge calls (:class:`ca.agents.AgentAdmin`)."""

    def list(self) -> tuple[Agent, ...]: ...
    def get(self, agent_id: SpiffeId) -> Agent: ...
    def ban(self, agent_id: SpiffeId, actor: Actor) -> Agent: ...
    def unban(self, agent_id: SpiffeId, actor: Actor) -> Agent: ...
    def evict(self, agent_id: SpiffeId, actor: Actor) -> Agent: ...


class AgentBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    spiffe_id: str = Field(description="the agent's SPIFFE ID, spiffe://<td>/trustmesh/agent/<method>/<node>")


class AgentReply(BaseModel):
    spiffe_id: str
    attestation_type: str
    serial: str = Field(description="lowercase hex: the agent X509-SVID the CA accepts")
    expires_at: datetime
    banned: bool
    created_at: datetime
    updated_at: datetime
    previous_serial: str | None = Field(description="the SVID a renewal replaced, accepted until previous_valid_until")
    previous_valid_until: datetime | None
    last_seen_at: datetime | None = Field(description="its last node API call, noted at most once a minute")
    version: str = Field(description="the trustmesh version it reports; '' when it reports none")


class AgentListReply(BaseModel):
    agents: list[AgentReply]


def agent_reply(agent: Agent) -> AgentReply:
    return AgentReply(
        spiffe_id=str(agent.spiffe_id),
        attestation_type=agent.attestation_type,
        serial=format(agent.serial, "x"),
        expires_at=agent.expires_at,
        banned=agent.banned,
        created_at=agent.created_at,
        updated_at=agent.updated_at,
        previous_serial=None if agent.previous_serial is None else format(agent.previous_serial, "x"),
        previous_valid_until=agent.previous_serial_until,
        last_seen_at=agent.last_seen_at,
        version=agent.version,
    )


def add_agent_routes(app: FastAPI, ops: AgentOps) -> None:
    """``GET /v1/agents``, ``GET /v1/agent?spiffe_id=…`` and ``POST /v1/agents/{ban,unban,evict}``;
    changes are audited as the request's caller."""

    @app.get("/v1/agents")
    def list_agents() -> AgentListReply:
        return AgentListReply(agents=[agent_reply(agent) for agent in ops.list()])

    @app.get("/v1/agent")
    def show_agent(spiffe_id: str) -> AgentReply:
        return agent_reply(ops.get(SpiffeId.parse(spiffe_id)))

    @app.post("/v1/agents/ban")
    def ban_agent(body: AgentBody, actor: Caller) -> AgentReply:
        return agent_reply(ops.ban(SpiffeId.parse(body.spiffe_id), actor))

    @app.post("/v1/agents/unban")
    def unban_agent(body: AgentBody, actor: Caller) -> AgentReply:
        return agent_reply(ops.unban(SpiffeId.parse(body.spiffe_id), actor))

    @app.post("/v1/agents/evict")
    def evict_agent(body: AgentBody, actor: Caller) -> AgentReply:
        return agent_reply(ops.evict(SpiffeId.parse(body.spiffe_id), actor))
