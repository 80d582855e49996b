"""The admin API's federation routes (``/v1/federation/relationships``): thin over
:class:`~ca.federation.relationships.FederationRelationships`. Mutations take the authenticated caller
(``actor: Caller``), which the domain writes into the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from ca.federation.relationships import RelationshipSpec, parsed_bundle
from ca.http_caller import Caller
from ca.store.records import Actor, FederationRelationship
from spiffe_core.bundle import Bundle
from spiffe_core.errors import BundleError
from spiffe_core.spiffe_id import SpiffeId, TrustDomain


class RelationshipOps(Protocol):
    def create(self, spec: RelationshipSpec, actor: Actor) -> FederationRelationship: ...
    def delete(self, trust_domain: TrustDomain, actor: Actor) -> FederationRelationship: ...
    def request_refresh(self, trust_domain: TrustDomain, actor: Actor) -> FederationRelationship: ...
    def get(self, trust_domain: TrustDomain) -> FederationRelationship: ...
    def list(self) -> tuple[FederationRelationship, ...]: ...


class RelationshipBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    trust_domain: str
    bundle_endpoint_url: str = Field(max_length=2048)
    profile: str
    endpoint_spiffe_id: str | None = None
    bootstrap_bundle: str | None = Field(default=None, max_length=1024 * 1024)


class RelationshipReply(BaseModel):
    trust_domain: str
    bundle_endpoint_url: str
    profile: str
    endpoint_spiffe_id: str | None
    created_at: datetime
    bundle_sequence: int | None = Field(description="spiffe_sequence of the bundle in force, None before any")
    x509_authorities: int
    jwt_authorities: int
    last_attempt_at: datetime | None
    last_success_at: datetime | None
    next_refresh_at: datetime | None
    last_error: str


class RelationshipListReply(BaseModel):
    relationships: list[RelationshipReply]


def relationship_reply(relationship: FederationRelationship) -> RelationshipReply:
    try:
        bundle: Bundle | None = parsed_bundle(relationship)
    except BundleError:  # stored only after checks; unreadable only if the datastore was edited
        bundle = None
    return RelationshipReply(
        trust_domain=relationship.trust_domain.name,
        bundle_endpoint_url=relationship.bundle_endpoint_url,
        profile=relationship.profile,
        endpoint_spiffe_id=None if relationship.endpoint_spiffe_id is None else str(relationship.endpoint_spiffe_id),
        created_at=relationship.created_at,
        bundle_sequence=None if bundle is None else bundle.sequence,
        x509_authorities=0 if bundle is None else len(bundle.x509_authorities),
        jwt_authorities=0 if bundle is None else len(bundle.jwt_authorities),
        last_attempt_at=relationship.last_attempt_at,
        last_success_at=relationship.last_success_at,
        next_refresh_at=relationship.next_refresh_at,
        last_error=relationship.last_error,
    )


def add_federation_routes(app: FastAPI, ops: RelationshipOps) -> None:
    base = "/v1/federation/relationships"

    @app.post(base, status_code=201)
    def create_relationship(body: RelationshipBody, actor: Caller) -> RelationshipReply:
        spec = RelationshipSpec(
            trust_domain=TrustDomain.parse(body.trust_domain),
            bundle_endpoint_url=body.bundle_endpoint_url,
            profile=body.profile,
            endpoint_spiffe_id=None if body.endpoint_spiffe_id is None else SpiffeId.parse(body.endpoint_spiffe_id),
            bootstrap_bundle=body.bootstrap_bundle,
        )
        return relationship_reply(ops.create(spec, actor))

    @app.get(base)
    def list_relationships() -> RelationshipListReply:
        return RelationshipListReply(relationships=[relationship_reply(r) for r in ops.list()])

    @app.get(base + "/{trust_domain}")
    def show_relationship(trust_domain: str) -> RelationshipReply:
        return relationship_reply(ops.get(TrustDomain.parse(trust_domain)))

    @app.post(base + "/{trust_domain}/refresh", status_code=202)
    def refresh_relationship(trust_domain: str, actor: Caller) -> RelationshipReply:
        return relationship_reply(ops.request_refresh(TrustDomain.parse(trust_domain), actor))

    @app.delete(base + "/{trust_domain}")
    def delete_relationship(trust_domain: str, actor: Caller) -> RelationshipReply:
        return relationship_reply(ops.delete(TrustDomain.parse(trust_domain), actor))
