"""Envoy SDS push fan-out: how fast a bundle change reaches 1,000 SDS streams on one agent.

The agent side runs in a child process exactly as ``trustmesh-agent run`` wires it: a WorkloadCache
behind the SDS v3 servicer, behind the peer-credential proxy on a Unix socket. The bench process opens
N StreamSecrets streams (``default`` + ``ROOTCA``, ACKing like Envoy) over ``--channels`` connections
of their own (as that many Envoys would; until 2026-11-28 gRPC's shared subchannel pool carried every
stream on one connection), then tells the child ``--pushes``
times to publish a snapshot whose bundle gained a CA certificate, and records when each stream receives
each push. The first push reaches streams that have just opened; the later ones reach established
streams, as a rotation or a new root reaches a running mesh. Latency = receive time - publish time
(CLOCK_MONOTONIC is system-wide on Linux); the server's CPU time from the publish until every stream
has received the push (all its threads) is the steadier figure on a busy machine.

The baseline, measured in the same run the same way: a bare grpc.aio server (no proxy, no cache) that
pushes one response of the size trustmesh's push had to every stream each time it is told to.

    python bench/sds_fanout.py [--streams 1000] [--channels 250] [--repeat 5] [--pushes 4]

Not a test; numbers depend on the machine, the ratio to the baseline is what travels.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from sds.cache import CacheSnapshot, WorkloadCache, WorkloadSvid
from sds.peer_endpoint import AttestedEndpoint
from sds.sds_v3 import SecretDiscoveryService, add_sds_servicer
from sds.server import collect_cycles_less_often
from spiffe_core.bundle import Bundle
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import signing_cert_builder, x509_svid_template

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
TD = TrustDomain("bench.example")


def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = signing_cert_builder(
        trust_domain=TD,
        public_key=key.public_key(),
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
        issuer_name=None,
        issuer_public_key=None,
        not_before=now - timedelta(minutes=1),
        not_after=now + timedelta(days=1),
    ).sign(key, hashes.SHA256())
    return cert, key


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def serve_agent(socket_path: Path) -> None:
    """Child: the agent's SDS stack; 'push' on stdin publishes a bundle change."""
    collect_cycles_less_often()  # as run_agent does
    ca_cert, ca_key = _ca("bench CA 1")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    leaf = x509_svid_template(
        spiffe_id=SpiffeId.parse("spiffe://bench.example/envoy"),
        public_key=key.public_key(),
        issuer=ca_cert,
        not_before=now - timedelta(minutes=1),
        not_after=now + timedelta(hours=1),
    ).builder.sign(ca_key, hashes.SHA256())
    svid = WorkloadSvid(
        entry_id="envoy",
        spiffe_id=SpiffeId.parse("spiffe://bench.example/envoy"),
        cert_chain=(leaf,),
        private_key=key,
        selectors=frozenset({Selector("unix", f"uid:{os.getuid()}")}),
    )
    snapshot = CacheSnapshot(TD, Bundle(TD, (ca_cert,), sequence=1), svids=(svid,), version=1)
    cache = WorkloadCache(snapshot)
    endpoint = AttestedEndpoint(socket_path, max_connections=100_000)
    endpoint.add_servicer(lambda server: add_sds_servicer(SecretDiscoveryService(cache, endpoint.attestor), server))
    async with endpoint:  # listening before the parent is told "ready"
        extras = (_ca("bench CA 2")[0], _ca("bench CA 3")[0])
        await _serve_until_eof(asyncio.Future(), lambda: _push_bundle(cache, extras))


async def _push_bundle(cache: WorkloadCache, extras: tuple[x509.Certificate, x509.Certificate]) -> None:
    """Publish the bundle with the other of two second CA certificates (made before the clock starts):
    every push is a change of the same size."""
    current = cache.get_snapshot()
    extra = extras[current.version % 2]
    assert current.bundle is not None
    bundle = current.bundle.with_changes(x509_authorities=(current.bundle.x509_authorities[0], extra))
    await cache.publish(CacheSnapshot(TD, bundle, svids=current.svids, version=current.version + 1))


class BareSds:
    """Baseline servicer: answer once, then push one fixed-size response per stream on each trigger,
    reading the client's requests (ACKs) in a task of the stream's own."""

    def __init__(self, response: discovery_pb2.DiscoveryResponse) -> None:
        self.response = response
        self.pushed = asyncio.Event()

    def push(self) -> None:
        pushed, self.pushed = self.pushed, asyncio.Event()
        pushed.set()

    async def StreamSecrets(self, requests: Any, context: Any) -> Any:
        await requests.__anext__()
        yield discovery_pb2.DiscoveryResponse(version_info="1", nonce="1", type_url=SECRET_TYPE)

        async def read() -> None:
            async for _ in requests:
                pass

        reader = asyncio.ensure_future(read())
        try:
            while not reader.done():
                await self.pushed.wait()
                yield self.response
        finally:
            reader.cancel()

    async def DeltaSecrets(self, requests: Any, context: Any) -> Any:
        raise NotImplementedError
        yield

    async def FetchSecrets(self, request: Any, context: Any) -> Any:
        raise NotImplementedError


def bare_response(size: int) -> discovery_pb2.DiscoveryResponse:
    """The baseline's push: one resource, padded so the message is ``size`` bytes, as trustmesh's was."""
    response = discovery_pb2.DiscoveryResponse(version_info="2", nonce="2", type_url=SECRET_TYPE)
    resource = response.resources.add(type_url=SECRET_TYPE)
    resource.value = b"x" * max(0, size - response.ByteSize() - 3)  # 3: the value's tag and length
    return response


async def serve_bare(socket_path: Path, size: int) -> None:
    response = bare_response(size)
    servicer = BareSds(response)
    server = grpc.aio.server()
    sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()

    async def push() -> None:
        servicer.push()

    await _serve_until_eof(asyncio.Future(), push)
    await server.stop(0)


async def _serve_until_eof(serving: Any, push: Any) -> None:
    task = asyncio.ensure_future(serving)
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    while line := (await reader.readline()).decode().strip():
        if line == "push":
            published = time.monotonic()
            cpu_before = time.process_time()
            await push()
            print(f"published {published} {cpu_before}", flush=True)
        elif line == "cpu":
            print(f"cpu {time.process_time()}", flush=True)
        elif line == "rss":
            print(f"rss {_rss_mb():.1f}", flush=True)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _stream(
    stub: Any,
    received: list[list[float]],
    complete: list[asyncio.Event],
    sizes: list[int],
    connected: asyncio.Event,
    counter: list[int],
    total: int,
) -> int:
    """One stream: ACK every response like Envoy; the receive time of push *i* goes to ``received[i]``,
    and ``complete[i]`` is set once all ``total`` streams have it."""
    queue: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
    await queue.put(discovery_pb2.DiscoveryRequest(type_url=SECRET_TYPE, resource_names=["default", "ROOTCA"]))

    async def requests() -> Any:
        while (item := await queue.get()) is not None:
            yield item

    call = stub.StreamSecrets(requests())
    responses = 0
    try:
        async for response in call:
            responses += 1
            await queue.put(
                discovery_pb2.DiscoveryRequest(  # SotW: every request names every subscribed resource
                    type_url=SECRET_TYPE,
                    resource_names=["default", "ROOTCA"],
                    version_info=response.version_info,
                    response_nonce=response.nonce,
                )
            )
            if responses == 1:
                counter[0] += 1
                if counter[0] == total:
                    connected.set()
            else:
                arrived = received[responses - 2]
                arrived.append(time.monotonic())
                if len(arrived) == total:
                    complete[responses - 2].set()
                sizes.append(response.ByteSize())
                if responses - 1 == len(received):
                    break
    finally:
        await queue.put(None)
        call.cancel()
    return responses


@dataclass
class Push:
    latencies: list[float]  # ms, sorted
    cpu_ms: float  # the server's, every thread, from the publish until every stream had it


async def measure(
    argv: list[str], streams: int, channels: int, socket_path: Path, pushes: int
) -> tuple[list[Push], float, int]:
    """Each push's latencies and server CPU, the server's RSS (MB) and the size of the push message
    (bytes)."""
    child = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        assert (await asyncio.wait_for(child.stdout.readline(), 30)).strip() == b"ready"
        # Each channel its own connection, as each Envoy has: gRPC would otherwise share one
        # connection among all channels to the same target, and carry every stream on it.
        own_connection = [("grpc.use_local_subchannel_pool", 1)]
        opened = [grpc.aio.insecure_channel(f"unix:{socket_path}", options=own_connection) for _ in range(channels)]
        stubs = [sds_pb2_grpc.SecretDiscoveryServiceStub(c) for c in opened]
        received: list[list[float]] = [[] for _ in range(pushes)]
        complete = [asyncio.Event() for _ in range(pushes)]
        sizes: list[int] = []
        connected = asyncio.Event()
        counter = [0]
        tasks = [
            asyncio.create_task(_stream(stubs[i % channels], received, complete, sizes, connected, counter, streams))
            for i in range(streams)
        ]
        await asyncio.wait_for(connected.wait(), 60)
        child.stdin.write(b"rss\n")
        rss = float((await child.stdout.readline()).split()[1])
        results: list[Push] = []
        for arrived, everyone in zip(received, complete, strict=True):
            child.stdin.write(b"push\n")
            published, cpu_before = map(float, (await asyncio.wait_for(child.stdout.readline(), 10)).split()[1:])
            with contextlib.suppress(TimeoutError):  # a stream that never got it shows in the count
                await asyncio.wait_for(everyone.wait(), 10)
            child.stdin.write(b"cpu\n")
            cpu_ms = (float((await child.stdout.readline()).split()[1]) - cpu_before) * 1000
            results.append(Push(sorted((t - published) * 1000 for t in arrived), cpu_ms))
            await asyncio.sleep(0.05)  # the ACKs settle before the next push
        await asyncio.wait(tasks, timeout=10)
        for task in tasks:
            task.cancel()
        for channel in opened:
            await channel.close(None)
        return results, rss, max(sizes, default=0)
    finally:
        child.stdin.close()
        try:
            await asyncio.wait_for(child.wait(), 10)
        except TimeoutError:
            child.kill()


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def _p99_of(pushes: list[Push]) -> float:
    return _pct(sorted(t for p in pushes for t in p.latencies), 0.99)


def _cpu_of(pushes: list[Push]) -> float:
    return statistics.fmean(p.cpu_ms for p in pushes)


async def main_async(streams: int, channels: int, repeat: int, pushes: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ratios: dict[str, list[float]] = {"first": [], "established": []}
    cpu_ratios: dict[str, list[float]] = {"first": [], "established": []}
    print(
        f"streams: {streams} over {channels} channels; {repeat} rounds, each trustmesh then the bare loop; "
        f"{pushes} pushes per round: the first to new streams, the rest to established ones"
    )
    for round_number in range(1, repeat + 1):
        with tempfile.TemporaryDirectory() as tmp:
            agent_socket, bare_socket = Path(tmp) / "sds.sock", Path(tmp) / "bare.sock"
            me = [sys.executable, __file__]
            ours, rss, size = await measure(
                [*me, "--serve-agent", str(agent_socket)], streams, channels, agent_socket, pushes
            )
            # The baseline pushes a message of the size trustmesh pushed (its certificate, key and roots).
            bare_server = [*me, "--serve-bare", str(bare_socket), "--bare-size", str(size)]
            bare, _, _ = await measure(bare_server, streams, channels, bare_socket, pushes)
        parts = {"first": (ours[:1], bare[:1]), "established": (ours[1:], bare[1:])}
        line = []
        for name, (mine, theirs) in parts.items():
            if not mine:
                continue
            ratios[name].append(_p99_of(mine) / _p99_of(theirs))
            cpu_ratios[name].append(_cpu_of(mine) / _cpu_of(theirs))
            line.append(
                f"{name}: trustmesh p50 {_pct(sorted(t for p in mine for t in p.latencies), 0.5):6.1f} ms "
                f"p99 {_p99_of(mine):6.1f} ms CPU {_cpu_of(mine):4.0f} ms; bare p50 "
                f"{_pct(sorted(t for p in theirs for t in p.latencies), 0.5):6.1f} ms p99 {_p99_of(theirs):6.1f} ms "
                f"CPU {_cpu_of(theirs):4.0f} ms; p99 ratio {ratios[name][-1]:.2f}x, "
                f"CPU ratio {cpu_ratios[name][-1]:.2f}x"
            )
        delivered = min(len(p.latencies) for p in ours)
        bare_delivered = min(len(p.latencies) for p in bare)
        print(
            f"round {round_number}: pushed to {delivered}/{streams} (trustmesh), {bare_delivered}/{streams} (bare) "
            f"every time; {size} bytes each; agent RSS {rss:.0f} MB\n  " + "\n  ".join(line),
            flush=True,
        )
    for name, p99s in ratios.items():
        cpus = cpu_ratios[name]
        if p99s:
            print(
                f"{name} push, p99 trustmesh / bare, median of {repeat} rounds: {statistics.median(p99s):.2f}x "
                f"(min {min(p99s):.2f}x, max {max(p99s):.2f}x; goal <= 1.3x, agent RSS < 150 MB); "
                f"server CPU per push {statistics.median(cpus):.2f}x (min {min(cpus):.2f}x, max {max(cpus):.2f}x)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=250)
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the ratio's median is reported")
    parser.add_argument("--pushes", type=int, default=4, help="pushes per round: the first to new streams")
    parser.add_argument("--serve-agent", help=argparse.SUPPRESS)
    parser.add_argument("--serve-bare", help=argparse.SUPPRESS)
    parser.add_argument("--bare-size", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_agent:
        asyncio.run(serve_agent(Path(args.serve_agent)))
    elif args.serve_bare:
        asyncio.run(serve_bare(Path(args.serve_bare), args.bare_size))
    else:
        asyncio.run(main_async(args.streams, args.channels, args.repeat, args.pushes))


if __name__ == "__main__":
    main()
