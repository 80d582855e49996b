"""Federation relationships (DESIGN §3 "Federation"): which trust domains this CA federates with, where
their bundles come from, and the bundles last fetched. The use cases behind the admin API and
``trustmesh-ca federation``; every mutation is audited in its unit of work, and every change of a
partner's bundle is announced to the Sync hub so agents whose entries federate with it get it at once.

Creating a relationship never contacts the partner: a partner whose endpoint is down at that moment
blocks nothing (the fetcher, :mod:`ca.federation.refresher`, keeps trying). With a bootstrap bundle,
workloads get it at once; without one, they get the partner's bundle after the first good fetch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from ca.federation.fetch import PROFILE_HTTPS_SPIFFE, PROFILES, BundleRefused, check_partner_bundle
from ca.store.engine import Database
from ca.store.records import Actor, AuditEvent, FederationRelationship
from ca.store.repositories import AuditLogRepository, FederationRepository
from ca.sync import Change, ChangeHub, announce
from spiffe_core.bundle import Bundle
from spiffe_core.clock import Clock
from spiffe_core.errors import InvalidArgument
from spiffe_core.spiffe_id import SpiffeId, TrustDomain

MAX_URL_LENGTH = 2048


@dataclass(frozen=True, slots=True)
class RelationshipSpec:
    """What an operator gives: the partner, its endpoint and how to authenticate it."""

    trust_domain: TrustDomain
    bundle_endpoint_url: str
    profile: str
    endpoint_spiffe_id: SpiffeId | None = None
    bootstrap_bundle: str | None = None  # the partner's bundle as SPIFFE JSON, obtained out of band


def parsed_bundle(relationship: FederationRelationship) -> Bundle | None:
    """The relationship's stored bundle (last good, or bootstrap), None when there is none yet."""
    if relationship.bundle is None:
        return None
    return Bundle.parse_jwks(relationship.trust_domain, relationship.bundle)


def check_spec(spec: RelationshipSpec, own: TrustDomain, max_keys: int) -> Bundle | None:
    """Refuse a spec that could never work, with the fix; returns the parsed bootstrap bundle."""
    if spec.trust_domain == own:
        raise InvalidArgument(f"{own} is this CA's own trust domain; federate with another one")
    url = urlsplit(spec.bundle_endpoint_url)
    if url.scheme != "https" or not url.hostname or len(spec.bundle_endpoint_url) > MAX_URL_LENGTH:
        raise InvalidArgument(
            f"bundle endpoint URL {spec.bundle_endpoint_url!r} is not an https:// URL of at most {MAX_URL_LENGTH} "
            "characters; write e.g. 'https://ca.partner.example:8443/'"
        )
    if spec.profile not in PROFILES:
        raise InvalidArgument(f"profile {spec.profile!r} is unknown; use one of {', '.join(PROFILES)}")
    if spec.profile == PROFILE_HTTPS_SPIFFE:
        if spec.endpoint_spiffe_id is None or spec.bootstrap_bundle is None:
            raise InvalidArgument(
                "profile https_spiffe needs the endpoint's SPIFFE ID and a bootstrap bundle (the partner's current "
                "bundle) to authenticate the endpoint with; give both"
            )
        if not spec.endpoint_spiffe_id.is_member_of(spec.trust_domain):
            raise InvalidArgument(
                f"endpoint SPIFFE ID {spec.endpoint_spiffe_id} is not in {spec.trust_domain}; the endpoint is "
                "authenticated with that trust domain's bundle"
            )
    elif spec.endpoint_spiffe_id is not None:
        raise InvalidArgument("an endpoint SPIFFE ID is only used with profile https_spiffe; leave it out")
    if spec.bootstrap_bundle is None:
        return None
    try:
        return check_partner_bundle(spec.trust_domain, spec.bootstrap_bundle, None, max_keys)
    except BundleRefused as err:
        raise InvalidArgument(f"bootstrap bundle of {spec.trust_domain}: {err}") from err


class FederationRelationships:
    """The relationship use cases; each call is one unit of work. ``on_change`` is told the trust domain
    of every relationship created, deleted or asked to refresh (the refresher wakes for it)."""

    def __init__(
        self, database: Database, hub: ChangeHub, own_trust_domain: TrustDomain, clock: Clock, max_keys: int
    ) -> None:
        self._database = database
        self._hub = hub
        self._own = own_trust_domain
        self._clock = clock
        self._max_keys = max_keys
        self._listeners: list[Callable[[TrustDomain], None]] = []

    def add_listener(self, listener: Callable[[TrustDomain], None]) -> None:
        self._listeners.append(listener)

    def _notify(self, trust_domain: TrustDomain) -> None:
        for listener in self._listeners:
            listener(trust_domain)

    def create(self, spec: RelationshipSpec, actor: Actor) -> FederationRelationship:
        """Store a relationship (AlreadyExists for a second one with the same trust domain); the partner
        is not contacted here. Raises InvalidArgument with the fix for a spec that cannot work."""
        bootstrap = check_spec(spec, self._own, self._max_keys)
        now = self._clock.now()
        relationship = FederationRelationship(
            trust_domain=spec.trust_domain,
            bundle_endpoint_url=spec.bundle_endpoint_url,
            profile=spec.profile,
            endpoint_spiffe_id=spec.endpoint_spiffe_id,
            bundle=None if bootstrap is None else bootstrap.to_json(),
            created_at=now,
            next_refresh_at=now,
        )
        with self._database.transaction() as session:
            stored = FederationRepository(session).add(relationship)
            AuditLogRepository(session).append(
                AuditEvent(now, actor, "federation.create", spec.trust_domain.name, "ok", _audit_detail(stored))
            )
            if bootstrap is not None:
                announce(session, self._hub, Change.everyone())
        self._notify(spec.trust_domain)
        return stored

    def delete(self, trust_domain: TrustDomain, actor: Actor) -> FederationRelationship:
        """Remove a relationship; its bundle leaves every workload at once. Raises NotFound."""
        now = self._clock.now()
        with self._database.transaction() as session:
            removed = FederationRepository(session).delete(trust_domain)
            AuditLogRepository(session).append(
                AuditEvent(now, actor, "federation.delete", trust_domain.name, "ok", _audit_detail(removed))
            )
            announce(session, self._hub, Change.everyone())
        self._notify(trust_domain)
        return removed

    def request_refresh(self, trust_domain: TrustDomain, actor: Actor) -> FederationRelationship:
        """Ask for a fetch now (the fetcher does it; its outcome shows in the status). Raises NotFound."""
        now = self._clock.now()
        with self._database.transaction() as session:
            relationship = FederationRepository(session).get(trust_domain)
            AuditLogRepository(session).append(
                AuditEvent(now, actor, "federation.refresh", trust_domain.name, "ok", {})
            )
        self._notify(trust_domain)
        return relationship

    def get(self, trust_domain: TrustDomain) -> FederationRelationship:
        with self._database.transaction() as session:
            return FederationRepository(session).get(trust_domain)

    def list(self) -> tuple[FederationRelationship, ...]:
        with self._database.transaction() as session:
            return FederationRepository(session).list()

    def bundles(self) -> dict[TrustDomain, Bundle]:
        """Each partner's current bundle (never merged: one per trust domain), for delivery to agents."""
        found = {}
        for relationship in self.list():
            bundle = parsed_bundle(relationship)
            if bundle is not None:
                found[relationship.trust_domain] = bundle
        return found


def _audit_detail(relationship: FederationRelationship) -> dict[str, str | None]:
    return {
        "bundle_endpoint_url": relationship.bundle_endpoint_url,
        "profile": relationship.profile,
        "endpoint_spiffe_id": None if relationship.endpoint_spiffe_id is None else str(relationship.endpoint_spiffe_id),
    }
