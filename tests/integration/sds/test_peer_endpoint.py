"""The attesting endpoint (sds/peer_endpoint.py) on real Unix sockets: who may connect where, what the
proxy remembers per connection and forgets, what it refuses to overwrite, and that it copies large
messages intact."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from io import BufferedReader
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from sds.attestor import ExecutableDigests, ProcessAttestor
from sds.cache import WorkloadCache
from sds.peer_endpoint import AttestedEndpoint
from sds.sds_v3 import SecretDiscoveryService, add_sds_servicer
from sds.secrets import SECRET_TYPE_URL
from sds.workload_api import WorkloadApiService
from spiffe_core.clock import SystemClock
from spiffe_core.errors import ConfigError
from tests.support.grpc_streams import Stream
from tests.support.sds_snapshots import TestCa, snapshot
from tests.support.workload_api import SECURITY_HEADER, FakeJwtMinter, TestJwtKey, socket_directory
from wire import workload_pb2, workload_pb2_grpc

ME = f"unix:uid:{os.getuid()}"
WAIT = 5.0


@dataclass
class Served:
    ca: TestCa
    cache: WorkloadCache
    endpoint: AttestedEndpoint
    directory: Path


@pytest.fixture
def directory() -> Iterator[Path]:
    with socket_directory() as path:
        yield path


def make_endpoint(ca: TestCa, cache: WorkloadCache, public: Path, **options: Any) -> AttestedEndpoint:
    endpoint = AttestedEndpoint(public, **options)
    service = WorkloadApiService(
        cache, endpoint.attestor, FakeJwtMinter(TestJwtKey.create(ca.trust_domain)), SystemClock()
    )
    endpoint.add_servicer(lambda server: workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(service, server))
    return endpoint


@pytest.fixture
async def served(directory: Path) -> AsyncIterator[Served]:
    ca = TestCa.create("example.org")
    cache = WorkloadCache(snapshot(ca, [ca.svid("/web", [ME])]))
    async with make_endpoint(ca, cache, directory / "workload.sock") as endpoint:
        yield Served(ca, cache, endpoint, directory)


async def fetch_svids(target: str) -> Any:
    # A private subchannel pool: gRPC would otherwise share one connection between the channels of a process.
    async with grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        call = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel).FetchX509SVID(
            workload_pb2.X509SVIDRequest(), metadata=SECURITY_HEADER
        )
        try:
            return await asyncio.wait_for(call.read(), WAIT)
        finally:
            call.cancel()


async def wait_until(condition: Any, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"{what} did not happen within {WAIT}s"
        await asyncio.sleep(0.02)


async def test_public_socket_is_open_to_every_user(served: Served) -> None:
    info = (served.directory / "workload.sock").lstat()
    assert (stat.S_ISSOCK(info.st_mode), stat.S_IMODE(info.st_mode)) == (True, 0o666)


async def test_private_sockets_live_in_an_owner_only_directory(served: Served) -> None:
    info = (served.directory / ".workload.sock.d").lstat()
    assert (stat.S_ISDIR(info.st_mode), stat.S_IMODE(info.st_mode), info.st_uid) == (True, 0o700, os.geteuid())


async def test_serves_a_caller_through_the_public_socket(served: Served) -> None:
    response = await fetch_svids(f"unix:{served.directory / 'workload.sock'}")
    assert [s.spiffe_id for s in response.svids] == ["spiffe://example.org/web"]


async def test_refuses_a_call_made_straight_to_the_private_socket(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await fetch_svids(f"unix:{served.directory / '.workload.sock.d' / 'grpc.sock'}")
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert failure.value.details().startswith("the caller could not be attested: connection 'unix:")
    assert failure.value.details().endswith(
        "' did not come through the agent's public socket, or has closed; connect to the Workload API "
        "socket the agent serves"
    )


async def test_forgets_a_connection_when_the_client_disconnects(served: Served) -> None:
    private = served.directory / ".workload.sock.d"
    async with grpc.aio.insecure_channel(f"unix:{served.directory / 'workload.sock'}") as channel:
        await channel.channel_ready()
        await wait_until(lambda: served.endpoint.attestor.connections == 1, "registering the connection")
        assert len(list(private.iterdir())) == 2  # grpc.sock and the proxy's bound client socket
    await wait_until(lambda: served.endpoint.attestor.connections == 0, "forgetting the connection")
    assert [p.name for p in private.iterdir()] == ["grpc.sock"]


async def test_callers_that_hang_up_at_once_leave_nothing_behind(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    # Each caller is gone before, while or just after the proxy connects its upstream socket.
    private = served.directory / ".workload.sock.d"
    loop = asyncio.get_running_loop()
    for hang_up_after in range(50):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        await loop.sock_connect(sock, str(served.directory / "workload.sock"))
        for _ in range(hang_up_after % 5):
            await asyncio.sleep(0)
        sock.close()
    await wait_until(lambda: served.endpoint.attestor.connections == 0, "forgetting every connection")
    await wait_until(lambda: [p.name for p in private.iterdir()] == ["grpc.sock"], "removing every bound socket")
    assert served.endpoint.connections_of(os.getuid()) == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []  # a hang-up is no failure
    response = await fetch_svids(f"unix:{served.directory / 'workload.sock'}")
    assert [s.spiffe_id for s in response.svids] == ["spiffe://example.org/web"]


async def test_copies_responses_larger_than_its_buffers_intact(served: Served) -> None:
    svids = [served.ca.svid(f"/svc-{n}", [ME]) for n in range(300)]
    await served.cache.publish(snapshot(served.ca, svids, version=2))
    response = await fetch_svids(f"unix:{served.directory / 'workload.sock'}")
    assert response.ByteSize() > 256 * 1024
    assert [s.spiffe_id for s in response.svids] == [str(s.spiffe_id) for s in svids]


async def test_refuses_connections_beyond_the_limit(directory: Path) -> None:
    ca = TestCa.create("example.org")
    cache = WorkloadCache(snapshot(ca, [ca.svid("/web", [ME])]))
    public = directory / "workload.sock"
    async with (
        make_endpoint(ca, cache, public, max_connections=1) as endpoint,
        grpc.aio.insecure_channel(f"unix:{public}") as first,
    ):
        await first.channel_ready()
        await wait_until(lambda: endpoint.attestor.connections == 1, "registering the first connection")
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await fetch_svids(f"unix:{public}")
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_stop_removes_both_sockets_and_the_private_directory(directory: Path) -> None:
    ca = TestCa.create("example.org")
    endpoint = make_endpoint(ca, WorkloadCache(snapshot(ca)), directory / "workload.sock")
    await endpoint.start()
    await endpoint.stop()
    assert os.listdir(directory) == []


async def test_serve_signals_ready_and_cleans_up_when_cancelled(directory: Path) -> None:
    ca = TestCa.create("example.org")
    endpoint = make_endpoint(ca, WorkloadCache(snapshot(ca)), directory / "workload.sock")
    serving = asyncio.create_task(endpoint.serve())
    await asyncio.wait_for(endpoint.ready.wait(), WAIT)
    assert sorted(os.listdir(directory)) == [".workload.sock.d", "workload.sock"]
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    assert (endpoint.ready.is_set(), os.listdir(directory)) == (False, [])


async def test_replaces_a_stale_socket_left_by_an_earlier_run(directory: Path) -> None:
    public = directory / "workload.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(public))
    ca = TestCa.create("example.org")
    cache = WorkloadCache(snapshot(ca, [ca.svid("/web", [ME])]))
    async with make_endpoint(ca, cache, public):
        response = await fetch_svids(f"unix:{public}")
    assert len(response.svids) == 1


async def test_refuses_to_replace_a_file_that_is_not_a_socket(directory: Path) -> None:
    public = directory / "workload.sock"
    public.write_text("not a socket")
    ca = TestCa.create("example.org")
    endpoint = make_endpoint(ca, WorkloadCache(snapshot(ca)), public)
    with pytest.raises(ConfigError) as failure:
        await endpoint.start()
    assert str(failure.value) == (
        f"{public} exists and is not a socket; refusing to replace it with the Workload API socket — "
        "remove it or configure another path"
    )
    assert public.read_text() == "not a socket"
    assert os.listdir(directory) == ["workload.sock"]


async def test_refuses_a_private_directory_that_is_a_symlink(directory: Path) -> None:
    (directory / ".workload.sock.d").symlink_to(directory / "elsewhere")
    ca = TestCa.create("example.org")
    endpoint = make_endpoint(ca, WorkloadCache(snapshot(ca)), directory / "workload.sock")
    with pytest.raises(ConfigError) as failure:
        await endpoint.start()
    assert str(failure.value) == (
        f"{directory / '.workload.sock.d'} exists and is not a directory owned by this agent (uid "
        f"{os.geteuid()}); the agent keeps its private sockets there — remove it"
    )
    await endpoint.stop()
    assert (directory / ".workload.sock.d").is_symlink()


async def test_refuses_a_socket_path_too_long_for_its_private_sockets(directory: Path) -> None:
    public = directory / ("x" * (90 - len(str(directory)))) / "w.sock"
    ca = TestCa.create("example.org")
    endpoint = make_endpoint(ca, WorkloadCache(snapshot(ca)), public)
    with pytest.raises(ConfigError) as failure:
        await endpoint.start()
    assert str(failure.value).startswith(f"Unix socket path {public.parent / '.w.sock.d' / 'c-0000000000000000'} is ")
    assert str(failure.value).endswith(
        "bytes, longer than the 107 a socket address holds (the proxy's private sockets live next to "
        "w.sock); put the socket in a shorter directory"
    )


NOBODY = 65534
# Holds ``count`` connections to the socket as the uid it runs as, says "held", and waits for stdin to close.
HOLDER = """
import socket, sys
held = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    held.append(s)
print("held", flush=True)
sys.stdin.read()
"""


def as_nobody(*argv: str) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]


async def hold_connections_as_nobody(public: Path, count: int) -> asyncio.subprocess.Process:
    child = await asyncio.create_subprocess_exec(
        *as_nobody(sys.executable, "-c", HOLDER, str(public), str(count)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None
    assert await asyncio.wait_for(child.stdout.readline(), WAIT) == b"held\n"
    return child


async def release(child: asyncio.subprocess.Process) -> None:
    assert child.stdin is not None
    child.stdin.close()
    await asyncio.wait_for(child.wait(), WAIT)


@pytest.fixture
def shared_directory(directory: Path) -> Path:
    """The socket directory opened to other users, as the agent's socket directory is."""
    directory.chmod(0o755)
    return directory


async def test_a_uid_over_its_budget_is_refused_while_another_uid_connects(
    shared_directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = TestCa.create("example.org")
    cache = WorkloadCache(snapshot(ca, [ca.svid("/web", [ME])]))
    public = shared_directory / "workload.sock"
    async with make_endpoint(ca, cache, public, max_connections=10, max_connections_per_uid=3) as endpoint:
        child = await hold_connections_as_nobody(public, 40)  # 3 are kept, 37 closed at once
        try:
            await wait_until(lambda: endpoint.connections_of(NOBODY) == 3, "nobody's budget to fill")
            response = await fetch_svids(f"unix:{public}")  # root still connects
            assert [s.spiffe_id for s in response.svids] == ["spiffe://example.org/web"]
            assert endpoint.connections_of(NOBODY) == 3
        finally:
            await release(child)
        await wait_until(lambda: endpoint.connections_of(NOBODY) == 0, "nobody's connections to be forgotten")
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refusing connections")]
    assert refusals == [  # 37 refusals, one line: at most one per 10 s per uid
        f"refusing connections to {public} from uid {NOBODY}: uid {NOBODY} holds 3 connections already "
        "(limits.max_connections_per_uid); its processes must close connections they no longer use"
    ]


async def test_a_uid_over_its_budget_gets_its_new_connections_closed(directory: Path) -> None:
    ca = TestCa.create("example.org")
    cache = WorkloadCache(snapshot(ca, [ca.svid("/web", [ME])]))
    public = directory / "workload.sock"
    async with (
        make_endpoint(ca, cache, public, max_connections=10, max_connections_per_uid=1) as endpoint,
        grpc.aio.insecure_channel(f"unix:{public}") as first,
    ):
        await first.channel_ready()
        await wait_until(lambda: endpoint.connections_of(os.getuid()) == 1, "registering the first connection")
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await fetch_svids(f"unix:{public}")
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        assert endpoint.attestor.connections == 1


async def test_a_request_over_the_message_limit_is_resource_exhausted(directory: Path) -> None:
    ca = TestCa.create("example.org")
    cache = WorkloadCache(snapshot(ca, [ca.svid("/web", [ME])]))
    public = directory / "workload.sock"
    async with (
        make_endpoint(ca, cache, public, max_receive_message_bytes=64 * 1024),
        grpc.aio.insecure_channel(f"unix:{public}") as channel,
    ):
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.FetchJWTSVID(
                workload_pb2.JWTSVIDRequest(audience=["x" * 100_000]), metadata=SECURITY_HEADER, timeout=WAIT
            )
        assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


class CountingDigests(ExecutableDigests):
    """Counts the reads of a caller's executable (one per attestation read of /proc)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def digest(self, path: str, file: BufferedReader) -> str:
        self.reads += 1
        return super().digest(path, file)


async def test_a_change_pushed_to_many_streams_of_one_process_reads_its_proc_once(directory: Path) -> None:
    # Every stream is attested again before its push; streams of one process asking together share
    # one read (docs/workload-api.md "One read for many answers").
    ca = TestCa.create("example.org")
    cache = WorkloadCache(snapshot(ca, [ca.svid("/web", [ME])]))
    digests = CountingDigests()
    endpoint = AttestedEndpoint(directory / "sds.sock", process_attestor=ProcessAttestor(digests))
    endpoint.add_servicer(lambda server: add_sds_servicer(SecretDiscoveryService(cache, endpoint.attestor), server))
    async with endpoint, grpc.aio.insecure_channel(f"unix:{endpoint.public_socket}") as channel:
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        streams = [Stream(stub.StreamSecrets()) for _ in range(20)]
        try:
            for stream in streams:
                await stream.send(
                    discovery_pb2.DiscoveryRequest(type_url=SECRET_TYPE_URL, resource_names=["default", "ROOTCA"])
                )
                await stream.next()  # the first answer: attested when it opened and before it answered
            before = digests.reads
            await cache.publish(snapshot(TestCa.create("example.org"), [ca.svid("/web", [ME])], version=2))
            pushed = [await stream.next() for stream in streams]
        finally:
            for stream in streams:
                await stream.close()
    assert {p.version_info.split("-")[0] for p in pushed} == {"2"}
    assert digests.reads - before == 1


async def test_a_failure_while_connecting_a_caller_closes_its_connection_instead_of_holding_it(
    served: Served, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(sock: socket.socket, pid: int) -> int:
        raise ValueError("a bug while reading the caller's pidfd")

    monkeypatch.setattr("sds.peer_endpoint.open_peer_pidfd", broken)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await fetch_svids(f"unix:{served.directory / 'workload.sock'}")
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    await wait_until(lambda: served.endpoint.connections_of(os.getuid()) == 0, "giving the slot back")
    assert served.endpoint.attestor.connections == 0
    assert "proxying a connection from" in caplog.text
