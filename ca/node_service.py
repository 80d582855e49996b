"""The node API's use cases (DESIGN §3 "Node attestation", "Registration entries"; wire/node.proto):
attest an agent, authenticate it by its X509-SVID, renew its SVID, compute what it must hold, and sign
workload SVIDs for the entries parented to it.

The gRPC servicer (:mod:`ca.node_api`) only decodes, calls one method here (in a worker thread: these
read the datastore and sign) and encodes. Identity always comes from the caller's verified client
certificate, never from a request field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from cryptography import x509

from ca.attestation import NodeAttestors
from ca.authority import AuthoritySet
from ca.entries import RegistrationEntries, authorize, entitled_by_id, is_agent_id
from ca.issuance import IssuedX509Svid, JwtSvidRequest, X509SvidRequest, load_csr_public_key
from ca.store.engine import Database
from ca.store.records import Agent, RegistrationEntry
from ca.store.repositories import AgentRepository, RegistrationEntryRepository
from spiffe_core.bundle import Bundle
from spiffe_core.clock import Clock
from spiffe_core.errors import InvalidArgument, NotAuthenticated, NotAuthorized, NotFound, X509SvidError
from spiffe_core.jwt_svid import check_audience
from spiffe_core.spiffe_id import SpiffeId
from spiffe_core.x509_svid import load_pem_certificates, verify_x509_svid


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


@dataclass(frozen=True, slots=True)
class SyncState:
    """Everything one agent must hold; equal states mean there is nothing new to send."""

    bundle: Bundle
    entries: tuple[RegistrationEntry, ...]
    tainted_authority_ids: tuple[str, ...]
    revoked_serials: frozenset[int] = frozenset()
    crls: tuple[bytes, ...] = ()


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
    ) -> None:
        self._database = database
        self._issuer = issuer
        self._authorities = authorities
        self._entries = entries
        self._attestors = attestors
        self._agent_svid_ttl = agent_svid_ttl
        self._clock = clock

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
        return self._issue_agent_svid(agent, method, csr)

    def authenticate(self, peer_chain_pem: bytes | None) -> AuthenticatedAgent:
        """The agent behind a TLS client certificate chain (PEM, leaf first).

        NotAuthenticated when there is no certificate or it is not a valid X509-SVID of this trust
        domain now (expired, wrong signer); NotAuthorized when it is valid but not a known, unbanned
        agent (a workload's SVID, a forgotten or banned agent)."""
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
        with self._database.transaction() as session:
            self._active_agent(AgentRepository(session), spiffe_id)
        return AuthenticatedAgent(spiffe_id, chain[0].not_valid_after_utc)

    def get_sync_state(self, agent: SpiffeId) -> SyncState:
        """The bundle, the entries parented directly to ``agent`` and the tainted authorities.
        Raises NotAuthorized once the agent is banned, which ends its stream."""
        authorities = self._authorities.get_current()
        with self._database.transaction() as session:
            self._active_agent(AgentRepository(session), agent)
            entries = RegistrationEntryRepository(session).list(parent_id=agent)
        return SyncState(
            authorities.bundle, entries, authorities.tainted_ids(), authorities.revoked_serials, authorities.crls
        )

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

    def _issue_agent_svid(self, agent: SpiffeId, method: str, csr: bytes) -> AgentSvid:
        (issued,) = self._issuer.mint_x509_svids([X509SvidRequest(csr, agent, ttl=self._agent_svid_ttl)])
        with self._database.transaction() as session:
            AgentRepository(session).upsert(agent, method, issued.serial, issued.not_after, self._clock.now())
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
