"""``trustmesh-ca run``: the composition root. Builds every part from the config and serves them in
one asyncio TaskGroup, so if one listener dies the whole process stops instead of half-serving.

The group holds: the admin API (the Unix socket, and HTTPS when ``admin_api.address`` is set), the
health listener, the agentless exchange (when ``bridge.exchange_address`` is set), the node API's gRPC
server (its attestation and mTLS listeners), the renewal of the CA's own serving SVID, the pruning of
expired issued-certificate records, the audit log's upkeep (signed checkpoints, refusal summaries),
and — on PostgreSQL — the LISTEN task that brings other replicas' changes to this replica's Sync
streams."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from bridge.x509pop import X509PopAttestor
from ca.admin_auth import Authenticator, BreakGlassAuthenticator
from ca.admin_listener import prepare_https, serve_admin_https, serve_draining
from ca.admin_transport import admin_protocol
from ca.agents import AgentAdmin
from ca.attestation import JoinTokens, NodeAttestors
from ca.audit import AuditTrail
from ca.audit_checkpoints import CheckpointTrust
from ca.audit_log import AuditLog
from ca.audit_task import AuditKeeper
from ca.audit_throttle import RefusalThrottle
from ca.authority_changes import AuthorityChanges
from ca.authority_manager import AuthorityManager, AuthorityParams
from ca.authority_ops import AuthorityOperations
from ca.bridge_attestation import DatastoreChallenges, x509pop_attestor
from ca.bridge_exchange import LegacyExchange, legacy_exchange
from ca.config import CaConfig
from ca.entries import EntryPolicy, RegistrationEntries
from ca.exchange_listener import serve_exchange
from ca.federation.endpoint import BundleEndpoint, SpiffeServingContexts, WebServingContexts
from ca.federation.fetch import FetchLimits, web_client_context
from ca.federation.refresher import FederationMetrics, FederationRefresher, RefreshPolicy
from ca.federation.relationships import FederationRelationships
from ca.federation.unknown_keys import UnknownKeyRefresh
from ca.http_api import create_admin_app, create_health_app
from ca.inventory import Inventory
from ca.issuance import TtlPolicy
from ca.keys import open_key_manager
from ca.legacy_roots import LegacyRootFiles
from ca.listening import bind_tcp
from ca.mappings import IdentityMappings
from ca.metrics import AuthorityCollector, CaMetrics, LegacyCrlCollector, StreamCollector
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
from ca.upstream import CaSubject, SelfSignedUpstream, UpstreamAuthority, VaultPkiUpstream
from ca.upstream.disk import WatchedDiskUpstream
from ca.vault import VaultClient
from spiffe_core.clock import Clock, SystemClock
from spiffe_core.data_dir import lock_data_dir
from spiffe_core.errors import ConfigError, NoActiveAuthority, TrustmeshError
from spiffe_core.spiffe_id import SpiffeId

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
    if upstream.kind == "vault-pki":
        return VaultPkiUpstream(
            VaultClient(config.vault, "vault-pki upstream", "ca.upstream.pki_mount"), upstream.pki_mount
        )
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
    authorities: AuthorityManager
    audit: AuditTrail
    audit_log: AuditLog
    federation: FederationRelationships
    refresher: FederationRefresher
    mappings: IdentityMappings
    exchange: LegacyExchange | None
    legacy_roots: LegacyRootFiles


def build_service(config: CaConfig, *, new_root: bool = False) -> CaParts:
    """Open the datastore (migrating it), the key manager and the authorities, and build the use
    cases over them; blocking (it also signs the CA's first serving SVID). ``new_root``: create first
    authorities even beside existing keys (else that is refused as a lost datastore)."""
    config.server.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    database = Database.open(config.datastore.url)
    database.migrate()
    clock = SystemClock()
    authorities = AuthorityManager(
        database,
        open_key_manager(config.ca.key_manager, config.server.data_dir, vault=config.vault),
        _upstream(config),
        AuthorityParams(
            trust_domain=config.trust_domain,
            x509_key_type=config.ca.key_type,
            jwt_key_type=config.jwt_svid.key_type,
            ca_ttl=config.ca.ttl,
            refresh_hint=config.bundle.refresh_hint,
            subject=CaSubject(config.ca.subject.organization, config.ca.subject.common_name),
            crl_ttl=config.revocation.crl_ttl,
            new_root=new_root,
        ),
        clock,
    )
    authorities.load()
    # One CA process makes every change itself; replicas on PostgreSQL hear the others' changes only
    # while their change listener is connected (it marks the hub complete then).
    hub = ChangeHub(complete=database.dialect != "postgresql")
    per_minute = config.audit.refusals_per_minute
    audit = AuditTrail(database, RefusalThrottle(per_source=Rate(per_minute / 60, per_minute)))
    changes = AuthorityChanges(database=database, authorities=authorities, hub=hub, clock=clock)
    rotation_params = RotationParams(config.bundle.refresh_hint, config.jwt_svid.max_ttl)
    metrics = CaMetrics()
    metrics.add_collector(AuthorityCollector(authorities.get_current))
    metrics.add_collector(StreamCollector(hub.subscriber_count, hub.agent_count))
    rotator = Rotator(changes, rotation_params, clock, metrics=metrics.rotation)
    officer = AuthorityOperations(changes, rotation_params, clock, audit, metrics=metrics.rotation)
    try:
        rotator.tick()  # a CA that was down across a rotation point catches up before serving
    except TrustmeshError as err:
        log.warning("authority rotation failed at start-up (%s); the CA serves and retries", err)
    service = CaService(
        database=database,
        authorities=authorities,
        x509_ttl=TtlPolicy(config.x509_svid.default_ttl, config.x509_svid.max_ttl),
        jwt_ttl=TtlPolicy(config.jwt_svid.default_ttl, config.jwt_svid.max_ttl),
        clock=clock,
        metrics=metrics,
        rotation_error=lambda: rotator.last_error,
        audit=audit,
    )
    entries = RegistrationEntries(
        database,
        hub,
        EntryPolicy(config.trust_domain, config.x509_svid.max_ttl, config.jwt_svid.max_ttl),
        clock,
        audit=audit,
    )
    join_tokens = JoinTokens(database, config.trust_domain, clock)
    mappings = IdentityMappings(database, config.trust_domain, clock)
    bridge = config.bridge
    legacy_roots = LegacyRootFiles(bridge.legacy_roots, hub, bridge.legacy_roots_check_interval.total_seconds(), clock)
    legacy_roots.load()
    metrics.add_collector(LegacyCrlCollector(legacy_roots.get_roots))
    node = NodeService(
        database=database,
        issuer=service,
        authorities=authorities,
        entries=entries,
        attestors=NodeAttestors.of(join_tokens, *_bridge_attestors(config, mappings, database, clock)),
        agent_svid_ttl=config.agent_svid.ttl,
        clock=clock,
        hub=hub,
        audit=audit,
        legacy_roots=legacy_roots.get_roots,
        metrics=metrics,
    )
    identity = ServerIdentity(
        service, config.trust_domain, config.server.server_name, clock, lambda: _active_id(authorities)
    )
    authorities.add_listener(lambda _authorities: identity.authority_changed())
    try:
        identity.rotate()
    except TrustmeshError as err:  # nothing can sign: serve health (not ready, with the reason) and retry
        log.error("cannot sign the node API's serving SVID (%s); the node API starts once it can", err)
    federation, refresher = _federation(config, database, hub, clock, metrics)
    return CaParts(
        service,
        metrics,
        database,
        hub,
        entries,
        join_tokens,
        node,
        identity,
        clock,
        rotator,
        officer,
        authorities,
        audit,
        AuditLog(
            database,
            lambda: CheckpointTrust.of(authorities.get_current()),
            clock,
            config.audit.checkpoint_interval,
        ),
        federation,
        refresher,
        mappings,
        _exchange(
            config, mappings=mappings, entries=entries, service=service, audit=audit, database=database, clock=clock
        ),
        legacy_roots,
    )


def _federation(
    config: CaConfig, database: Database, hub: ChangeHub, clock: Clock, metrics: CaMetrics
) -> tuple[FederationRelationships, FederationRefresher]:
    settings = config.federation
    relationships = FederationRelationships(database, hub, config.trust_domain, clock, settings.max_bundle_keys)
    web_ca = None if settings.web_ca_file is None else str(settings.web_ca_file)
    try:
        web_context = web_client_context(web_ca)
    except OSError as err:
        raise ConfigError(f"federation.web_ca_file {web_ca}: cannot read it ({err.strerror}); fix the path") from err
    refresher = FederationRefresher(
        database=database,
        hub=hub,
        relationships=relationships,
        limits=FetchLimits(settings.fetch_timeout.total_seconds(), settings.max_bundle_bytes, settings.max_bundle_keys),
        policy=RefreshPolicy(settings.min_refresh, settings.max_refresh, settings.unknown_key_refresh_interval),
        web_context=web_context,
        clock=clock,
        metrics=FederationMetrics(metrics.registry),
    )
    return relationships, refresher


def _bridge_attestors(
    config: CaConfig, mappings: IdentityMappings, database: Database, clock: Clock
) -> tuple[X509PopAttestor, ...]:
    """x509pop when ``[bridge]`` names trust anchors (their files are checked now: ConfigError), its
    challenges shared by every replica through the datastore."""
    if not config.bridge.enabled:
        return ()
    ledger = DatastoreChallenges(database, clock)
    return (x509pop_attestor(config.bridge, config.trust_domain, mappings.rules, ledger),)


def _exchange(
    config: CaConfig,
    *,
    mappings: IdentityMappings,
    entries: RegistrationEntries,
    service: CaService,
    audit: AuditTrail,
    database: Database,
    clock: Clock,
) -> LegacyExchange | None:
    """The agentless exchange when ``bridge.exchange_address`` is set (its files are checked now). It
    refuses admin identities: the configured mTLS admins and entries with ``admin = true``. Statements
    it accepted are spent in the datastore beside x509pop's nonces, so no replica accepts one twice."""
    if not config.bridge.exchange_address:
        return None
    admins = {SpiffeId.parse(admin.spiffe_id) for admin in config.admin_api.admins}
    return legacy_exchange(
        config.bridge,
        config.trust_domain,
        rules=mappings.rules,
        issuer=service,
        audit=audit,
        clock=clock,
        is_admin=lambda spiffe_id: spiffe_id in admins or entries.has_admin_entry(spiffe_id),
        spend=DatastoreChallenges(database, clock).spend,
    )


def _bind_admin_socket(path: Path) -> socket.socket:
    """Bind the admin socket ourselves so it is 0600 from the start (uvicorn would chmod it 0666).
    A socket left by a CA that died is replaced; one that answers, or a file that is not a socket, is
    refused (ConfigError) and left alone."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _refuse_admin_socket_in_use(path)
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


def _refuse_admin_socket_in_use(path: Path) -> None:
    if path.is_socket():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                pass  # nobody listens: a stale socket
            else:
                raise ConfigError(
                    f"server.admin_socket {path} is in use by another process (a CA with another data "
                    "directory?); stop it or set another server.admin_socket"
                )
    elif path.exists() or path.is_symlink():
        raise ConfigError(f"server.admin_socket {path} exists and is not a socket; remove it or choose another path")


def _first_domain_error(group: BaseExceptionGroup[BaseException]) -> TrustmeshError | None:
    for exc in group.exceptions:
        if isinstance(exc, TrustmeshError):
            return exc
        if isinstance(exc, BaseExceptionGroup) and (found := _first_domain_error(exc)) is not None:
            return found
    return None


def _node_api_limits(config: CaConfig) -> NodeApiLimits:
    node_api = config.node_api
    ratelimit = node_api.ratelimit
    return NodeApiLimits(
        max_batch_size=node_api.max_batch_size,
        signing=Rate(ratelimit.signing, ratelimit.signing_burst),
        attestation=Rate(ratelimit.attestation, ratelimit.attestation_burst),
        bundle_refresh=Rate(ratelimit.bundle_refresh, ratelimit.bundle_refresh_burst),
    )


async def _wait_for_serving_svid(identity: ServerIdentity) -> None:
    """Return once the CA holds a serving SVID: when no authority could sign one at start-up (all
    expired, upstream down), the rest of the CA serves (``/ready`` says why) and the TLS listeners open
    as soon as the serving identity's retries succeed."""
    while not identity.has_credentials:  # noqa: ASYNC110 - set by a worker thread; polled only until then
        await asyncio.sleep(NODE_API_WAIT_SECONDS)


async def _serve_node_api(config: CaConfig, parts: CaParts) -> None:
    """Serve the node API once the CA holds a serving SVID (:func:`_wait_for_serving_svid`)."""
    await _wait_for_serving_svid(parts.identity)
    node_server, ports = build_node_server(
        NodeServicer(
            parts.node,
            parts.hub,
            UpdateVersions(),
            parts.clock,
            NodeApiGuard(_node_api_limits(config)),
            unknown_keys=UnknownKeyRefresh(parts.node, parts.refresher),
            metrics=parts.metrics,
        ),
        parts.identity,
        parts.service.get_bundle,
        attestation_address=config.server.attestation_address,
        node_api_address=config.server.node_api_address,
    )
    log.info("node API listening: attestation port %d, node API port %d", ports.attestation, ports.node_api)
    await run_node_server(node_server)


async def _serve_bundle_endpoint(config: CaConfig, parts: CaParts, sock: socket.socket) -> None:
    """Serve the SPIFFE bundle endpoint; with ``https_spiffe`` once the CA holds a serving SVID."""
    federation = config.federation
    if federation.bundle_endpoint_profile == "https_web":
        assert federation.bundle_endpoint_cert_file is not None  # the config refuses https_web without them
        assert federation.bundle_endpoint_key_file is not None
        tls = WebServingContexts(federation.bundle_endpoint_cert_file, federation.bundle_endpoint_key_file)
        tls()  # an unreadable certificate stops the CA now, not at the first partner's fetch
        endpoint = BundleEndpoint(parts.service.get_bundle, tls)
    else:
        await _wait_for_serving_svid(parts.identity)
        # A new serving SVID is presented once its authority was published for two refresh hints.
        tls_contexts = SpiffeServingContexts(
            parts.identity, parts.service.get_bundle, 2 * config.bundle.refresh_hint, parts.clock
        )
        endpoint = BundleEndpoint(parts.service.get_bundle, tls_contexts)
    log.info("SPIFFE bundle endpoint (%s) listening on %s", federation.bundle_endpoint_profile, sock.getsockname())
    await endpoint.serve(sock)


def _background_work(config: CaConfig, parts: CaParts) -> list[Coroutine[Any, Any, None]]:
    """What the CA runs beside its admin socket and health port: the node API and its own tasks."""
    database = parts.database
    work = [
        _serve_node_api(config, parts),
        parts.identity.run(),
        parts.rotator.run(),
        parts.refresher.run(),
        IssuedCertificateRetention(database, config.datastore.issued_certificate_retention, parts.clock).run(),
        AuditKeeper(database, parts.authorities, parts.audit, parts.clock, config.audit.checkpoint_interval).run(),
    ]
    if config.bridge.legacy_roots:
        work.append(parts.legacy_roots.run())
    if database.dialect == "postgresql":
        work.append(listen_for_changes(config.datastore.url, parts.hub, reload_shared=parts.rotator.reload_quietly))
    return work


async def serve(config: CaConfig, *, new_root: bool = False) -> None:
    """Serve until cancelled. Holds the data directory's lock throughout and checks every listening
    address before touching anything in it, so a second CA on the same data directory or ports stops
    with one error (FailedPrecondition or ConfigError) and leaves the first one's files alone."""
    lock = lock_data_dir(config.server.data_dir, key="server.data_dir", program="CA")
    try:
        await _serve_locked(config, new_root)
    except BaseExceptionGroup as group:  # one line for the CLI instead of a task-group traceback
        first = _first_domain_error(group)
        if first is None:
            raise
        raise first from None
    finally:
        lock.release()


async def _serve_locked(config: CaConfig, new_root: bool) -> None:
    _refuse_admin_socket_in_use(config.server.admin_socket)
    for key in ("node_api_address", "attestation_address"):
        bind_tcp(getattr(config.server, key), f"server.{key}", keep=False)
    http_socket = (
        bind_tcp(config.server.http_address, "server.http_address", keep=True) if config.server.http_address else None
    )
    endpoint_address = config.federation.bundle_endpoint_address
    endpoint_socket = (
        bind_tcp(endpoint_address, "federation.bundle_endpoint_address", keep=True) if endpoint_address else None
    )
    admin_api = config.admin_api
    admin_tcp = bind_tcp(admin_api.address, "admin_api.address", keep=True) if admin_api.address else None
    exchange_address = config.bridge.exchange_address
    exchange_socket = bind_tcp(exchange_address, "bridge.exchange_address", keep=True) if exchange_address else None
    parts = await asyncio.to_thread(functools.partial(build_service, config, new_root=new_root))
    service, metrics, database = parts.service, parts.metrics, parts.database
    https = (
        None
        if admin_tcp is None
        else prepare_https(
            admin_api,
            config.trust_domain,
            admin_tcp,
            current=parts.authorities.get_current,
            is_admin_entry=parts.entries.has_admin_entry,
            serving=parts.identity.get_current,
            clock=parts.clock,
        )
    )
    agents = AgentAdmin(database, parts.hub, parts.clock)
    inventory = Inventory(database, parts.clock)

    def admin_app(authenticator: Authenticator) -> FastAPI:
        return create_admin_app(
            service,
            metrics.registry,
            entries=parts.entries,
            join_tokens=parts.join_tokens,
            authorities=parts.officer,
            agents=agents,
            federation=parts.federation,
            mappings=parts.mappings,
            inventory=inventory,
            authenticator=authenticator,
            audit=parts.audit,
            audit_log=parts.audit_log,
            clock=parts.clock,
            admin_entry_role=admin_api.admin_entry_role,
        )

    admin_socket = _bind_admin_socket(config.server.admin_socket)
    local = uvicorn.Config(admin_app(BreakGlassAuthenticator()), http=admin_protocol(), log_config=None, lifespan="off")
    servers: list[tuple[uvicorn.Server, list[socket.socket] | None]] = [(uvicorn.Server(local), [admin_socket])]
    if config.server.http_address:
        host, _, port = config.server.http_address.rpartition(":")
        health = uvicorn.Config(
            create_health_app(service, metrics.registry, authorities=parts.officer),
            host=host,
            port=int(port),
            log_config=None,
            lifespan="off",
        )
        servers.append((uvicorn.Server(health), None if http_socket is None else [http_socket]))
    log.info(
        "trustmesh CA serving trust domain %s: admin socket %s, admin API (HTTPS) %s, health %s",
        config.trust_domain,
        config.server.admin_socket,
        admin_api.address or "(disabled)",
        config.server.http_address or "(disabled)",
    )
    ready = functools.partial(_wait_for_serving_svid, parts.identity)
    try:
        async with asyncio.TaskGroup() as group:
            for server, sockets in servers:
                group.create_task(serve_draining(server, sockets))
            work = _background_work(config, parts)
            if https is not None:
                work.append(serve_admin_https(admin_app(https.authenticator), https, ready))
            if exchange_socket is not None and parts.exchange is not None:
                work.append(serve_exchange(parts.exchange, exchange_socket, parts.identity.get_current, ready))
            if endpoint_socket is not None:
                work.append(_serve_bundle_endpoint(config, parts, endpoint_socket))
            for each in work:
                group.create_task(each)
    finally:
        config.server.admin_socket.unlink(missing_ok=True)
        database.close()
