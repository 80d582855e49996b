"""``trustmesh-ca run``: the composition root. Builds every part from the config and serves them in
one asyncio TaskGroup, so if one listener dies the whole process stops instead of half-serving.

The group holds: the admin API (Unix socket), the health listener, the node API's gRPC server (its
attestation and mTLS listeners), the renewal of the CA's own serving SVID, the pruning of expired
issued-certificate records, and — on PostgreSQL — the LISTEN task that brings other replicas' changes
to this replica's Sync streams."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from ca.agents import AgentAdmin
from ca.attestation import JoinTokens, NodeAttestors
from ca.authority_changes import AuthorityChanges
from ca.authority_manager import AuthorityManager, AuthorityParams
from ca.authority_ops import AuthorityOperations
from ca.config import CaConfig
from ca.entries import EntryPolicy, RegistrationEntries
from ca.http_api import create_admin_app, create_health_app
from ca.issuance import TtlPolicy
from ca.keys import open_key_manager
from ca.metrics import CaMetrics
from ca.node_api import NodeServicer, build_node_server, run_node_server
from ca.node_service import NodeService
from ca.ratelimit import NodeApiGuard, NodeApiLimits, Rate
from ca.retention import IssuedCertificateRetention
from ca.rotation import RotationParams
from ca.rotator import Rotator
from ca.server_identity import ServerIdentity
from ca.service import CaService
from ca.store.engine import Database
from ca.sync import ChangeHub, UpdateVersions, listen_for_changes
from ca.upstream import CaSubject, SelfSignedUpstream, UpstreamAuthority
from ca.upstream.disk import WatchedDiskUpstream
from spiffe_core.clock import Clock, SystemClock
from spiffe_core.errors import NoActiveAuthority, TrustmeshError

log = logging.getLogger(__name__)

# How often the node API checks whether the serving SVID exists yet (only while it does not).
NODE_API_WAIT_SECONDS = 0.5


def _upstream(config: CaConfig) -> UpstreamAuthority:
    upstream = config.ca.upstream
    if upstream.kind == "disk":
        # The config refuses a disk upstream without both files.
        assert upstream.cert_file is not None
        assert upstream.key_file is not None
        return WatchedDiskUpstream(upstream.cert_file, upstream.key_file, upstream.bundle_file)
    return SelfSignedUpstream()


def _active_id(authorities: AuthorityManager) -> str | None:
    """The ID of the active X.509 authority, or None while there is none (the serving SVID stays)."""
    try:
        return authorities.get_current().active_x509().id
    except NoActiveAuthority:
        return None


@dataclass(frozen=True, slots=True)
class CaParts:
    """Everything ``serve`` runs, built once from the config."""

    service: CaService
    metrics: CaMetrics
    database: Database
    hub: ChangeHub
    entries: RegistrationEntries
    join_tokens: JoinTokens
    node: NodeService
    identity: ServerIdentity
    clock: Clock
    rotator: Rotator
    officer: AuthorityOperations


def build_service(config: CaConfig) -> CaParts:
    """Open the datastore (migrating it), the key manager and the authorities, and build the use
    cases over them; blocking (it also signs the CA's first serving SVID)."""
    config.server.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    database = Database.open(config.datastore.url)
    database.migrate()
    clock = SystemClock()
    authorities = AuthorityManager(
        database,
        open_key_manager(config.ca.key_manager, config.server.data_dir),
        _upstream(config),
        AuthorityParams(
            trust_domain=config.trust_domain,
            x509_key_type=config.ca.key_type,
            jwt_key_type=config.jwt_svid.key_type,
            ca_ttl=config.ca.ttl,
            refresh_hint=config.bundle.refresh_hint,
            subject=CaSubject(config.ca.subject.organization, config.ca.subject.common_name),
            crl_ttl=config.revocation.crl_ttl,
        ),
        clock,
    )
    authorities.load()
    hub = ChangeHub()
    changes = AuthorityChanges(database=database, authorities=authorities, hub=hub, clock=clock)
    rotation_params = RotationParams(config.bundle.refresh_hint, config.jwt_svid.max_ttl)
    rotator = Rotator(changes, rotation_params, clock)
    officer = AuthorityOperations(changes, rotation_params, clock)
    try:
        rotator.tick()  # a CA that was down across a rotation point catches up before serving
    except TrustmeshError as err:
        log.warning("authority rotation failed at start-up (%s); the CA serves and retries", err)
    metrics = CaMetrics()
    service = CaService(
        database=database,
        authorities=authorities,
        x509_ttl=TtlPolicy(config.x509_svid.default_ttl, config.x509_svid.max_ttl),
        jwt_ttl=TtlPolicy(config.jwt_svid.default_ttl, config.jwt_svid.max_ttl),
        clock=clock,
        metrics=metrics,
        rotation_error=lambda: rotator.last_error,
    )
    entries = RegistrationEntries(
        database,
        hub,
        EntryPolicy(config.trust_domain, config.x509_svid.max_ttl, config.jwt_svid.max_ttl),
        clock,
    )
    join_tokens = JoinTokens(database, config.trust_domain, clock)
    node = NodeService(
        database=database,
        issuer=service,
        authorities=authorities,
        entries=entries,
        attestors=NodeAttestors.of(join_tokens),
        agent_svid_ttl=config.agent_svid.ttl,
        clock=clock,
        hub=hub,
    )
    identity = ServerIdentity(
        service, config.trust_domain, config.server.server_name, clock, lambda: _active_id(authorities)
    )
    authorities.add_listener(lambda _authorities: identity.authority_changed())
    try:
        identity.rotate()
    except TrustmeshError as err:  # nothing can sign: serve health (not ready, with the reason) and retry
        log.error("cannot sign the node API's serving SVID (%s); the node API starts once it can", err)
    return CaParts(service, metrics, database, hub, entries, join_tokens, node, identity, clock, rotator, officer)


def _bind_admin_socket(path: Path) -> socket.socket:
    """Bind the admin socket ourselves so it is 0600 from the start (uvicorn would chmod it 0666)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    sock.listen(128)
    return sock


def _node_api_limits(config: CaConfig) -> NodeApiLimits:
    node_api = config.node_api
    ratelimit = node_api.ratelimit
    return NodeApiLimits(
        max_batch_size=node_api.max_batch_size,
        signing=Rate(ratelimit.signing, ratelimit.signing_burst),
        attestation=Rate(ratelimit.attestation, ratelimit.attestation_burst),
    )


async def _serve_node_api(config: CaConfig, parts: CaParts) -> None:
    """Serve the node API once the CA holds a serving SVID: when no authority could sign one at
    start-up (all expired, upstream down), the rest of the CA serves (``/ready`` says why) and the
    listeners open as soon as the serving identity's retries succeed."""
    while not parts.identity.has_credentials:  # noqa: ASYNC110 - set by a worker thread; polled only until then
        await asyncio.sleep(NODE_API_WAIT_SECONDS)
    node_server, ports = build_node_server(
        NodeServicer(parts.node, parts.hub, UpdateVersions(), parts.clock, NodeApiGuard(_node_api_limits(config))),
        parts.identity,
        parts.service.get_bundle,
        attestation_address=config.server.attestation_address,
        node_api_address=config.server.node_api_address,
    )
    log.info("node API listening: attestation port %d, node API port %d", ports.attestation, ports.node_api)
    await run_node_server(node_server)


async def serve(config: CaConfig) -> None:
    parts = await asyncio.to_thread(build_service, config)
    service, metrics, database = parts.service, parts.metrics, parts.database
    admin_socket = _bind_admin_socket(config.server.admin_socket)
    admin_app = create_admin_app(
        service,
        metrics.registry,
        entries=parts.entries,
        join_tokens=parts.join_tokens,
        authorities=parts.officer,
        agents=AgentAdmin(database, parts.hub, parts.clock),
    )
    servers: list[tuple[uvicorn.Server, list[socket.socket] | None]] = [
        (uvicorn.Server(uvicorn.Config(admin_app, log_config=None, lifespan="off")), [admin_socket])
    ]
    if config.server.http_address:
        host, _, port = config.server.http_address.rpartition(":")
        health = uvicorn.Config(
            create_health_app(service, metrics.registry, authorities=parts.officer),
            host=host,
            port=int(port),
            log_config=None,
            lifespan="off",
        )
        servers.append((uvicorn.Server(health), None))
    log.info(
        "trustmesh CA serving trust domain %s: admin socket %s, health %s",
        config.trust_domain,
        config.server.admin_socket,
        config.server.http_address or "(disabled)",
    )
    try:
        async with asyncio.TaskGroup() as group:
            for server, sockets in servers:
                group.create_task(server.serve(sockets=sockets))
            group.create_task(_serve_node_api(config, parts))
            group.create_task(parts.identity.run())
            group.create_task(parts.rotator.run())
            retention = config.datastore.issued_certificate_retention
            group.create_task(IssuedCertificateRetention(database, retention, parts.clock).run())
            if database.dialect == "postgresql":
                group.create_task(
                    listen_for_changes(config.datastore.url, parts.hub, reload_shared=parts.rotator.reload_quietly)
                )
    finally:
        config.server.admin_socket.unlink(missing_ok=True)
        database.close()
