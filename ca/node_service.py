"""The node API's use cases (DESIGN §3 "Node attestation", "Registration entries"; wire/node.proto):
attest an agent, authenticate it by its X509-SVID, renew its SVID, compute what it must hold, and sign
workload SVIDs for the entries parented to it.

The gRPC servicer (:mod:`ca.node_api`) only decodes, calls one method here (in a worker thread: these
read the datastore and sign) and encodes. Identity always comes from the caller's verified client
certificate, never from a request field.

An agent's X509-SVID authenticates only while it is the one the CA last issued to that agent — or,
for :data:`RENEWAL_OVERLAP` after a renewal, the one it replaced, so calls in flight on the agent's
old channel finish. An SVID replaced by renewal or re-attestation, or of an evicted or banned agent,
stops working; its open Sync streams end at once (every issuance announces a change for the agent).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from cryptography import x509

from ca.attestation import NodeAttestors
from ca.authority import AuthoritySet
from ca.entries import RegistrationEntries, authorize, entitled_by_id, is_agent_id
from ca.federation.relationships import parsed_bundle
from ca.issuance import IssuedX509Svid, JwtSvidRequest, X509SvidRequest, load_csr_public_key
from ca.store.engine import Database
from ca.store.records import Agent, RegistrationEntry
from ca.store.repositories import AgentRepository, FederationRepository, RegistrationEntryRepository
from ca.sync import Change, ChangeHub, announce
from spiffe_core.bundle import Bundle
from spiffe_core.clock import Clock
from spiffe_core.errors import InvalidArgument, NotAuthenticated, NotAuthorized, NotFound, X509SvidError
from spiffe_core.jwt_svid import check_audience
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import load_pem_certificates, verify_x509_svid

# How long the SVID a renewal replaced still authenticates: the agent moves to a new channel at once
# and gives unary calls on the old one 5 s to finish.
RENEWAL_OVERLAP = timedelta(seconds=30)


class Issuer(Protocol):
    """What the node API needs from :class:`ca.service.CaService`."""

    def get_bundle(self) -> Bundle: ...
    def mint_x509_svids(self, requests: Sequence[X509SvidRequest]) -> list[IssuedX509Svid]: ...
    def mint_jwt_svid(self, request: JwtSvidRequest) -> tuple[str, datetime]: ...


class AuthoritySource(Protocol):
    def get_current(self) -> AuthoritySet: ...


@dataclass(frozen=True, slots=True)
class AgentSvid:
    """An agent's new X509-SVID and the bundle to verify the CA with."""

    spiffe_id: SpiffeId
    cert_chain: tuple[x509.Certificate, ...]
    bundle: Bundle


@dataclass(frozen=True, slots=True)
class AuthenticatedAgent:
    spiffe_id: SpiffeId
    # When the presented SVID expires: a stream authenticated by it must end then.
    not_after: datetime
    # The presented SVID's serial: a stream authenticated by it ends once the CA no longer accepts it.
    serial: int


@dataclass(frozen=True, slots=True)
class SyncState:
    """Everything one agent must hold; equal states mean there is nothing new to send."""

    bundle: Bundle
    entries: tuple[RegistrationEntry, ...]
    tainted_authority_ids: tuple[str, ...]
    revoked_serials: frozenset[int] = frozenset()
    crls: tuple[bytes, ...] = ()
    # Only the partners the agent's entries federate with, each its own bundle (never merged).
    federated_bundles: Mapping[TrustDomain, Bundle] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SignedOrRefused:
    """The outcome of one item of a batch: a signed SVID, or why this item was refused."""

    entry_id: str
    svid: IssuedX509Svid | None = None
    error: str = ""


class NodeService:
    def __init__(
        self,
        *,
        database: Database,
        issuer: Issuer,
        authorities: AuthoritySource,
        entries: RegistrationEntries,
        attestors: NodeAttestors,
        agent_svid_ttl: timedelta,
        clock: Clock,
        hub: ChangeHub | None = None,
        renewal_overlap: timedelta = RENEWAL_OVERLAP,
    ) -> None:
        self._database = database
        self._issuer = issuer
        self._authorities = authorities
        self._entries = entries
        self._attestors = attestors
        self._agent_svid_ttl = agent_svid_ttl
        self._clock = clock
        self._hub = hub
        self._renewal_overlap = renewal_overlap

    def attest(self, method: str, payload: bytes, csr: bytes) -> AgentSvid:
        """Check the node's evidence with the named attestor and sign its first agent X509-SVID.

        The CSR is checked before the evidence is spent, so a malformed CSR does not burn a join token.
        Raises InvalidArgument (unknown method, bad CSR) and NotAuthorized (evidence refused, banned)."""
        attestor = self._attestors.get(method)
        load_csr_public_key(csr)
        agent_id = attestor.attest(payload, self._clock.now())
        return self._issue_agent_svid(agent_id, method, csr)

    def renew(self, agent: SpiffeId, csr: bytes) -> AgentSvid:
        """A fresh agent X509-SVID for the same ID and a new key; refused (NotAuthorized) once banned."""
        with self._database.transaction() as session:
            method = self._active_agent(AgentRepository(session), agent).attestation_type
        return self._issue_agent_svid(agent, method, csr, renewal=True)

    def check_trust_domain(self, claimed: str) -> None:
        """Refuse (InvalidArgument) an agent that says it is configured for another trust domain, before
        its evidence is looked at, so a misconfigured agent does not spend its join token. An empty
        claim (an agent older than this check) passes: the agent ID it gets tells it then."""
        served = self._authorities.get_current().bundle.trust_domain
        if claimed and claimed != served.name:
            shown = claimed if len(claimed) <= 255 else claimed[:255] + "..."
            raise InvalidArgument(
                f"the agent is configured for trust domain {shown!r} but this CA serves {served.name!r}; "
                f"set trust_domain = {served.name!r} in the agent's configuration (the join token was not used)"
            )

    def authenticate(self, peer_chain_pem: bytes | None) -> AuthenticatedAgent:
        """The agent behind a TLS client certificate chain (PEM, leaf first).

        NotAuthenticated when there is no certificate or it is not a valid X509-SVID of this trust
        domain now (expired, wrong signer); NotAuthorized when it is valid but not a known, unbanned
        agent (a workload's SVID, a forgotten or banned agent) or no longer the agent's SVID (replaced by a
        renewal more than :data:`RENEWAL_OVERLAP` ago, or by a re-attestation)."""
        if not peer_chain_pem:
            raise NotAuthenticated(
                "no client certificate; call the node API over mTLS with the agent's X509-SVID "
                "(get one with Attest on the attestation listener)"
            )
        now = self._clock.now()
        bundle = self._authorities.get_current().bundle
        try:
            chain = load_pem_certificates(peer_chain_pem)
            spiffe_id, _ = verify_x509_svid(chain, bundle, now)
        except X509SvidError as err:
            raise NotAuthenticated(
                f"client certificate is not a valid X509-SVID of {bundle.trust_domain}: {err}"
            ) from err
        if not is_agent_id(spiffe_id, bundle.trust_domain):
            raise NotAuthorized(
                f"{spiffe_id} is not an agent ID; the node API serves only agents "
                f"({bundle.trust_domain.id}/trustmesh/agent/...)"
            )
        serial = chain[0].serial_number
        with self._database.transaction() as session:
            self._current_svid(self._active_agent(AgentRepository(session), spiffe_id), serial, now)
        return AuthenticatedAgent(spiffe_id, chain[0].not_valid_after_utc, serial)

    def get_sync_state(self, agent: SpiffeId, serial: int | None = None) -> SyncState:
        """The bundle, the entries parented directly to ``agent`` and the tainted authorities.
        Raises NotAuthorized once the agent is banned or evicted, or (given the ``serial`` of the SVID
        the stream was opened with) once that SVID was replaced, which ends its stream."""
        authorities = self._authorities.get_current()
        with self._database.transaction() as session:
            record = self._active_agent(AgentRepository(session), agent)
            if serial is not None:
                self._current_svid(record, serial, self._clock.now())
            entries = RegistrationEntryRepository(session).list(parent_id=agent)
            wanted = {td for entry in entries for td in entry.spec.federates_with}
            partners = FederationRepository(session).list() if wanted else ()
        federated = {
            r.trust_domain: bundle for r in partners if r.trust_domain in wanted and (bundle := parsed_bundle(r))
        }
        return SyncState(
            authorities.bundle,
            entries,
            authorities.tainted_ids(),
            authorities.revoked_serials,
            authorities.crls,
            federated,
        )

    def get_federated_bundle(self, agent: SpiffeId, trust_domain: TrustDomain) -> Bundle | None:
        """The bundle of ``trust_domain`` the CA holds (None before a first good fetch), for an agent
        with an entry that federates with it — the bundle its Sync state carries. Raises NotAuthorized
        for any other trust domain: an agent learns only about partners its workloads trust."""
        with self._database.transaction() as session:
            entries = RegistrationEntryRepository(session).list(parent_id=agent)
            if not any(trust_domain in entry.spec.federates_with for entry in entries):
                raise NotAuthorized(
                    f"no registration entry parented to {agent} federates with {trust_domain}; add "
                    f"--federates-with {trust_domain} to the entries that must trust it"
                )
            try:
                relationship = FederationRepository(session).get(trust_domain)
            except NotFound:
                return None
        return parsed_bundle(relationship)

    def sign_x509_svids(self, agent: SpiffeId, items: Sequence[tuple[str, bytes]]) -> list[SignedOrRefused]:
        """Sign ``(entry_id, csr)`` items for the entries parented to ``agent``, in order.

        Items for other entries are refused one by one ("entry X is not parented to <agent>"); the
        authorized ones are signed in one batch. A batch refused for one bad item (a broken CSR, a TTL
        the configuration no longer allows) is retried item by item, so only that item fails."""
        entitled = entitled_by_id(self._entries.list(parent_id=agent))
        outcomes: list[SignedOrRefused] = []
        authorized: list[tuple[int, X509SvidRequest]] = []
        for entry_id, csr in items:
            try:
                entry = authorize(entry_id, entitled, agent)
            except NotAuthorized as err:
                outcomes.append(SignedOrRefused(entry_id, error=str(err)))
                continue
            spec = entry.spec
            authorized.append((len(outcomes), X509SvidRequest(csr, spec.spiffe_id, spec.dns_names, spec.x509_ttl)))
            outcomes.append(SignedOrRefused(entry_id))
        if not authorized:
            return outcomes
        try:
            issued = self._issuer.mint_x509_svids([request for _, request in authorized])
        except InvalidArgument:
            issued = None
        for position, (index, request) in enumerate(authorized):
            if issued is not None:
                outcomes[index] = SignedOrRefused(outcomes[index].entry_id, svid=issued[position])
                continue
            try:
                (svid,) = self._issuer.mint_x509_svids([request])
            except InvalidArgument as err:
                outcomes[index] = SignedOrRefused(outcomes[index].entry_id, error=str(err))
            else:
                outcomes[index] = SignedOrRefused(outcomes[index].entry_id, svid=svid)
        return outcomes

    def mint_jwt_svid(self, agent: SpiffeId, entry_id: str, audience: Sequence[str]) -> tuple[str, datetime]:
        """A JWT-SVID for an entry parented to ``agent``, with the entry's TTL. Raises NotAuthorized
        for another agent's (or no) entry, InvalidArgument for an audience
        :func:`~spiffe_core.jwt_svid.check_audience` refuses (checked before the entry is looked up)."""
        audience = check_audience(audience)
        entry = self._entries.get_for_agent(agent, entry_id)
        return self._issuer.mint_jwt_svid(JwtSvidRequest(entry.spec.spiffe_id, tuple(audience), entry.spec.jwt_ttl))

    def _issue_agent_svid(self, agent: SpiffeId, method: str, csr: bytes, *, renewal: bool = False) -> AgentSvid:
        """Sign and record the agent's new SVID. A renewal keeps the replaced one valid for the overlap;
        an attestation does not (a node that attests again, or a replacement node, cuts off the old
        SVID at once). Streams opened with a replaced SVID reload and end."""
        (issued,) = self._issuer.mint_x509_svids([X509SvidRequest(csr, agent, ttl=self._agent_svid_ttl)])
        now = self._clock.now()
        with self._database.transaction() as session:
            AgentRepository(session).upsert(
                agent,
                method,
                issued.serial,
                issued.not_after,
                now,
                previous_valid_until=now + self._renewal_overlap if renewal else None,
            )
            if self._hub is not None:
                announce(session, self._hub, Change.for_agents(agent))
        return AgentSvid(agent, issued.cert_chain, self._authorities.get_current().bundle)

    @staticmethod
    def _active_agent(agents: AgentRepository, agent: SpiffeId) -> Agent:
        try:
            record = agents.get(agent)
        except NotFound as err:
            raise NotAuthorized(f"agent {agent} is not known to this CA; attest the node again") from err
        if record.banned:
            raise NotAuthorized(f"agent {agent} is banned; an operator must lift the ban")
        return record

    @staticmethod
    def _current_svid(record: Agent, serial: int, now: datetime) -> None:
        if not record.accepts_serial(serial, now):
            raise NotAuthorized(
                f"the X509-SVID with serial {serial:x} is no longer the SVID of agent {record.spiffe_id} "
                "(it was renewed, or the node attested again); "
                "use the agent's current SVID, or attest this node again with a new join token"
            )
