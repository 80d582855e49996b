"""The HTTP edge for legacy identity mapping rules (DESIGN §5; :mod:`bridge.mapping`): list and show
(any role), add, delete and load (operators; :mod:`ca.rbac`). Registered by
:func:`ca.http_api.create_admin_app`.

``PUT /v1/mappings`` replaces every rule with the ones in the body, as a whole or not at all: the
GitOps path (``trustmesh-ca mapping load FILE``). Each route decodes, calls one method of
:class:`MappingOps` (:class:`ca.mappings.IdentityMappings`) and encodes; errors are left to the app's
TrustmeshError handler.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from bridge.mapping import MappingRule, rule_from_dict
from ca.http_caller import Caller
from ca.store.records import Actor, StoredMapping


class MappingOps(Protocol):
    """The mapping use cases this edge calls (:class:`ca.mappings.IdentityMappings`)."""

    def list(self) -> tuple[StoredMapping, ...]: ...
    def get(self, name: str) -> StoredMapping: ...
    def add(self, rule: MappingRule, actor: Actor) -> StoredMapping: ...
    def delete(self, name: str, actor: Actor) -> StoredMapping: ...
    def load(self, rules: Sequence[MappingRule], actor: Actor) -> tuple[StoredMapping, ...]: ...


class MappingBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    match: dict[str, str] = Field(description="dns, subject_cn, issuer, trust_anchor: each given must hold")
    spiffe_id: str = Field(description="template, e.g. spiffe://example.org/legacy/{host}")
    keep_dns: str = Field(default="matched", description="DNS SANs the SVID keeps: matched, all or none")
    keep_cn: bool = True


class MappingLoadBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[MappingBody]


class MappingReply(BaseModel):
    name: str
    match: dict[str, str]
    spiffe_id: str
    keep_dns: str
    keep_cn: bool
    created_at: datetime
    updated_at: datetime


class MappingListReply(BaseModel):
    mappings: list[MappingReply]


def _rule(body: MappingBody) -> MappingRule:
    return rule_from_dict(body.model_dump())


def mapping_reply(stored: StoredMapping) -> MappingReply:
    return MappingReply(**stored.rule.to_dict(), created_at=stored.created_at, updated_at=stored.updated_at)


def add_mapping_routes(app: FastAPI, ops: MappingOps) -> None:
    """``GET|POST|PUT /v1/mappings`` and ``GET|DELETE /v1/mappings/{name}``; changes audited as the caller."""

    @app.get("/v1/mappings")
    def list_mappings() -> MappingListReply:
        return MappingListReply(mappings=[mapping_reply(stored) for stored in ops.list()])

    @app.get("/v1/mappings/{name}")
    def show_mapping(name: str) -> MappingReply:
        return mapping_reply(ops.get(name))

    @app.post("/v1/mappings", status_code=201)
    def add_mapping(body: MappingBody, actor: Caller) -> MappingReply:
        return mapping_reply(ops.add(_rule(body), actor))

    @app.delete("/v1/mappings/{name}")
    def delete_mapping(name: str, actor: Caller) -> MappingReply:
        return mapping_reply(ops.delete(name, actor))

    @app.put("/v1/mappings")
    def load_mappings(body: MappingLoadBody, actor: Caller) -> MappingListReply:
        stored = ops.load([_rule(rule) for rule in body.rules], actor)
        return MappingListReply(mappings=[mapping_reply(item) for item in stored])
