"""Node attestation on the CA side (DESIGN §3 "Node attestation"): how a node proves who it is and
which agent SPIFFE ID it gets — ``spiffe://<td>/trustmesh/agent/<method>/<id>``.

Attestors are looked up by method name (:class:`NodeAttestors`), so ``jwt`` and ``x509pop`` (the
latter from bridge/, loaded by name) plug in next to ``join_token`` without touching the node API.

Join tokens: 32 random bytes (URL-safe base64), shown once when generated; the datastore keeps only
their SHA-256 and the agent ID they will attest as. A token is consumed atomically, once; an unknown,
used or expired token gets one message that does not say which.

One node name, one agent: a token for the ID of an agent that is attested (its SVID has not expired)
is refused unless the operator asks to replace it; the replacement happens when the new node attests
(its attestation records a new SVID, and the old agent's SVID stops authenticating at once).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from ca.store.engine import Database
from ca.store.records import Actor, AuditEvent
from ca.store.repositories import AgentRepository, AuditLogRepository, JoinTokenRepository
from ca.store.repositories.join_tokens import hash_join_token
from spiffe_core.clock import Clock
from spiffe_core.errors import AlreadyExists, InvalidArgument, NotAuthorized, NotFound
from spiffe_core.spiffe_id import SpiffeId, TrustDomain

JOIN_TOKEN = "join_token"  # noqa: S105 - the method name, not a secret
JOIN_TOKEN_BYTES = 32
# Join tokens are for bootstrapping a node now, not for leaving lying around.
MAX_JOIN_TOKEN_TTL = timedelta(days=30)
_REFUSED = "join token unknown, used or expired; ask an operator for a new join token"


def agent_id_for(trust_domain: TrustDomain, method: str, node_id: str) -> SpiffeId:
    """``spiffe://<td>/trustmesh/agent/<method>/<node_id>``; ``node_id`` must be one path segment."""
    return SpiffeId.from_segments(trust_domain, "trustmesh", "agent", method, node_id)


class NodeAttestor(Protocol):
    """One attestation method. ``attest`` checks the node's evidence and returns the agent ID it
    proves; it raises :class:`NotAuthorized` for evidence that does not hold (without saying why, when
    saying why would help an attacker) and :class:`InvalidArgument` for malformed evidence."""

    method: str

    def attest(self, payload: bytes, now: datetime) -> SpiffeId: ...


@runtime_checkable
class ChallengeAttestor(NodeAttestor, Protocol):
    """A method with a first step (``AttestChallenge``): ``challenge`` checks the node's evidence and
    returns what the node must answer in ``attest``'s payload (x509pop: a nonce its key signs)."""

    def challenge(self, payload: bytes, now: datetime) -> bytes: ...


@dataclass(frozen=True, slots=True)
class NodeAttestors:
    """The attestation methods this CA accepts, by name."""

    by_method: Mapping[str, NodeAttestor] = field(default_factory=dict)

    @classmethod
    def of(cls, *attestors: NodeAttestor) -> NodeAttestors:
        return cls({attestor.method: attestor for attestor in attestors})

    def get(self, method: str) -> NodeAttestor:
        attestor = self.by_method.get(method)
        if attestor is None:
            enabled = ", ".join(sorted(self.by_method)) or "none"
            raise InvalidArgument(f"attestation method {method!r} is not enabled on this CA; enabled: {enabled}")
        return attestor

    def challenger(self, method: str) -> ChallengeAttestor:
        """The enabled method ``method`` if it has a challenge step; InvalidArgument otherwise."""
        attestor = self.get(method)
        if not isinstance(attestor, ChallengeAttestor):
            raise InvalidArgument(f"attestation method {method!r} has no challenge step; call Attest directly")
        return attestor


@dataclass(frozen=True, slots=True)
class GeneratedJoinToken:
    """A new join token. ``token`` is the secret: show it once, never log or store it."""

    token: str = field(repr=False)
    agent_id: SpiffeId
    expires_at: datetime


class JoinTokens:
    """Generating join tokens (admin side) and attesting with them (``join_token`` attestor)."""

    method = JOIN_TOKEN

    def __init__(self, database: Database, trust_domain: TrustDomain, clock: Clock) -> None:
        self._database = database
        self._trust_domain = trust_domain
        self._clock = clock

    def generate(
        self, ttl: timedelta, actor: Actor, node_name: str | None = None, *, replace: bool = False
    ) -> GeneratedJoinToken:
        """Create a token valid for ``ttl`` that will attest as ``…/trustmesh/agent/join_token/<node_name>``
        (a random UUID when no name is given). Raises InvalidArgument for a bad TTL or name, and
        AlreadyExists while an agent with that ID is attested, unless ``replace``: then the node that
        attests with this token replaces that agent (whose SVID stops working when it does)."""
        if ttl <= timedelta(0) or ttl > MAX_JOIN_TOKEN_TTL:
            limit = int(MAX_JOIN_TOKEN_TTL.total_seconds())
            raise InvalidArgument(
                f"join token TTL {int(ttl.total_seconds())}s is outside (0, {limit}s]; give e.g. --ttl 1h"
            )
        name = str(uuid.uuid4()) if node_name is None else node_name
        try:
            agent_id = agent_id_for(self._trust_domain, JOIN_TOKEN, name)
        except InvalidArgument as err:
            raise InvalidArgument(
                f"node name {name!r} is not a SPIFFE ID path segment (letters, digits, '.', '-', '_'): {err}"
            ) from err
        token = secrets.token_urlsafe(JOIN_TOKEN_BYTES)
        now = self._clock.now()
        with self._database.transaction() as session:
            try:
                attested = AgentRepository(session).get(agent_id)
            except NotFound:
                attested = None
            if attested is not None and attested.expires_at <= now:
                attested = None  # its SVID expired: nothing authenticates as it any more
            if attested is not None and not replace:
                raise AlreadyExists(
                    f"agent {agent_id} is attested (its SVID is valid until {attested.expires_at.isoformat()}); "
                    f"one node name is one agent — evict it first with `trustmesh-ca agent evict {agent_id}`, "
                    "or generate the token with --replace so the new node replaces it when it attests"
                )
            stored = JoinTokenRepository(session).add(hash_join_token(token), now + ttl, now, agent_id)
            detail: dict[str, str] = {"expires_at": stored.expires_at.isoformat()}
            if attested is not None:
                detail["replaces_serial"] = format(attested.serial, "x")
            AuditLogRepository(session).append(
                AuditEvent(now, actor, "join_token.generate", str(agent_id), "ok", detail)
            )
        return GeneratedJoinToken(token, agent_id, stored.expires_at)

    def attest(self, payload: bytes, now: datetime) -> SpiffeId:
        """Consume the token in ``payload`` and return the agent ID it was generated for.

        Refuses (NotAuthorized) an unknown, used or expired token with one message, and a token whose
        agent is banned. The token is spent either way once it matched."""
        try:
            token = payload.decode("ascii").strip()
        except UnicodeDecodeError as err:
            raise NotAuthorized(_REFUSED) from err
        if not token:
            raise InvalidArgument("join_token attestation needs the token as the payload; it was empty")
        with self._database.transaction() as session:
            used = JoinTokenRepository(session).consume(hash_join_token(token), now)
            if used.agent_spiffe_id is None:
                # Tokens are always generated with their agent ID; a row without one was not made here.
                raise NotAuthorized(_REFUSED)
            agent_id = used.agent_spiffe_id
            try:
                banned = AgentRepository(session).get(agent_id).banned
            except NotFound:
                banned = False
        if banned:
            raise NotAuthorized(f"agent {agent_id} is banned; an operator must lift the ban before it can attest")
        return agent_id
