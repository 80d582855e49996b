"""X509-SVID issuance through the node API against cfssl, measured in the same run.

trustmesh side, as in production: a real ``trustmesh-ca run`` process (SQLite datastore, audit on,
signing rate limit off so the bench measures the CA, not the limiter) and an attested client made of
the agent's own code (:class:`sds.node_client.NodeClient`): a join token, ``Attest`` for the agent's
X509-SVID, then ``SignX509Svids`` over mTLS for registration entries parented to that agent. The CSRs
come from a pool generated beforehand, each with its own P-256 key, so no key or CSR is made while
the clock runs.

cfssl side (when ``cfssl`` is on PATH; ``scripts/bench-deps`` installs Debian's ``golang-cfssl``):
``cfssl serve`` with a P-256 CA of its own, sent the same CSR pool one per request (its sign API has
no batches) as ``POST /api/v1/cfssl/sign`` over keep-alive HTTP/1.1 connections.

Each phase sends SVIDs in batches of 1, 10 or 100 over 1 or 4 connections (one call in flight on
each), until ``--svids`` SVIDs or ``--seconds`` have passed. The server's CPU seconds come from
``/proc/<pid>/stat`` (user + system, every thread) before and after the phase. With ``taskset`` and two
or more cores, the server under test runs on core 0 (the CA, then cfssl, in turn: never both busy)
and this process on core 1. A sample of leaves from every phase is verified: it chains to its CA, it
holds the key of the CSR it answers, and (trustmesh) it is an X509-SVID of the entry's SPIFFE ID.

    scripts/bench-deps    # once: cfssl
    python bench/node_api.py [--svids 2000] [--seconds 20] [--pool 1000] [--batches 1,10,100] [--channels 1,4]
    python bench/node_api.py --replicas 2 [--replica-connections 4]
    python bench/node_api.py --sparse 1.3 [--sparse-calls 30]

``--replicas N`` compares instead the same load on one CA replica and spread over N replicas of one
PostgreSQL database (a throwaway server from tests/support/postgres.py; ``scripts/ensure-postgres``),
sharing one key directory and KEK, replica i pinned to core i (docs/architecture.md: why replicas).

Before the CA, the same batch-1 load goes to a bare ``grpc.aio`` server process (TLS, the node API's
``SignX509Svids`` method, no handler code: it answers every call with one stored reply of the real
size): gRPC's own CPU per call, the floor under any call a Python CA answers with grpcio, printed
beside what a batch-1 call costs the CA (``--no-floor`` skips it).

Printed: SVIDs/s, server CPU ms per 1,000 SVIDs, the share of the CA's CPU spent on its event loop
thread, and the client's CPU share per phase, then per
(batch, connections) the ratios to cfssl at the same number of connections — the figures that travel
between machines. Not a test; never run in CI (tests/e2e/test_bench_node_api.py only checks it
runs with tiny counts).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sds.node_client import AgentCredentials, NodeClient, make_csr
from spiffe_core.bundle import Bundle
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import X509Svid, load_pem_certificates, verify_x509_svid
from tests.support.postgres import PostgresServer  # the tests' throwaway server (scripts/ensure-postgres)
from wire import node_pb2

TRUST_DOMAIN = TrustDomain("bench.example")
REPO = Path(__file__).resolve().parents[1]  # the CA measured is this checkout's (PYTHONPATH for the child)
BIN_DIR = Path(sys.executable).parent
SERVER_NAME = "trustmesh-ca"
SAMPLES_PER_PHASE = 5
READY_TIMEOUT = 30.0
CALL_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process and all its threads (``/proc/<pid>/stat`` 14 and 15)."""
    return _stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def main_thread_cpu_seconds(pid: int) -> float:
    """The same for the process's main thread alone: the CA's event loop, where gRPC's handlers run
    (a lone rotation is signed there too); the rest is gRPC's own threads and the worker threads."""
    return _stat_cpu_seconds(Path(f"/proc/{pid}/task/{pid}/stat"))


def _stat_cpu_seconds(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its live children (a PostgreSQL postmaster and its backends)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return cpu_seconds(pid) + sum(cpu_seconds(int(child)) for child in children)


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pinning() -> tuple[list[str], bool]:
    """The ``taskset`` prefix for a server (core 0), and whether this process moved itself to core 1."""
    if shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2:
        return [], False
    os.sched_setaffinity(0, {1})
    return ["taskset", "-c", "0"], True


@dataclass(frozen=True)
class PooledCsr:
    der: bytes
    pem: bytes
    public_der: bytes  # SubjectPublicKeyInfo, to check the leaf holds this key


def make_pool(size: int) -> list[PooledCsr]:
    pool = []
    for _ in range(size):
        key = ec.generate_private_key(ec.SECP256R1())
        der = make_csr(key)
        pem = x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM)
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        pool.append(PooledCsr(der, pem, public))
    return pool


def _public_der(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass
class Phase:
    """One measured run: what was sent, how long it took, what it cost the server and this process."""

    server: str
    batch: int
    connections: int
    svids: int = 0
    seconds: float = 0.0
    server_cpu: float = 0.0
    main_thread_cpu: float = 0.0
    client_cpu: float = 0.0
    database_cpu: float = 0.0
    verified: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.svids / self.seconds if self.seconds else float("nan")

    @property
    def cpu_ms_per_1000(self) -> float:
        return self.server_cpu / self.svids * 1e6 if self.svids else float("nan")


# A sender signs one batch of (pool index, entry number) on one connection; it returns the leaf
# certificates in order (DER), raising on any refusal.
Sender = Callable[[int, Sequence[int]], Awaitable[list[bytes]]]


async def run_phase(
    phase: Phase,
    pids: Sequence[int],
    send: Sender,
    pool: Sequence[PooledCsr],
    total: int,
    limit_s: float,
    verify: Callable[[bytes, PooledCsr, int], None],
) -> Phase:
    """Send ``total`` SVIDs (fewer if ``limit_s`` runs out) in batches of ``phase.batch``, one call in
    flight per connection; verify a few leaves afterwards."""
    next_index = 0
    samples: list[tuple[bytes, int]] = []
    stop_at = time.monotonic() + limit_s

    async def worker(connection: int) -> None:
        nonlocal next_index
        while next_index < total and time.monotonic() < stop_at:
            start = next_index
            count = min(phase.batch, total - start)
            next_index += count
            indices = list(range(start, start + count))
            leaves = await send(connection, indices)
            phase.svids += len(leaves)
            if len(samples) < SAMPLES_PER_PHASE:
                samples.append((leaves[0], indices[0]))

    cpu_before, own_before = sum(cpu_seconds(pid) for pid in pids), own_cpu_seconds()
    main_before = sum(main_thread_cpu_seconds(pid) for pid in pids)
    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in range(phase.connections)))
    phase.seconds = time.perf_counter() - started
    phase.server_cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
    phase.main_thread_cpu = sum(main_thread_cpu_seconds(pid) for pid in pids) - main_before
    phase.client_cpu = own_cpu_seconds() - own_before
    for leaf, index in samples:
        verify(leaf, pool[index % len(pool)], index)
        phase.verified += 1
    return phase


class ChildServer:
    """A server under test as a child process of this one, its output in ``log``."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log
        self.log = log.open("wb")
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    async def wait_listening(self, port: int, what: str) -> None:
        """Return once the server accepts connections on ``port``; raise, with the end of its log, when
        it exits first or takes longer than :data:`READY_TIMEOUT`."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{what} exited {self.process.returncode}: {self.tail()}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{what} did not listen within {READY_TIMEOUT:.0f} s: {self.tail()}")

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()


class TrustmeshCa(ChildServer):
    """A ``trustmesh-ca run`` child process with its data in ``root/name``; ``extra`` is more of its
    configuration (TOML sections)."""

    def __init__(self, root: Path, taskset: list[str], name: str = "ca", extra: str = "") -> None:
        self.root = root
        self.name = name
        self.http_port, self.node_port, self.attestation_port = free_port(), free_port(), free_port()
        self.config = root / f"{name}.toml"
        self.config.write_text(
            f'trust_domain = "{TRUST_DOMAIN.name}"\n'
            "[node_api.ratelimit]\nsigning = 0\n"  # measure signing, not the per-agent limit
            f'[server]\ndata_dir = "{root / name}"\nserver_name = "{SERVER_NAME}"\n'
            f'http_address = "127.0.0.1:{self.http_port}"\nnode_api_address = "127.0.0.1:{self.node_port}"\n'
            f'attestation_address = "127.0.0.1:{self.attestation_port}"\n{extra}'
        )
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        argv = [*taskset, str(BIN_DIR / "trustmesh-ca"), "--config", str(self.config), "run"]
        super().__init__(argv, root / f"{name}.log", self.env)

    def admin(self) -> httpx.Client:
        """The admin API on the CA's local socket (what ``trustmesh-ca`` commands call)."""
        transport = httpx.HTTPTransport(uds=str(self.root / self.name / "admin.sock"))
        return httpx.Client(transport=transport, base_url="http://trustmesh-ca", timeout=30)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"trustmesh-ca exited {self.process.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.http_port}/ready", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"trustmesh-ca was not ready within {READY_TIMEOUT:.0f} s:\n{self.tail()}")

    def enrol(self, entry_count: int) -> tuple[str, list[tuple[str, SpiffeId]], Bundle]:
        """A join token, ``entry_count`` entries parented to its agent ID and the CA's roots, through the
        admin socket (the routes ``token generate``, ``entry create`` and ``bundle show`` call)."""
        with self.admin() as admin:
            token = _ok(admin.post("/v1/join-tokens", json={"node_name": "bench", "ttl_seconds": 600}), 201)
            entries = []
            for n in range(entry_count):
                spiffe_id = SpiffeId.from_segments(TRUST_DOMAIN, "bench", f"w{n}")
                body = {"spiffe_id": str(spiffe_id), "parent_id": token["spiffe_id"], "selectors": [f"unix:uid:{n}"]}
                entries.append((str(_ok(admin.post("/v1/entries", json=body), 201)["id"]), spiffe_id))
            pem = admin.get("/v1/bundle", params={"format": "pem"})
            pem.raise_for_status()
        return str(token["token"]), entries, Bundle(TRUST_DOMAIN, x509_authorities=load_pem_certificates(pem.content))


def _ok(reply: httpx.Response, status: int) -> dict[str, Any]:
    if reply.status_code != status:
        raise RuntimeError(f"{reply.request.method} {reply.request.url.path}: {reply.status_code} {reply.text}")
    body: dict[str, Any] = reply.json()
    return body


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


class AttestedAgent:
    """The agent's node client, attested with a join token; one client (one channel) per connection."""

    def __init__(self, clients: list[NodeClient], entries: list[tuple[str, SpiffeId]], bundle: Bundle) -> None:
        self.clients = clients
        self.entries = entries
        self.bundle = bundle

    @classmethod
    async def attest(cls, ca: TrustmeshCa, entry_count: int, connections: int, *more: TrustmeshCa) -> AttestedAgent:
        """Attested at ``ca``, with ``connections`` clients to ``ca`` and as many to each of ``more``
        (other replicas of it), in that order."""
        token, entries, roots = ca.enrol(entry_count)

        def client(server: TrustmeshCa) -> NodeClient:
            return NodeClient(
                trust_domain=TRUST_DOMAIN,
                server_address=f"127.0.0.1:{server.node_port}",
                attestation_address=f"127.0.0.1:{server.attestation_port}",
                server_name=SERVER_NAME,
                rpc_timeout=CALL_TIMEOUT,
            )

        key = ec.generate_private_key(ec.SECP256R1())
        first = client(ca)
        attested = await first.attest(roots, "join_token", token.encode(), make_csr(key))
        credentials = AgentCredentials(X509Svid(attested.spiffe_id, attested.cert_chain, key), attested.bundle)
        clients = [first, *(client(ca) for _ in range(connections - 1))]
        clients += [client(server) for server in more for _ in range(connections)]
        for each in clients:
            each.use_credentials(credentials)
        return cls(clients, entries, attested.bundle)

    def sender(self, pool: Sequence[PooledCsr], clients: Sequence[int] | None = None) -> Sender:
        """Connection ``n`` of a phase is client ``clients[n]`` (default: client ``n``)."""
        chosen = list(range(len(self.clients))) if clients is None else list(clients)

        async def send(connection: int, indices: Sequence[int]) -> list[bytes]:
            items = [(self.entries[i % len(self.entries)][0], pool[i % len(pool)].der) for i in indices]
            signed = await self.clients[chosen[connection]].sign_x509_svids(items)
            refused = [s.error for s in signed if s.error]
            if refused:
                raise RuntimeError(f"the CA refused {len(refused)} of {len(items)}: {refused[0]}")
            return [s.cert_chain[0].public_bytes(serialization.Encoding.DER) for s in signed]

        return send

    def verifier(self) -> Callable[[bytes, PooledCsr, int], None]:
        def verify(leaf_der: bytes, csr: PooledCsr, index: int) -> None:
            leaf = x509.load_der_x509_certificate(leaf_der)
            spiffe_id, _ = verify_x509_svid([leaf], self.bundle, datetime.now(UTC))
            expected = self.entries[index % len(self.entries)][1]
            if spiffe_id != expected or _public_der(leaf) != csr.public_der:
                raise AssertionError(f"leaf {leaf.serial_number:x} is not an SVID of {expected} for its CSR's key")

        return verify

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


def _self_signed(root: Path, name: str, common_name: str, *, ca: bool) -> x509.Certificate:
    """A one-day self-signed P-256 certificate written to ``root/<name>.pem`` and its key to
    ``root/<name>-key.pem`` (0600): cfssl's CA, or the gRPC floor's server certificate (``ca=False``,
    with ``common_name`` as its DNS name)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    (root / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = root / f"{name}-key.pem"
    key_file.touch(mode=0o600)
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert


class Cfssl(ChildServer):
    """``cfssl serve`` with a P-256 CA of its own, as a child process in ``root``."""

    def __init__(self, root: Path, taskset: list[str]) -> None:
        self.ca_cert = _self_signed(root, "cfssl-ca", "bench cfssl CA", ca=True)
        # The same leaf shape as an X509-SVID: one hour, digitalSignature + keyAgreement, both EKUs.
        profile = {"expiry": "1h", "usages": ["digital signature", "key agreement", "server auth", "client auth"]}
        (root / "cfssl.json").write_text(json.dumps({"signing": {"default": profile}}))
        self.port = free_port()
        super().__init__(
            [
                *taskset,
                "cfssl",
                "serve",
                "-address",
                "127.0.0.1",
                "-port",
                str(self.port),
                "-ca",
                str(root / "cfssl-ca.pem"),
                "-ca-key",
                str(root / "cfssl-ca-key.pem"),
                "-config",
                str(root / "cfssl.json"),
            ],
            root / "cfssl.log",
        )

    async def wait_ready(self) -> None:
        await self.wait_listening(self.port, "cfssl serve")

    async def connect(self, count: int) -> list[KeepAlive]:
        return [await KeepAlive.open("127.0.0.1", self.port) for _ in range(count)]

    def sender(self, connections: list[KeepAlive], pool: Sequence[PooledCsr]) -> Sender:
        """One request per certificate (cfssl signs one per call), on the connection's keep-alive socket."""

        async def send(connection: int, indices: Sequence[int]) -> list[bytes]:
            leaves = []
            for i in indices:
                body = json.dumps(
                    {"certificate_request": pool[i % len(pool)].pem.decode(), "hosts": [f"w{i % 100}.bench.example"]}
                ).encode()
                reply = json.loads(await connections[connection].post("/api/v1/cfssl/sign", body))
                if not reply.get("success"):
                    raise RuntimeError(f"cfssl refused a CSR: {reply.get('errors')}")
                leaves.append(
                    x509.load_pem_x509_certificate(reply["result"]["certificate"].encode()).public_bytes(
                        serialization.Encoding.DER
                    )
                )
            return leaves

        return send

    def verifier(self) -> Callable[[bytes, PooledCsr, int], None]:
        def verify(leaf_der: bytes, csr: PooledCsr, _index: int) -> None:
            leaf = x509.load_der_x509_certificate(leaf_der)
            leaf.verify_directly_issued_by(self.ca_cert)
            if _public_der(leaf) != csr.public_der:
                raise AssertionError(f"cfssl leaf {leaf.serial_number:x} does not hold its CSR's key")

        return verify


class KeepAlive:
    """A minimal HTTP/1.1 client on one persistent connection: cheap on the client's core, so the
    server is what is measured."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self._reader = reader
        self._writer = writer
        self._host = host

    @classmethod
    async def open(cls, host: str, port: int) -> KeepAlive:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, f"{host}:{port}")

    async def post(self, path: str, body: bytes) -> bytes:
        self._writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self._host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await asyncio.wait_for(self._reader.readuntil(b"\r\n\r\n"), CALL_TIMEOUT)
        status, *headers = head.decode("latin-1").split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in headers if h)}
        if "content-length" not in fields:
            raise RuntimeError(f"cfssl answered {status!r} without Content-Length")
        return await self._reader.readexactly(int(fields["content-length"]))

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


# The node API's method as gRPC names it on the wire (package trustmesh.node.v1, service Node).
SIGN_METHOD = "/" + node_pb2.DESCRIPTOR.services_by_name["Node"].full_name + "/SignX509Svids"
FLOOR_NAME = "bench-floor"


class GrpcFloor(ChildServer):
    """gRPC's own cost of a call, the floor under any node API call a Python CA answers with grpcio: a
    bare ``grpc.aio`` server process, TLS, serving the node API's ``SignX509Svids`` with a handler that
    returns one stored reply (a real batch-1 answer, so the bytes on the wire are the CA's) without
    parsing the request. Nothing of trustmesh runs in it."""

    def __init__(self, root: Path, taskset: list[str], reply: node_pb2.SignX509SvidsResponse) -> None:
        self.root = root / "floor"
        self.root.mkdir()
        self.server_cert = _self_signed(self.root, "server", FLOOR_NAME, ca=False)
        (self.root / "reply.bin").write_bytes(reply.SerializeToString())
        self.reply = reply
        self.port = free_port()
        argv = [*taskset, sys.executable, __file__, "--serve-floor", str(self.root), "--floor-port", str(self.port)]
        super().__init__(argv, self.root / "server.log")

    async def wait_ready(self) -> None:
        await self.wait_listening(self.port, "the gRPC floor server")

    def connect(self, count: int) -> list[grpc.aio.Channel]:
        credentials = grpc.ssl_channel_credentials(self.server_cert.public_bytes(serialization.Encoding.PEM))
        # Each channel its own connection (gRPC would share one among channels to the same target).
        options = [("grpc.ssl_target_name_override", FLOOR_NAME), ("grpc.use_local_subchannel_pool", 1)]
        return [grpc.aio.secure_channel(f"127.0.0.1:{self.port}", credentials, options) for _ in range(count)]

    def sender(self, channels: list[grpc.aio.Channel], pool: Sequence[PooledCsr], entry_id: str) -> Sender:
        """The requests the CA is sent at batch 1 (entry ID and CSR), each channel its own connection."""
        calls = [channel.unary_unary(SIGN_METHOD, None, None) for channel in channels]  # bytes in, bytes out

        async def send(connection: int, indices: Sequence[int]) -> list[bytes]:
            request = node_pb2.SignX509SvidsRequest(
                requests=[node_pb2.X509SvidRequest(entry_id=entry_id, csr=pool[i % len(pool)].der) for i in indices]
            )
            answer = node_pb2.SignX509SvidsResponse.FromString(
                await calls[connection](request.SerializeToString(), timeout=CALL_TIMEOUT)
            )
            return [svid.cert_chain[0] for svid in answer.svids]  # the stored reply: one SVID

        return send

    def verifier(self) -> Callable[[bytes, PooledCsr, int], None]:
        stored = self.reply.svids[0].cert_chain[0]

        def verify(leaf_der: bytes, _csr: PooledCsr, _index: int) -> None:
            if leaf_der != stored:
                raise AssertionError("the gRPC floor server's reply is not the stored one")

        return verify


def serve_floor(root: Path, port: int) -> None:
    """The floor server's process (``--serve-floor``): see :class:`GrpcFloor`."""
    reply = (root / "reply.bin").read_bytes()

    async def answer(_request: bytes, _context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return reply

    async def serve() -> None:
        server = grpc.aio.server()
        service, method = SIGN_METHOD.rsplit("/", 1)
        handler = grpc.unary_unary_rpc_method_handler(answer)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service[1:], {method: handler})])
        key_pair = ((root / "server-key.pem").read_bytes(), (root / "server.pem").read_bytes())
        server.add_secure_port(f"127.0.0.1:{port}", grpc.ssl_server_credentials([key_pair]))
        await server.start()
        await server.wait_for_termination()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(serve())


def _grid(batches: Sequence[int], channels: Sequence[int]) -> list[tuple[int, int]]:
    return [(b, c) for b in batches for c in channels]


async def batch_one_phases(
    name: str,
    server: ChildServer,
    send: Sender,
    verify: Callable[[bytes, PooledCsr, int], None],
    pool: Sequence[PooledCsr],
    channel_counts: Sequence[int],
    args: argparse.Namespace,
) -> list[Phase]:
    """One certificate per call over each number of connections (cfssl, the gRPC floor)."""
    return [
        await run_phase(Phase(name, 1, count), [server.process.pid], send, pool, args.svids, args.seconds, verify)
        for count in channel_counts
    ]


async def measure_floor(
    root: Path,
    taskset: list[str],
    agent: AttestedAgent,
    pool: Sequence[PooledCsr],
    channel_counts: Sequence[int],
    args: argparse.Namespace,
) -> list[Phase]:
    """Batch 1 over each number of connections against :class:`GrpcFloor`, its stored reply a real
    answer of the CA to the same request."""
    entry_id = agent.entries[0][0]
    (signed,) = await agent.clients[0].sign_x509_svids([(entry_id, pool[0].der)])
    chain = [cert.public_bytes(serialization.Encoding.DER) for cert in signed.cert_chain]
    reply = node_pb2.SignX509SvidsResponse(svids=[node_pb2.SignedX509Svid(entry_id=entry_id, cert_chain=chain)])
    floor = GrpcFloor(root, taskset, reply)
    channels: list[grpc.aio.Channel] = []
    try:
        await floor.wait_ready()
        channels = floor.connect(max(channel_counts))
        send = floor.sender(channels, pool, entry_id)
        await send(0, [0])
        return await batch_one_phases("grpc-floor", floor, send, floor.verifier(), pool, channel_counts, args)
    finally:
        for channel in channels:
            await channel.close(None)
        floor.stop()


async def bench(args: argparse.Namespace) -> tuple[list[Phase], list[Phase], list[Phase], bool]:
    taskset, pinned = pinning()
    batches = [int(b) for b in args.batches.split(",")]
    channels = [int(c) for c in args.channels.split(",")]
    pool = make_pool(args.pool)
    ours: list[Phase] = []
    theirs: list[Phase] = []
    floor: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="tm-nodeapi-") as tmp:
        root = Path(tmp)
        ca = TrustmeshCa(root, taskset)
        cfssl = Cfssl(root, taskset) if shutil.which("cfssl") and not args.no_cfssl else None
        agent: AttestedAgent | None = None
        try:
            await asyncio.to_thread(ca.wait_ready)
            agent = await AttestedAgent.attest(ca, args.entries, max(channels))
            send = agent.sender(pool)
            await send(0, [0])  # warm up: connection, TLS, the CA's caches
            if 1 in batches and not args.no_floor:
                floor = await measure_floor(root, taskset, agent, pool, channels, args)
            for batch, connections in _grid(batches, channels):
                ours.append(
                    await run_phase(
                        Phase("trustmesh", batch, connections),
                        [ca.process.pid],
                        send,
                        pool,
                        args.svids,
                        args.seconds,
                        agent.verifier(),
                    )
                )
            if cfssl is not None:
                await cfssl.wait_ready()
                sockets = await cfssl.connect(max(channels))
                try:
                    cfssl_send = cfssl.sender(sockets, pool)
                    await cfssl_send(0, [0])
                    theirs = await batch_one_phases("cfssl", cfssl, cfssl_send, cfssl.verifier(), pool, channels, args)
                finally:
                    for each in sockets:
                        await each.close()
        finally:
            if agent is not None:
                await agent.close()
            ca.stop()
            if cfssl is not None:
                cfssl.stop()
    return ours, theirs, floor, pinned


async def bench_replicas(args: argparse.Namespace) -> list[Phase]:
    """The same SignX509Svids load on one CA replica, then spread over ``args.replicas`` replicas of
    one PostgreSQL database (the HA design: one set of authorities, a shared key directory and KEK),
    replica ``i`` pinned to core ``i`` when taskset is there; this process and PostgreSQL float."""
    pool = make_pool(args.pool)
    phases: list[Phase] = []
    cores = len(os.sched_getaffinity(0))
    server = await asyncio.to_thread(PostgresServer.start)
    replicas: list[TrustmeshCa] = []
    agent: AttestedAgent | None = None
    try:
        url = server.url(server.create_database())
        with tempfile.TemporaryDirectory(prefix="tm-replicas-") as tmp:
            root = Path(tmp)
            shared = (
                f'[datastore]\nurl = "{url}"\n[ca.key_manager]\nkek_file = "{root / "kek"}"\n'
                f'directory = "{root / "keys"}"\n'
            )
            try:
                for n in range(args.replicas):  # one after the other: the first creates the authorities
                    pin = ["taskset", "-c", str(n % cores)] if shutil.which("taskset") and cores > 1 else []
                    replicas.append(TrustmeshCa(root, pin, f"ca{n}", shared))
                    await asyncio.to_thread(replicas[-1].wait_ready)
                per_replica = max(1, args.replica_connections // args.replicas)
                agent = await AttestedAgent.attest(replicas[0], args.entries, args.replica_connections, *replicas[1:])
                pids = [r.process.pid for r in replicas]
                postmaster = int((server.directory / "data" / "postmaster.pid").read_text().split()[0])
                one = list(range(args.replica_connections))  # every connection to the first replica
                spread = [
                    args.replica_connections + (r - 1) * args.replica_connections + c if r else c
                    for c in range(per_replica)
                    for r in range(args.replicas)
                ]
                for clients in (one, spread):
                    send = agent.sender(pool, clients)
                    for connection in range(len(clients)):
                        await send(connection, [0])  # warm every connection and replica
                    for batch in (int(b) for b in args.batches.split(",")):
                        label = "1 replica" if clients is one else f"{args.replicas} replicas"
                        database_before = process_tree_cpu_seconds(postmaster)
                        phase = await run_phase(
                            Phase(label, batch, len(clients)),
                            pids,
                            send,
                            pool,
                            args.svids,
                            args.seconds,
                            agent.verifier(),
                        )
                        phase.database_cpu = process_tree_cpu_seconds(postmaster) - database_before
                        phases.append(phase)
            finally:
                if agent is not None:
                    await agent.close()
                for replica in replicas:
                    replica.stop()
    finally:
        await asyncio.to_thread(server.stop)
    return phases


def report_replicas(phases: list[Phase], args: argparse.Namespace) -> None:
    load = os.getloadavg()
    print(
        f"node API on PostgreSQL: 1 vs {args.replicas} CA replicas, {args.replica_connections} connections; "
        f"{os.cpu_count()} cores, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; replica i on core i, "
        "the bench client and PostgreSQL on the same machine, not pinned"
    )
    print(
        f"{'servers':<11} {'batch':>5} {'conns':>5} {'SVIDs':>6} {'SVIDs/s':>9} {'CPU ms/1000':>12} "
        f"{'client ms/1000':>14} {'PostgreSQL ms/1000':>18}  verified"
    )
    for phase in phases:
        client, database = (
            c / phase.svids * 1e6 if phase.svids else float("nan") for c in (phase.client_cpu, phase.database_cpu)
        )
        print(
            f"{phase.server:<11} {phase.batch:>5} {phase.connections:>5} {phase.svids:>6} {phase.rate:>9.0f} "
            f"{phase.cpu_ms_per_1000:>12.0f} {client:>14.0f} {database:>18.0f}  {phase.verified}"
        )
    single = {p.batch: p for p in phases if p.server == "1 replica"}
    for phase in phases:
        if phase.server != "1 replica":
            ratio = phase.rate / single[phase.batch].rate
            print(f"batch {phase.batch}: {args.replicas} replicas / 1 replica SVIDs/s {ratio:.2f}x")
    print("goal: two workers on two cores >= 1.6x one worker")


async def bench_sparse(args: argparse.Namespace) -> tuple[float, float]:
    """CA CPU per call (ms) of ``args.sparse_calls`` calls of two SVIDs sent back to back, then of as many
    sent ``args.sparse`` seconds apart, as a real agent's rotations come (every few minutes, so nothing
    it needs may expire from the CA's memory between two calls). Each sparse call's CPU is read from
    ``/proc`` before it and 50 ms after its answer (the CA's threads finish their share)."""
    taskset, _ = pinning()
    calls = args.sparse_calls
    pool = make_pool(2 * calls + 2)
    with tempfile.TemporaryDirectory(prefix="tm-sparse-") as tmp:
        ca = TrustmeshCa(Path(tmp), taskset)
        agent: AttestedAgent | None = None
        try:
            await asyncio.to_thread(ca.wait_ready)
            agent = await AttestedAgent.attest(ca, args.entries, 1)
            send = agent.sender(pool)
            await send(0, [0, 1])  # warm up: connection, TLS, the CA's caches
            started = cpu_seconds(ca.process.pid)
            for n in range(calls):
                await send(0, [2 * n, 2 * n + 1])
            dense = (cpu_seconds(ca.process.pid) - started) * 1000 / calls
            sparse = 0.0
            for n in range(calls):
                await asyncio.sleep(args.sparse)
                before = cpu_seconds(ca.process.pid)
                await send(0, [2 * n, 2 * n + 1])
                await asyncio.sleep(0.05)
                sparse += (cpu_seconds(ca.process.pid) - before) * 1000
            return dense, sparse / calls
        finally:
            if agent is not None:
                await agent.close()
            ca.stop()


def report(ours: list[Phase], theirs: list[Phase], floor: list[Phase], pinned: bool, args: argparse.Namespace) -> None:
    load = os.getloadavg()
    print(
        f"node API issuance: pool of {args.pool} CSRs (distinct P-256 keys), up to {args.svids} SVIDs or "
        f"{args.seconds:g} s per phase; {os.cpu_count()} cores, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        + ("server on core 0, client on core 1 (taskset)" if pinned else "not pinned (no taskset or one core)")
    )
    print(
        f"{'server':<10} {'batch':>5} {'conns':>5} {'SVIDs':>6} {'SVIDs/s':>9} {'CPU ms/1000':>12} "
        f"{'on loop':>8} {'client CPU':>10}  verified"
    )
    for phase in [*floor, *ours, *theirs]:
        share = phase.client_cpu / phase.seconds if phase.seconds else float("nan")
        # The share of the CA's CPU spent on its event loop thread; cfssl's Go threads have no such thread.
        loop = f"{phase.main_thread_cpu / phase.server_cpu:.0%}" if phase in ours and phase.server_cpu else "-"
        print(
            f"{phase.server:<10} {phase.batch:>5} {phase.connections:>5} {phase.svids:>6} {phase.rate:>9.0f} "
            f"{phase.cpu_ms_per_1000:>12.0f} {loop:>8} {share:>9.0%}  {phase.verified}"
        )
    report_floor(ours, theirs, floor)
    if not theirs:
        print("cfssl not measured (not on PATH: run scripts/bench-deps, or --no-cfssl was given)")
        return
    by_connections = {p.connections: p for p in theirs}
    print(f"{'vs cfssl':<10} {'batch':>5} {'conns':>5} {'SVIDs/s ratio':>14} {'CPU/cert ratio':>15}")
    for phase in ours:
        base = by_connections[phase.connections]
        print(
            f"{'':<10} {phase.batch:>5} {phase.connections:>5} {phase.rate / base.rate:>14.2f} "
            f"{phase.cpu_ms_per_1000 / base.cpu_ms_per_1000:>15.2f}"
        )
    print("goals: batch 100 >= 1.0x cfssl SVIDs/s and <= 1.0x its CPU per cert; batch 1 >= 0.4x cfssl SVIDs/s")


def report_floor(ours: list[Phase], theirs: list[Phase], floor: list[Phase]) -> None:
    """Per batch-1 call: the CA's CPU, gRPC's floor under it and what is above the floor (and cfssl's
    CPU per certificate, when measured)."""
    ca = {p.connections: p for p in ours if p.batch == 1}
    cfssl = {p.connections: p for p in theirs}
    for bare in floor:
        if bare.connections not in ca:
            continue
        call, under = ca[bare.connections].cpu_ms_per_1000 / 1000, bare.cpu_ms_per_1000 / 1000
        cert = cfssl.get(bare.connections)
        theirs_ms = f"; cfssl {cert.cpu_ms_per_1000 / 1000:.2f} ms per certificate" if cert else ""
        print(
            f"batch 1 over {bare.connections} connection(s), CPU per call: trustmesh {call:.2f} ms, gRPC floor "
            f"{under:.2f} ms, above the floor {call - under:.2f} ms{theirs_ms}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--svids", type=int, default=2000, help="SVIDs per phase at most")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per phase at most")
    parser.add_argument("--pool", type=int, default=1000, help="pre-generated CSRs (each its own key)")
    parser.add_argument("--entries", type=int, default=100, help="registration entries of the attested agent")
    parser.add_argument("--batches", default="1,10,100", help="SVIDs per SignX509Svids call")
    parser.add_argument("--channels", default="1,4", help="connections, one call in flight on each")
    parser.add_argument("--no-cfssl", action="store_true", help="measure trustmesh only")
    parser.add_argument("--no-floor", action="store_true", help="skip the bare gRPC server's batch-1 floor")
    parser.add_argument("--serve-floor", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--floor-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--replicas", type=int, default=1, help="N > 1: compare 1 and N CA replicas on one PostgreSQL instead"
    )
    parser.add_argument("--replica-connections", type=int, default=4, help="connections in the replica comparison")
    parser.add_argument(
        "--sparse",
        type=float,
        default=0.0,
        help="S > 0: instead, CA CPU per call of 2 SVIDs with calls S seconds apart vs back to back",
    )
    parser.add_argument("--sparse-calls", type=int, default=30, help="calls in each part of --sparse")
    args = parser.parse_args()
    if args.serve_floor is not None:
        serve_floor(args.serve_floor, args.floor_port)
        return
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.replicas > 1:
        report_replicas(asyncio.run(bench_replicas(args)), args)
        return
    if args.sparse > 0:
        dense, sparse = asyncio.run(bench_sparse(args))
        print(
            f"CA CPU per SignX509Svids call of 2 SVIDs ({args.entries} entries, {args.sparse_calls} calls each): "
            f"back to back {dense:.1f} ms, {args.sparse:g} s apart {sparse:.1f} ms: "
            f"{sparse / dense if dense else float('nan'):.2f}x"
            " (/proc counts CPU in 10 ms ticks: compare means over many calls)"
        )
        return
    ours, theirs, floor, pinned = asyncio.run(bench(args))
    report(ours, theirs, floor, pinned, args)


if __name__ == "__main__":
    main()
