"""``trustmesh-agent run``: the agent's composition root.

Order matters for availability: SVIDs saved before a restart are republished first, and both sockets
(Envoy SDS, SPIFFE Workload API) are served from that cache at once, so a restart during a CA outage
keeps proxies and applications working. Then the agent's own identity is started (attesting with the
join token on first run, or loading the saved agent SVID), and the manager holds the push stream to the
CA. With ``[health] address`` set, ``/live``, ``/ready`` and ``/metrics`` are served from the start
(:mod:`sds.health_server`), so an agent still attesting answers "not ready" with the reason. Everything
runs in one TaskGroup: if one part fails, the agent stops instead of half-serving.
SIGTERM (and SIGINT) stop it the same way, logged: every stream is closed and both sockets and their
private directories are removed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import signal
from collections.abc import Coroutine
from typing import Any

from sds.agent_svid import AgentIdentity, AgentSvidParams, load_bootstrap_bundle
from sds.cache import CacheSnapshot, WorkloadCache
from sds.certfiles import CertFileWriter
from sds.config import AgentConfig
from sds.files import make_public_directory
from sds.health import AgentHealth
from sds.health_server import bind_health_socket, health_app, serve_health
from sds.manager import AgentManager, ManagerParams
from sds.metrics import AgentMetrics, AgentStateCollector
from sds.node_client import NodeClient
from sds.peer_endpoint import AttestedEndpoint
from sds.persistence import AgentStore
from sds.sds_v3 import SecretDiscoveryService, add_sds_servicer
from sds.workload_api import MAX_REQUEST_BYTES, WorkloadApiService
from spiffe_core.clock import SystemClock
from spiffe_core.data_dir import lock_data_dir
from spiffe_core.errors import TrustmeshError
from spiffe_core.logs import configure_logging
from wire import workload_pb2_grpc

log = logging.getLogger(__name__)


def raise_open_file_limit(needed: int) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (as Go programs do at start) and return it.

    Each proxied connection costs four descriptors; a soft limit of 1024 (a common default) would let
    one uid's connections exhaust them, and a full descriptor table stops the proxy accepting anyone.
    Warns when even the hard limit is below ``needed``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = needed if hard == resource.RLIM_INFINITY else hard
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError) as err:
                log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, err)
    if soft < needed:
        log.warning(
            "the open-file limit is %d, below the %d the connection budgets can use (4 per connection); "
            "raise it (systemd: LimitNOFILE=) or lower limits.max_connections",
            soft,
            needed,
        )
    return soft


async def serve_agent(config: AgentConfig) -> None:
    raise_open_file_limit(4 * 2 * config.limits.max_connections + 256)
    clock = SystemClock()
    # Before anything in it is touched: a second agent stops here.
    lock = lock_data_dir(config.data_dir, key="data_dir", program="agent")
    health_socket = bind_health_socket(config.health)  # an address in use stops the agent now
    store = AgentStore(config.data_dir, config.trust_domain)
    client = NodeClient(
        trust_domain=config.trust_domain,
        server_address=config.server_address,
        attestation_address=config.attestation_address,
        server_name=config.server_name,
    )
    cache = WorkloadCache(CacheSnapshot(config.trust_domain))
    identity = AgentIdentity(
        client=client,
        store=store,
        params=AgentSvidParams(
            config.trust_domain, config.key_type, config.rotation.svid_rotation_fraction, config.rotation.jitter
        ),
        join_token=config.load_join_token,
        x509pop=config.x509pop_proof(),
        bootstrap_bundle=load_bootstrap_bundle(config.trust_bundle_path, config.trust_domain),
        clock=clock,
    )
    manager = AgentManager(
        client=client,
        cache=cache,
        store=store,
        identity=identity,
        params=ManagerParams(
            key_type=config.key_type,
            rotation_fraction=config.rotation.svid_rotation_fraction,
            jitter=config.rotation.jitter,
        ),
        clock=clock,
    )
    metrics = AgentMetrics()
    health = AgentHealth(
        identity=identity,
        cache=cache,
        sync=manager.sync_status,
        clock=clock,
        ca_contact_window=config.health.ca_contact_window,
    )
    metrics.registry.register(AgentStateCollector(health, config.health.max_svid_series))
    await manager.load_saved()
    for socket_dir in dict.fromkeys((config.sds_socket.parent, config.workload_api_socket.parent)):
        make_public_directory(socket_dir)
    limits = config.limits
    sds_endpoint = AttestedEndpoint(
        config.sds_socket,
        max_connections=limits.max_connections,
        max_connections_per_uid=limits.max_connections_per_uid,
    )
    sds_endpoint.add_servicer(
        lambda server: add_sds_servicer(
            SecretDiscoveryService(
                cache, sds_endpoint.attestor, max_resource_names=limits.sds_max_resource_names, metrics=metrics
            ),
            server,
        )
    )
    workload_endpoint = AttestedEndpoint(
        config.workload_api_socket,
        max_connections=limits.max_connections,
        max_connections_per_uid=limits.max_connections_per_uid,
        max_receive_message_bytes=MAX_REQUEST_BYTES,
    )
    workload_endpoint.add_servicer(
        lambda server: workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(
            WorkloadApiService(
                cache, workload_endpoint.attestor, manager, clock, bundle_refresher=manager, metrics=metrics
            ),
            server,
        )
    )
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(_stop_on_signal(), name="signals")
            if health_socket is not None:
                tasks.create_task(serve_health(health_socket, health_app(health, metrics.registry)), name="health")
            tasks.create_task(sds_endpoint.serve(), name="sds")
            tasks.create_task(workload_endpoint.serve(), name="workload-api")
            await identity.start()
            log.info(
                "agent %s ready; serving SDS at %s and the Workload API at %s",
                identity.spiffe_id,
                config.sds_socket,
                config.workload_api_socket,
            )
            tasks.create_task(until_stopped(identity.run(), "agent SVID"), name="agent-svid")
            tasks.create_task(until_stopped(manager.run(), "workload SVID"), name="manager")
            if config.cert_files:
                writer = CertFileWriter(cache, config.cert_files)
                tasks.create_task(until_stopped(writer.run(), "cert file"), name="cert-files")
    except* _Stopped:
        log.info("agent stopped; sockets removed")
    finally:
        await client.close()
        lock.release()


class _Stopped(Exception):
    """Raised in the agent's TaskGroup on SIGTERM/SIGINT: every other task is cancelled, so the
    endpoints close their streams and remove their sockets and private directories."""


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def until_stopped(part: Coroutine[Any, Any, None], name: str) -> None:
    """Run a part of the agent that works until the agent stops. A TaskGroup takes a task that ends
    cancelled for a task it cancelled itself and carries on without it, so a CancelledError raised from
    below the part (not by the group) would leave the agent serving SVIDs nobody renews any more; and a
    part that returns would do the same. Either is turned into an error that stops the agent."""
    try:
        await part
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        raise RuntimeError(f"the agent's {name} task was cancelled from within; stopping the agent") from None
    raise RuntimeError(f"the agent's {name} task ended; stopping the agent")


async def _stop_on_signal() -> None:
    loop = asyncio.get_running_loop()
    received: asyncio.Queue[signal.Signals] = asyncio.Queue()
    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, received.put_nowait, signum)
    try:
        first = await received.get()
    finally:
        for signum in _STOP_SIGNALS:
            loop.remove_signal_handler(signum)
    log.info("received %s; closing streams and removing the agent's sockets", first.name)
    raise _Stopped


def _first_domain_error(group: BaseExceptionGroup[BaseException]) -> TrustmeshError | None:
    for exc in group.exceptions:
        if isinstance(exc, TrustmeshError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_domain_error(exc)
            if found is not None:
                return found
    return None


# Allocations of tracked objects between two passes of the cyclic garbage collector's youngest
# generation (CPython's default is 700).
GC_YOUNG_THRESHOLD = 10_000


def collect_cycles_less_often() -> None:
    """Let the cyclic garbage collector's youngest generation grow to :data:`GC_YOUNG_THRESHOLD`.

    A change pushed to 1,000 SDS streams allocates tens of thousands of short-lived containers
    (futures, generator frames, messages), nearly all freed by reference counting the moment they are
    done; they are alive together only while the push is under way. At CPython's 700 that peak made the
    collector run ~18 young and ~2 older passes per push, about a sixth of the agent's CPU for it; at
    10,000 it ran about one pass per ten pushes (docs/performance.md). Cyclic garbage waits a little
    longer, which is safe only because what a caller sends never ends up in it: a refused request is
    freed when its call ends (:mod:`sds.refusal`), so the agent's memory bounds do not depend on when
    the collector runs."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def run_agent(config: AgentConfig) -> None:
    """Run until interrupted. A domain error that stops the agent (a refused join token, an expired
    agent SVID with no token) surfaces as itself, so the CLI prints one line, not a task-group trace."""
    configure_logging(config.log_level, config.log_format)
    collect_cycles_less_often()
    try:
        asyncio.run(serve_agent(config))
    except BaseExceptionGroup as group:
        first = _first_domain_error(group)
        if first is None:
            raise
        raise first from None
