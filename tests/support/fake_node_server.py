"""A fake of the CA's node API (wire/node.proto) on a real ``grpc.aio`` server, for the agent's tests.

It keeps its state in memory and signs with a :class:`~tests.support.agent_pki.SigningCa`, but speaks
the real protocol over the real transport: ``Attest`` on a server-TLS listener, everything else on an
mTLS listener that requires a client certificate chaining to the test CA, and a serving X509-SVID
(``spiffe://<td>/trustmesh/server``) whose DNS SAN is the server name agents dial with. Tests change
its state and call :meth:`FakeNodeServicer.push` to send every open Sync stream the new state, and
stop and restart the server on the same ports to play a CA outage.
"""

from __future__ import annotations

import asyncio
import hmac
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from spiffe_core.bundle import Bundle
from spiffe_core.jwt_svid import mint_jwt_svid
from spiffe_core.keys import KeyType, generate_private_key
from spiffe_core.spiffe_id import SpiffeId
from spiffe_core.x509_svid import X509Svid, validate_x509_svid_leaf
from tests.support.agent_pki import SigningCa
from wire import node_pb2, node_pb2_grpc

SERVER_NAME = "trustmesh-ca"
Context = grpc.aio.ServicerContext[Any, Any]


def _der(chain: tuple[x509.Certificate, ...]) -> list[bytes]:
    return [cert.public_bytes(serialization.Encoding.DER) for cert in chain]


def _pem(certs: tuple[x509.Certificate, ...]) -> bytes:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)


@dataclass
class FakeNodeServicer:
    """The Node service over in-memory state. ``calls`` counts RPCs by method name."""

    ca: SigningCa
    join_tokens: dict[str, str] = field(default_factory=dict)  # token -> node name
    agent_ttl: timedelta = timedelta(hours=1)
    svid_ttl: timedelta = timedelta(hours=1)
    jwt_ttl: timedelta = timedelta(minutes=5)
    entries: list[node_pb2.RegistrationEntry] = field(default_factory=list)
    bundle: Bundle | None = None
    tainted_authority_ids: list[str] = field(default_factory=list)
    revoked_serials: list[str] = field(default_factory=list)
    federated_bundles: dict[str, Bundle] = field(default_factory=dict)  # by trust domain name, for every agent
    agents: set[SpiffeId] = field(default_factory=set)
    calls: Counter[str] = field(default_factory=Counter)
    open_syncs: int = 0  # Sync streams the servicer is serving now
    # While set and not yet released, SignX509Svids waits for it (a CA slow to answer), having set
    # signing_waits first.
    signing_gate: asyncio.Event | None = None
    signing_waits: asyncio.Event = field(default_factory=asyncio.Event)
    version: int = 0
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def current_bundle(self) -> Bundle:
        return self.bundle or self.ca.bundle()

    def add_entry(self, entry_id: str, spiffe_id: SpiffeId, parent_id: SpiffeId, *selectors: str) -> None:
        self.entries.append(
            node_pb2.RegistrationEntry(
                id=entry_id,
                spiffe_id=str(spiffe_id),
                parent_id=str(parent_id),
                selectors=list(selectors or ("unix:uid:1000",)),
                revision=1,
            )
        )

    async def push(self) -> None:
        """Send the current state to every open Sync stream."""
        async with self._changed:
            self.version += 1
            self._changed.notify_all()

    def _update(self, agent: SpiffeId) -> node_pb2.SyncUpdate:
        return node_pb2.SyncUpdate(
            version=self.version,
            bundle=self.current_bundle().to_json().encode(),
            entries=[e for e in self.entries if e.parent_id == str(agent)],
            tainted_authority_ids=self.tainted_authority_ids,
            revoked_serials=self.revoked_serials,
            federated_bundles={td: bundle.to_json().encode() for td, bundle in self.federated_bundles.items()},
        )

    async def _agent(self, context: Context) -> SpiffeId:
        pem = context.auth_context().get("x509_pem_cert")
        if not pem:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
        agent = validate_x509_svid_leaf(x509.load_pem_x509_certificate(pem[0]))
        if agent not in self.agents:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"agent {agent} is not known to this CA")
        return agent

    async def Attest(self, request: node_pb2.AttestRequest, context: Context) -> node_pb2.AttestResponse:
        self.calls["Attest"] += 1
        given = request.payload.decode()
        name = next((n for t, n in self.join_tokens.items() if hmac.compare_digest(t, given)), None)
        if request.method != "join_token" or name is None:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "join token unknown, used or expired; ask an operator for a new join token",
            )
        del self.join_tokens[given]
        agent = SpiffeId.from_segments(self.ca.trust_domain, "trustmesh", "agent", "join_token", name)
        self.agents.add(agent)
        chain = self.ca.sign_csr(request.csr, agent, now=datetime.now(UTC), ttl=self.agent_ttl)
        return node_pb2.AttestResponse(
            spiffe_id=str(agent), svid_chain=_der(chain), bundle=self.current_bundle().to_json().encode()
        )

    async def AttestChallenge(
        self, request: node_pb2.AttestChallengeRequest, context: Context
    ) -> node_pb2.AttestChallengeResponse:
        """This fake attests with join tokens only, as a CA without ``[bridge]`` trust anchors."""
        self.calls["AttestChallenge"] += 1
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"attestation method {request.method!r} is not enabled on this CA; enabled: join_token",
        )

    async def RenewAgent(self, request: node_pb2.RenewAgentRequest, context: Context) -> node_pb2.RenewAgentResponse:
        self.calls["RenewAgent"] += 1
        agent = await self._agent(context)
        chain = self.ca.sign_csr(request.csr, agent, now=datetime.now(UTC), ttl=self.agent_ttl)
        return node_pb2.RenewAgentResponse(svid_chain=_der(chain))

    async def Sync(self, request: node_pb2.SyncRequest, context: Context) -> AsyncIterator[node_pb2.SyncUpdate]:
        self.calls["Sync"] += 1
        agent = await self._agent(context)
        sent = -1
        self.open_syncs += 1
        try:
            while True:
                async with self._changed:
                    while self.version == sent:
                        await self._changed.wait()
                    sent = self.version
                    update = self._update(agent)
                yield update
        finally:
            self.open_syncs -= 1

    async def SignX509Svids(
        self, request: node_pb2.SignX509SvidsRequest, context: Context
    ) -> node_pb2.SignX509SvidsResponse:
        self.calls["SignX509Svids"] += 1
        agent = await self._agent(context)
        if self.signing_gate is not None:
            self.signing_waits.set()
            await self.signing_gate.wait()
        mine = {e.id: e for e in self.entries if e.parent_id == str(agent)}
        results = []
        for item in request.requests:
            entry = mine.get(item.entry_id)
            if entry is None:
                results.append(
                    node_pb2.SignedX509Svid(
                        entry_id=item.entry_id, error=f"entry {item.entry_id} is not parented to {agent}"
                    )
                )
                continue
            chain = self.ca.sign_csr(
                item.csr, SpiffeId.parse(entry.spiffe_id), now=datetime.now(UTC), ttl=self.svid_ttl
            )
            results.append(node_pb2.SignedX509Svid(entry_id=item.entry_id, cert_chain=_der(chain)))
        return node_pb2.SignX509SvidsResponse(svids=results)

    async def MintJwtSvid(self, request: node_pb2.MintJwtSvidRequest, context: Context) -> node_pb2.MintJwtSvidResponse:
        self.calls["MintJwtSvid"] += 1
        agent = await self._agent(context)
        entry = next((e for e in self.entries if e.id == request.entry_id and e.parent_id == str(agent)), None)
        if entry is None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"entry {request.entry_id} is not yours")
        expires_at = datetime.now(UTC).replace(microsecond=0) + self.jwt_ttl
        token = mint_jwt_svid(
            spiffe_id=SpiffeId.parse(entry.spiffe_id),
            audience=list(request.audience),
            private_key=self.ca.jwt_key,
            key_id=self.ca.jwt_key_id,
            expires_at=expires_at,
        )
        return node_pb2.MintJwtSvidResponse(token=token, expires_at=int(expires_at.timestamp()))

    async def RefreshFederatedBundle(
        self, request: node_pb2.RefreshFederatedBundleRequest, context: Context
    ) -> node_pb2.RefreshFederatedBundleResponse:
        """Answers the federated bundle it holds (a test changes ``federated_bundles`` to play a fetch)."""
        self.calls["RefreshFederatedBundle"] += 1
        await self._agent(context)
        bundle = self.federated_bundles.get(request.trust_domain)
        return node_pb2.RefreshFederatedBundleResponse(bundle=b"" if bundle is None else bundle.to_json().encode())


def serving_svid(ca: SigningCa, server_name: str = SERVER_NAME, spiffe_id: SpiffeId | None = None) -> X509Svid:
    """The fake CA's own serving X509-SVID, with ``server_name`` as its DNS SAN (``spiffe_id``: an
    impostor's SVID of the same trust domain instead)."""
    spiffe_id = spiffe_id or SpiffeId.from_segments(ca.trust_domain, "trustmesh", "server")
    key = generate_private_key(KeyType.EC_P256)
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    now = datetime.now(UTC)
    chain = ca.sign_csr(
        csr.public_bytes(serialization.Encoding.DER),
        spiffe_id,
        now=now,
        ttl=timedelta(hours=1),
        dns_names=(server_name,),
    )
    return X509Svid(spiffe_id, chain, key)


class FakeNodeServer:
    """The servicer on two TLS listeners of 127.0.0.1; :meth:`stop` and :meth:`start` again keep the ports.
    ``identity`` replaces the serving X509-SVID (to play an impostor)."""

    def __init__(
        self, servicer: FakeNodeServicer, identity: X509Svid | None = None, options: Sequence[tuple[str, int]] = ()
    ) -> None:
        self.servicer = servicer
        self._identity = identity or serving_svid(servicer.ca)
        self._options = list(options)  # gRPC server arguments (the keepalive tests pass the CA's, scaled)
        self._server: grpc.aio.Server | None = None
        self.attestation_port = 0
        self.node_api_port = 0

    @property
    def attestation_address(self) -> str:
        return f"127.0.0.1:{self.attestation_port}"

    @property
    def node_api_address(self) -> str:
        return f"127.0.0.1:{self.node_api_port}"

    async def start(self) -> None:
        key_pem = self._identity.key_pem()
        chain_pem = self._identity.chain_pem()
        roots = _pem(self.servicer.current_bundle().x509_authorities)
        server = grpc.aio.server(options=self._options)
        node_pb2_grpc.add_NodeServicer_to_server(self.servicer, server)  # type: ignore[arg-type]
        self.attestation_port = server.add_secure_port(
            f"127.0.0.1:{self.attestation_port}", grpc.ssl_server_credentials([(key_pem, chain_pem)])
        )
        self.node_api_port = server.add_secure_port(
            f"127.0.0.1:{self.node_api_port}",
            grpc.ssl_server_credentials([(key_pem, chain_pem)], root_certificates=roots, require_client_auth=True),
        )
        await server.start()
        self._server = server

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(None)
