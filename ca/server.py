"""``trustmesh-ca run``: the composition root. Builds every part from the config and serves them in
one asyncio TaskGroup, so if one listener dies the whole process stops instead of half-serving."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path

import uvicorn

from ca.authority_manager import AuthorityManager, AuthorityParams
from ca.config import CaConfig
from ca.http_api import create_admin_app, create_health_app
from ca.issuance import TtlPolicy
from ca.keys import open_key_manager
from ca.metrics import CaMetrics
from ca.service import CaService
from ca.store.engine import Database
from ca.upstream import CaSubject, DiskUpstream, SelfSignedUpstream, UpstreamAuthority
from spiffe_core.clock import SystemClock

log = logging.getLogger(__name__)


def _upstream(config: CaConfig) -> UpstreamAuthority:
    upstream = config.ca.upstream
    if upstream.kind == "disk":
        assert upstream.cert_file is not None and upstream.key_file is not None  # noqa: S101 - config validates
        return DiskUpstream.load(upstream.cert_file, upstream.key_file, upstream.bundle_file)
    return SelfSignedUpstream()


def build_service(config: CaConfig) -> tuple[CaService, CaMetrics, Database]:
    """Open the datastore (migrating it), the key manager and the authorities; blocking."""
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
        ),
        clock,
    )
    authorities.load()
    metrics = CaMetrics()
    service = CaService(
        database=database,
        authorities=authorities,
        x509_ttl=TtlPolicy(config.x509_svid.default_ttl, config.x509_svid.max_ttl),
        jwt_ttl=TtlPolicy(config.jwt_svid.default_ttl, config.jwt_svid.max_ttl),
        clock=clock,
        metrics=metrics,
    )
    return service, metrics, database


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


async def serve(config: CaConfig) -> None:
    service, metrics, database = await asyncio.to_thread(build_service, config)
    admin_socket = _bind_admin_socket(config.server.admin_socket)
    servers: list[tuple[uvicorn.Server, list[socket.socket] | None]] = [
        (
            uvicorn.Server(uvicorn.Config(create_admin_app(service, metrics.registry), log_config=None, lifespan="off")),
            [admin_socket],
        )
    ]
    if config.server.http_address:
        host, _, port = config.server.http_address.rpartition(":")
        health = uvicorn.Config(
            create_health_app(service, metrics.registry), host=host, port=int(port), log_config=None, lifespan="off"
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
    finally:
        config.server.admin_socket.unlink(missing_ok=True)
        database.close()
