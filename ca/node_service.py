"""The node API's use cases (DESIGN §3 "Node attestation", "Registration entries"; wire/node.proto):
attest an agent, authenticate it by its X509-SVID, renew its SVID, compute what it must hold, and sign
workload SVIDs for the entries parented to it.

The gRPC servicer (:mod:`ca.node_api`) only decodes, calls one method here (in a worker thread: these
read the datastore and sign) and encodes. Identity always comes from the caller's verified client
certificate, never from a request field.

Everything here is audited (issue 8): attestations that succeed (in the transaction that records the
agent's SVID) and fail, renewals, one record per SignX509Svids batch (the SPIFFE IDs, bounded, and the
entries refused), JWT-SVIDs, and refused node API calls. Refusals name as actor the agent's SPIFFE ID,
or ``attestation:<address>`` before a node is attested, and are throttled per actor
(:class:`~ca.audit.AuditTrail`), so a caller retrying a refused call cannot flood the log.

An agent's X509-SVID authenticates only while it is the one the CA last issued to that agent — or,
for :data:`RENEWAL_OVERLAP` after a renewal, the one it replaced, so calls in flight on the agent's
old channel finish. An SVID replaced by renewal or re-attestation, or of an evicted or banned agent,
stops working; its open Sync streams end at once (every issuance announces a change for the agent).

Per call, a known agent costs no chain verification and no datastore read before signing: verified
chains, agents' records and the entries parented to each agent are kept between calls
(:mod:`ca.node_cache`), dropped by the same change feed that drives Sync the moment a change commits,
and the serial check is evaluated on every call. The agent's last contact (and reported version) is
written at most once a :data:`CONTACT_INTERVAL` per agent, decided in memory, so the only transaction of
most SignX509Svids calls is the one that records what it signed and its audit record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from cryptography import x509

from ca.attestation import NodeAttestors
from ca.audit import AuditTrail, Issuance, listed, refusal_event
from ca.authority import AuthoritySet
from ca.entries import RegistrationEntries, authorize, entitled_by_id, is_agent_id
from ca.federation.relationships import parsed_bundle
from ca.issuance import IssuedX509Svid, JwtSvidRequest, X509SvidRequest, load_csr_public_key
from ca.metrics import CaMetrics, method_label, reason_label
from ca.node_cache import (
    MAX_AGENTS,
    MAX_ENTRIES,
    AgentStateCache,
    ContactNotes,
    VerifiedChains,
    VerifiedPeer,
)
from ca.store.engine import Database
from ca.store.records import Actor, Agent, RegistrationEntry
from ca.store.repositories import AgentRepository, FederationRepository, RegistrationEntryRepository
from ca.sync import Change, ChangeHub, announce
from spiffe_core.bundle import Bundle
from spiffe_core.clock import Clock
from spiffe_core.errors import (
    InvalidArgument,
    NotAuthenticated,
    NotAuthorized,
    NotFound,
    TrustmeshError,
    X509SvidError,
)
from spiffe_core.jwt_svid import check_audience
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import load_pem_certificates, verify_x509_svid

# How long the SVID a renewal replaced still authenticates: the agent moves to a new channel at once
# and gives unary calls on the old one 5 s to finish.
RENEWAL_OVERLAP = timedelta(seconds=30)
# How an agent is authenticated on the node API, as the audit log names it.
NODE_API = "node-api"
# Caller-chosen text (an attestation method, an entry ID) is cut to this many characters in a record.
SHOWN_LENGTH = 128
# An agent's calls update when it was last seen (the inventory's "last seen") at most this often.
CONTACT_INTERVAL = timedelta(minutes=1)


# The most X509-SVIDs sign_x509_svids_now signs on the event loop (~0.4 ms each): a larger batch goes
# to a worker thread, so the loop's other callers never wait long behind one.
ITEMS_SIGNED_NOW = 4


def agent_actor(agent: SpiffeId) -> Actor:
    """The audit log's actor for a call by an authenticated agent."""
    return Actor(str(agent), NODE_API)


def attestation_actor(source: str) -> Actor:
    """The audit log's actor for a node that is not attested yet: the address it called from."""
    return Actor(f"attestation:{source or 'unknown'}", "attestation")


def _found(agents: AgentRepository, agent: SpiffeId) -> Agent | None:
    try:
        return agents.get(agent)
    except NotFound:
        return None


def _svid_request(entry: RegistrationEntry, csr: bytes) -> X509SvidRequest:
    """The X509-SVID request an agent's CSR makes for ``entry``: identity, DNS names and TTL from the
    entry, only the key from the CSR."""
    spec = entry.spec
    return X509SvidRequest(csr, spec.spiffe_id, spec.dns_names, spec.x509_ttl)


def _shown(text: str) -> str:
    return text if len(text) <= SHOWN_LENGTH else text[: SHOWN_LENGTH - 1] + "…"


class Issuer(Protocol):
    """What the node API needs from :class:`ca.service.CaService`."""

    def get_bundle(self) -> Bundle: ...
    def mint_x509_svids(self, requests: Sequence[X509SvidRequest], issuance: Issuance) -> list[IssuedX509Svid]: ...
    def mint_x509_svids_each(
        self, requests: Sequence[X509SvidRequest], issuance: Issuance
    ) -> list[IssuedX509Svid | InvalidArgument]: ...
    def mint_x509_svids_now(
        self, requests: Sequence[X509SvidRequest], issuance: Issuance
    ) -> list[IssuedX509Svid | InvalidArgument] | None: ...
    def mint_jwt_svid(self, request: JwtSvidRequest, actor: Actor) -> tuple[str, datetime]: ...


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
    # [bridge] legacy_roots: name -> PEM of enterprise roots, the same for every agent.
    legacy_roots: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SignedOrRefused:
    """The outcome of one item of a batch: a signed SVID, or why this item was refused."""

    entry_id: str
    svid: IssuedX509Svid | None = None
    error: str = ""


def _signed_or_refused(entry_id: str, result: IssuedX509Svid | InvalidArgument) -> SignedOrRefused:
    if isinstance(result, InvalidArgument):
        return SignedOrRefused(entry_id, error=str(result))
    return SignedOrRefused(entry_id, svid=result)


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
        audit: AuditTrail | None = None,
        legacy_roots: Callable[[], Mapping[str, bytes]] = dict,
        metrics: CaMetrics | None = None,
        monotonic: Callable[[], float] = time.monotonic,
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
        self._audit = audit or AuditTrail(database)
        self._legacy_roots = legacy_roots  # ca.legacy_roots.LegacyRootFiles.get_roots; none by default
        self._metrics = metrics or CaMetrics()
        # Per-call state kept between calls (ca.node_cache); only with a change feed to keep it exact.
        self._chains = VerifiedChains()
        self._contacts = ContactNotes(CONTACT_INTERVAL)
        self._records: AgentStateCache[Agent | None] | None = None
        self._entitled: AgentStateCache[Mapping[str, RegistrationEntry]] | None = None
        if hub is not None:
            self._records = AgentStateCache(
                self._load_record, max_weight=MAX_AGENTS, complete=hub.is_complete, monotonic=monotonic
            )
            self._entitled = AgentStateCache(
                self._load_entitled,
                max_weight=MAX_ENTRIES,
                weight=lambda e: max(1, len(e)),
                complete=hub.is_complete,
                monotonic=monotonic,
            )
            hub.add_listener(self._records.invalidate)
            hub.add_listener(self._entitled.invalidate)

    def attest(
        self, method: str, payload: bytes, csr: bytes, *, source: str = "", trust_domain: str = "", version: str = ""
    ) -> AgentSvid:
        """Check the node's evidence with the named attestor and sign its first agent X509-SVID.

        ``source`` is the address the node called from (the audit log's actor), ``trust_domain`` the one
        the agent says it is configured for, ``version`` the one it reports (the inventory shows it). The
        trust domain and the CSR are checked before the evidence is spent, so a misconfigured agent or a
        malformed CSR does not burn a join token. Raises
        InvalidArgument (unknown method, bad CSR, another trust domain) and NotAuthorized (evidence
        refused, banned); either is audited."""
        now = self._clock.now()
        try:
            self._check_trust_domain(trust_domain)
            attestor = self._attestors.get(method)
            load_csr_public_key(csr)
            agent_id = attestor.attest(payload, now)
        except TrustmeshError as err:
            self.refuse_attestation(source, method, err)
            raise
        issuance = Issuance(attestation_actor(source), "agent.attest", detail={"method": method}, agent=agent_id)
        try:
            svid = self._issue_agent_svid(agent_id, method, csr, issuance, version=version)
        except TrustmeshError as err:  # audited as a refused issuance by the issuer
            self._metrics.attestation_failures.labels(self._method_label(method), reason_label(err)).inc()
            raise
        self._metrics.attestations.labels(self._method_label(method)).inc()
        return svid

    def challenge(self, method: str, payload: bytes, *, source: str = "", trust_domain: str = "") -> bytes:
        """Step 1 of a challenge-response method (x509pop): check the node's evidence and return the
        challenge its ``Attest`` must answer. The trust domain is checked first, as in :meth:`attest`.
        Refusals (InvalidArgument, NotAuthorized saying which check failed) are audited as failed
        attestations; success is audited when the answered ``Attest`` issues the agent's SVID."""
        try:
            self._check_trust_domain(trust_domain)
            return self._attestors.challenger(method).challenge(payload, self._clock.now())
        except TrustmeshError as err:
            self.refuse_attestation(source, method, err)
            raise

    def refuse_attestation(self, source: str, method: str, err: TrustmeshError) -> None:
        """Audit an attestation from ``source`` that ``err`` refused (throttled per source): here, or at
        the edge before it got here (over the attestation rate of its address)."""
        self._metrics.attestation_failures.labels(self._method_label(method), reason_label(err)).inc()
        shown = _shown(method)
        self._audit.record_refusal(
            refusal_event(
                self._clock.now(), attestation_actor(source), "agent.attest", shown, err, detail={"method": shown}
            )
        )

    def _method_label(self, method: str) -> str:
        return method_label(method, self._attestors.by_method.keys())

    def renew(self, agent: SpiffeId, csr: bytes, version: str = "") -> AgentSvid:
        """A fresh agent X509-SVID for the same ID and a new key; refused (NotAuthorized) once banned."""
        method = self._active_agent(agent, self._load_record(agent)).attestation_type
        issuance = Issuance(agent_actor(agent), "agent.renew", agent=agent)
        return self._issue_agent_svid(agent, method, csr, issuance, renewal=True, version=version)

    def _check_trust_domain(self, claimed: str) -> None:
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

    def authenticate(self, peer_chain_pem: bytes | None, source: str = "", version: str = "") -> AuthenticatedAgent:
        """The agent behind a TLS client certificate chain (PEM, leaf first), calling from ``source`` and
        reporting ``version``; the call is noted as the agent's last contact (at most once a
        :data:`CONTACT_INTERVAL`).

        NotAuthenticated when there is no certificate or it is not a valid X509-SVID of this trust
        domain now (expired, wrong signer); NotAuthorized when it is valid but not a known, unbanned
        agent (a workload's SVID, a forgotten or banned agent) or no longer the agent's SVID (replaced by a
        renewal more than :data:`RENEWAL_OVERLAP` ago, or by a re-attestation). Refusals are audited.

        A chain verified before against the same bundle, and the agent's record, come from
        :mod:`ca.node_cache` when they can; the serial check runs on every call."""
        now = self._clock.now()
        bundle = self._authorities.get_current().bundle
        try:
            peer = self._verified_peer(peer_chain_pem, bundle, now)
        except NotAuthenticated as err:
            caller = Actor(f"node-api:{source or 'unknown'}", "unauthenticated")
            self._audit.record_refusal(refusal_event(now, caller, "agent.authenticate", "node API", err))
            raise
        try:
            if not is_agent_id(peer.spiffe_id, bundle.trust_domain):
                raise NotAuthorized(
                    f"{peer.spiffe_id} is not an agent ID; the node API serves only agents "
                    f"({bundle.trust_domain.id}/trustmesh/agent/...)"
                )
            self._current_svid(self._active_agent(peer.spiffe_id, self._record(peer.spiffe_id)), peer.serial, now)
        except NotAuthorized as err:
            event = refusal_event(
                now,
                agent_actor(peer.spiffe_id),
                "agent.authenticate",
                str(peer.spiffe_id),
                err,
                detail={"serial": format(peer.serial, "x")},
            )
            self._audit.record_refusal(event)
            raise
        self._note_contact(peer.spiffe_id, now, version)
        return AuthenticatedAgent(peer.spiffe_id, peer.not_after, peer.serial)

    def authenticate_held(self, peer_chain_pem: bytes | None, version: str = "") -> AuthenticatedAgent | None:
        """What :meth:`authenticate` answers, when everything it needs is in memory (a chain verified
        against the current bundle, the agent's fresh record) and it accepts the caller, and the agent's
        contact needs no recording yet (noted less than :data:`CONTACT_INTERVAL` ago, with this
        ``version``); None otherwise (call :meth:`authenticate`, which reads, verifies, records the
        contact and audits refusals). Never blocks: the node API asks here on its event loop before it
        hands a call to a worker thread."""
        if not peer_chain_pem or self._records is None:
            return None
        now = self._clock.now()
        bundle = self._authorities.get_current().bundle
        peer = self._chains.get(peer_chain_pem, bundle, now)
        if peer is None or not is_agent_id(peer.spiffe_id, bundle.trust_domain):
            return None
        held = self._records.held(peer.spiffe_id)
        record = None if held is None else held.value
        if record is None or record.banned or not record.accepts_serial(peer.serial, now):
            return None
        if self._contacts.due(peer.spiffe_id, now, version):
            return None
        return AuthenticatedAgent(peer.spiffe_id, peer.not_after, peer.serial)

    def _note_contact(self, agent: SpiffeId, now: datetime, version: str) -> None:
        """Record the agent's call as its last contact (and ``version``), once a :data:`CONTACT_INTERVAL`
        or when the version changes: the notes in memory decide, so most calls write nothing. A failed
        write forgets the note, so the next call tries again."""
        if not self._contacts.claim(agent, now, version):
            return
        try:
            with self._database.transaction() as session:
                AgentRepository(session).record_contact(agent, now, version, CONTACT_INTERVAL)
        except BaseException:
            self._contacts.forget(agent)
            raise

    def _verified_peer(self, peer_chain_pem: bytes | None, bundle: Bundle, now: datetime) -> VerifiedPeer:
        if not peer_chain_pem:
            raise NotAuthenticated(
                "no client certificate; call the node API over mTLS with the agent's X509-SVID "
                "(get one with Attest on the attestation listener)"
            )
        known = self._chains.get(peer_chain_pem, bundle, now)
        if known is not None:
            return known
        try:
            chain = load_pem_certificates(peer_chain_pem)
            spiffe_id, path = verify_x509_svid(chain, bundle, now)
        except X509SvidError as err:
            raise NotAuthenticated(
                f"client certificate is not a valid X509-SVID of {bundle.trust_domain}: {err}"
            ) from err
        peer = VerifiedPeer(
            spiffe_id,
            chain[0].serial_number,
            chain[0].not_valid_after_utc,
            max(cert.not_valid_before_utc for cert in path),
            min(cert.not_valid_after_utc for cert in path),
        )
        self._chains.put(peer_chain_pem, bundle, peer)
        return peer

    def _record(self, agent: SpiffeId) -> Agent | None:
        """The agent's record (None: unknown), from the cache when there is a change feed."""
        return self._load_record(agent) if self._records is None else self._records.get(agent)

    def _load_record(self, agent: SpiffeId) -> Agent | None:
        with self._database.transaction() as session:
            try:
                return AgentRepository(session).get(agent)
            except NotFound:
                return None

    def _entitlements(self, agent: SpiffeId) -> Mapping[str, RegistrationEntry]:
        """The entries parented to ``agent``, by ID, from the cache when there is a change feed."""
        return self._load_entitled(agent) if self._entitled is None else self._entitled.get(agent)

    def _load_entitled(self, agent: SpiffeId) -> Mapping[str, RegistrationEntry]:
        return entitled_by_id(self._entries.list(parent_id=agent))

    def get_sync_state(self, agent: SpiffeId, serial: int | None = None) -> SyncState:
        """The bundle, the entries parented directly to ``agent``, the tainted authorities, revocations,
        the bundles of the partners its entries federate with, and the legacy roots.
        Raises NotAuthorized once the agent is banned or evicted, or (given the ``serial`` of the SVID
        the stream was opened with) once that SVID was replaced, which ends its stream."""
        authorities = self._authorities.get_current()
        with self._database.transaction() as session:
            record = self._active_agent(agent, _found(AgentRepository(session), agent))
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
            self._legacy_roots(),
        )

    def get_federated_bundle(self, agent: SpiffeId, trust_domain: TrustDomain) -> Bundle | None:
        """The bundle of ``trust_domain`` the CA holds (None before a first good fetch), for an agent
        with an entry that federates with it — the bundle its Sync state carries. Raises NotAuthorized
        for any other trust domain (audited): an agent learns only about partners its workloads trust."""
        with self._database.transaction() as session:
            entries = RegistrationEntryRepository(session).list(parent_id=agent)
            federates = any(trust_domain in entry.spec.federates_with for entry in entries)
        if not federates:
            err = NotAuthorized(
                f"no registration entry parented to {agent} federates with {trust_domain}; add "
                f"--federates-with {trust_domain} to the entries that must trust it"
            )
            action, caller = "federation.bundle_refresh", agent_actor(agent)
            self._audit.record_refusal(refusal_event(self._clock.now(), caller, action, trust_domain.name, err))
            raise err
        with self._database.transaction() as session:
            try:
                relationship = FederationRepository(session).get(trust_domain)
            except NotFound:
                return None
        return parsed_bundle(relationship)

    def sign_x509_svids(self, agent: SpiffeId, items: Sequence[tuple[str, bytes]]) -> list[SignedOrRefused]:
        """Sign ``(entry_id, csr)`` items for the entries parented to ``agent``, in order.

        Items for other entries are refused one by one ("entry X is not parented to <agent>"), and so
        is an item the CA cannot sign (a broken CSR, a TTL the configuration no longer allows); the
        others are signed and recorded together, with one audit record for the batch that also names
        the refused entries. A batch of which nothing could be signed is audited as refused."""
        actor = agent_actor(agent)
        entitled = self._entitlements(agent)
        outcomes: list[SignedOrRefused] = []
        authorized: list[tuple[int, X509SvidRequest]] = []
        not_parented: list[NotAuthorized] = []
        for entry_id, csr in items:
            try:
                entry = authorize(entry_id, entitled, agent)
            except NotAuthorized as err:
                outcomes.append(SignedOrRefused(entry_id, error=str(err)))
                not_parented.append(err)
                continue
            authorized.append((len(outcomes), _svid_request(entry, csr)))
            outcomes.append(SignedOrRefused(entry_id))
        if not_parented:
            self._metrics.issuance_errors.labels("x509", reason_label(not_parented[0])).inc(len(not_parented))
        refused_ids = [_shown(o.entry_id) for o in outcomes if o.error]
        detail = {"refused": len(refused_ids), **listed("refused_entries", refused_ids)} if refused_ids else {}
        if not authorized:
            if not_parented:
                event = refusal_event(
                    self._clock.now(),
                    actor,
                    "x509_svid.issue",
                    f"{len(items)} X509-SVIDs",
                    not_parented[0],
                    detail=detail,
                )
                self._audit.record_refusal(event)
            return outcomes
        signed = self._issuer.mint_x509_svids_each(
            [request for _, request in authorized], Issuance(actor, "x509_svid.issue", detail=detail, agent=agent)
        )
        for (index, _), result in zip(authorized, signed, strict=True):
            outcomes[index] = _signed_or_refused(outcomes[index].entry_id, result)
        return outcomes

    def sign_x509_svids_now(self, agent: SpiffeId, items: Sequence[tuple[str, bytes]]) -> list[SignedOrRefused] | None:
        """What :meth:`sign_x509_svids` answers, done here only if nothing in it waits, for the node
        API's event loop: 1 to :data:`ITEMS_SIGNED_NOW` items (the loop's other callers wait while it
        signs), every one for an entry held in memory as parented to ``agent``, and
        :meth:`CaService.mint_x509_svids_now` signs and records them at once (a broken CSR among them
        is refused in its place). None, with nothing done, otherwise: call :meth:`sign_x509_svids` on
        a worker thread."""
        if not 0 < len(items) <= ITEMS_SIGNED_NOW or self._entitled is None:
            return None
        held = self._entitled.held(agent)
        if held is None:
            return None
        requests = []
        for entry_id, csr in items:
            try:
                entry = authorize(entry_id, held.value, agent)
            except NotAuthorized:
                return None  # sign_x509_svids refuses it and audits that
            requests.append(_svid_request(entry, csr))
        issuance = Issuance(agent_actor(agent), "x509_svid.issue", agent=agent)
        signed = self._issuer.mint_x509_svids_now(requests, issuance)
        if signed is None:
            return None
        return [_signed_or_refused(entry_id, result) for (entry_id, _), result in zip(items, signed, strict=True)]

    def mint_jwt_svid(self, agent: SpiffeId, entry_id: str, audience: Sequence[str]) -> tuple[str, datetime]:
        """A JWT-SVID for an entry parented to ``agent``, with the entry's TTL. Raises NotAuthorized
        for another agent's (or no) entry, InvalidArgument for an audience
        :func:`~spiffe_core.jwt_svid.check_audience` refuses (checked before the entry is looked up);
        both are audited."""
        try:
            audience = check_audience(audience)
            entry = authorize(entry_id, self._entitlements(agent), agent)
        except (InvalidArgument, NotAuthorized) as err:
            self._metrics.issuance_errors.labels("jwt", reason_label(err)).inc()
            target = f"entry {_shown(entry_id)}"
            self._audit.record_refusal(
                refusal_event(self._clock.now(), agent_actor(agent), "jwt_svid.issue", target, err)
            )
            raise
        request = JwtSvidRequest(entry.spec.spiffe_id, tuple(audience), entry.spec.jwt_ttl)
        return self._issuer.mint_jwt_svid(request, agent_actor(agent))

    def _issue_agent_svid(
        self, agent: SpiffeId, method: str, csr: bytes, issuance: Issuance, *, renewal: bool = False, version: str = ""
    ) -> AgentSvid:
        """Sign and record the agent's new SVID (audited as ``issuance``). A renewal keeps the replaced
        one valid for the overlap; an attestation does not (a node that attests again, or a replacement
        node, cuts off the old SVID at once). Streams opened with a replaced SVID reload and end."""
        (issued,) = self._issuer.mint_x509_svids([X509SvidRequest(csr, agent, ttl=self._agent_svid_ttl)], issuance)
        now = self._clock.now()
        with self._database.transaction() as session:
            AgentRepository(session).upsert(
                agent,
                method,
                issued.serial,
                issued.not_after,
                now,
                previous_valid_until=now + self._renewal_overlap if renewal else None,
                version=version,
            )
            if self._hub is not None:
                announce(session, self._hub, Change.for_agents(agent))
        self._contacts.noted(agent, now, version)  # the upsert recorded the contact
        return AgentSvid(agent, issued.cert_chain, self._authorities.get_current().bundle)

    @staticmethod
    def _active_agent(agent: SpiffeId, record: Agent | None) -> Agent:
        if record is None:
            raise NotAuthorized(f"agent {agent} is not known to this CA; attest the node again")
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
