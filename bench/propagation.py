"""Authority change propagation: how fast ``prepare`` and ``taint`` reach every agent's SDS streams.

Real processes, as an operator runs them: one ``trustmesh-ca run`` and N ``trustmesh-agent run`` on
loopback ports and Unix sockets in a temporary directory, each agent with M registration entries
(selector ``unix:uid:<our uid>``). The bench process opens one StreamSecrets stream per entry per agent
(resource names: the entry's SPIFFE ID and ``ROOTCA``, ACKing like Envoy) and waits until every stream
holds its X509-SVID and the bundle. Then, timed from just before the admin API call:

  (a) ``authority prepare``: the new authority is published in the bundle at once, so this is
      prepare → every stream's ROOTCA trust bundle holds one certificate more (checked afterwards to
      be the prepared authority's);
  (b) after ``authority activate`` of the prepared one (a refresh hint, 1 s, later), ``authority taint``
      of the old one → every stream's tls_certificate carries a new serial (NxM X509-SVIDs re-issued).

The changes go over the admin socket's HTTP API (what the CLI calls) so no CLI start-up is counted;
``activate`` runs through the CLI and its wall time is printed beside, and the bench waits for the
pushes it causes to stop before the taint. Entries are created through the same admin route as
``trustmesh-ca entry create``, without a process per entry (a thousand CLI starts would take minutes).
Latencies are per stream from t0: "first" and "max" are the first and the last stream to get the change.
Also printed: each process's CPU seconds per phase, which shows where the time goes.

Baselines in the same run: the bare push floor (bench/sds_fanout.py's plain grpc.aio server pushing one
response to as many streams from a child process) and the raw ECDSA P-256 signing time for NxM
signatures (bench/issuance.py's rate) — the least any propagation or re-issue could take here.

    python bench/propagation.py [--agents 10] [--entries 100] [--channels 25]

Not a test and never run in CI; numbers depend on the machine, the ratios to the baselines travel.
Goals (rotation issue): prepare → all streams < 1 s; taint → 1,000 SVIDs re-issued < 3 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from cryptography import x509
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_spiffe_validator_config_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from issuance import raw_rates
from sds_fanout import measure as measure_bare_push

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
TRUST_DOMAIN = "bench.example"
BIN_DIR = Path(sys.executable).parent
REFRESH_HINT = 1.0  # seconds; [bundle] refresh_hint, the least a prepared authority waits before activating
PROPAGATION_TIMEOUT = 30.0
REISSUE_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (``/proc/<pid>/stat`` fields 14 and 15)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_for(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Fleet:
    """The CA and its agents as child processes; :meth:`stop` ends every one (terminate, then kill)."""

    root: Path
    http_port: int = field(default_factory=free_port)
    node_port: int = field(default_factory=free_port)
    attestation_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def ca_config(self) -> Path:
        return self.root / "ca.toml"

    @property
    def admin_socket(self) -> Path:
        return self.root / "ca" / "admin.sock"

    def start_ca(self) -> None:
        self.ca_config.write_text(
            f'trust_domain = "{TRUST_DOMAIN}"\n[bundle]\nrefresh_hint = "{REFRESH_HINT:.0f}s"\n'
            f'[server]\ndata_dir = "{self.root / "ca"}"\nhttp_address = "127.0.0.1:{self.http_port}"\n'
            f'node_api_address = "127.0.0.1:{self.node_port}"\n'
            f'attestation_address = "127.0.0.1:{self.attestation_port}"\n'
        )
        self._spawn("ca", [str(BIN_DIR / "trustmesh-ca"), "--config", str(self.ca_config), "run"])

    async def ca_ready(self) -> None:
        async with httpx.AsyncClient(timeout=1) as client:

            def ready() -> bool:
                self.check_alive()
                return self.admin_socket.exists()

            await wait_for(ready, 30, "the CA's admin socket")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                self.check_alive()
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://127.0.0.1:{self.http_port}/ready")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise TimeoutError("the CA did not become ready within 30 s")

    async def ca(self, *args: str) -> tuple[str, float]:
        """Run ``trustmesh-ca --config … ARGS``; its stdout and wall time. Raises on a non-zero exit."""
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            str(BIN_DIR / "trustmesh-ca"),
            "--config",
            str(self.ca_config),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"trustmesh-ca {' '.join(args)} exited {proc.returncode}: {err.decode().strip()}")
        return out.decode(), time.monotonic() - started

    def start_agent(self, name: str, token: str) -> Path:
        """Write the agent's config and start it; its SDS socket path."""
        data_dir = self.root / name
        data_dir.mkdir()
        config = self.root / f"{name}.toml"
        config.write_text(
            f'trust_domain = "{TRUST_DOMAIN}"\nserver_address = "127.0.0.1:{self.node_port}"\n'
            f'attestation_address = "127.0.0.1:{self.attestation_port}"\n'
            f'trust_bundle_path = "{self.root / "bundle.pem"}"\njoin_token = "{token}"\ndata_dir = "{data_dir}"\n'
        )
        config.chmod(0o600)
        self._spawn(name, [str(BIN_DIR / "trustmesh-agent"), "--config", str(config), "run"])
        return data_dir / "sds.sock"

    def _spawn(self, name: str, argv: Sequence[str]) -> None:
        with (self.root / f"{name}.log").open("wb") as log:
            self.processes[name] = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT)

    def check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                tail = (self.root / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each child process and by the bench itself (all its threads)."""
        own = resource.getrusage(resource.RUSAGE_SELF)
        return {"bench": own.ru_utime + own.ru_stime} | {n: cpu_seconds(p.pid) for n, p in self.processes.items()}

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@dataclass(eq=False)
class Watched:
    """One SDS stream's latest X509-SVID serial and ROOTCA trust bundle (PEM)."""

    spiffe_id: str
    serial: int | None = None
    bundle: bytes = b""

    @property
    def roots(self) -> int:
        return self.bundle.count(b"-----BEGIN CERTIFICATE-----")

    def update(self, response: Any) -> None:
        for resource_any in response.resources:
            secret = secret_pb2.Secret.FromString(resource_any.value)
            if secret.HasField("tls_certificate"):
                chain = secret.tls_certificate.certificate_chain.inline_bytes
                self.serial = x509.load_pem_x509_certificates(chain)[0].serial_number
            elif secret.HasField("validation_context"):
                config = tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig()
                secret.validation_context.custom_validator_config.typed_config.Unpack(config)
                self.bundle = b"".join(td.trust_bundle.inline_bytes for td in config.trust_domains)


class Phase:
    """Arrival times of one change: a stream has arrived when ``reached(stream, baseline)`` holds, where
    baseline is what the stream held when the phase was armed."""

    def __init__(self, streams: Sequence[Watched], reached: Callable[[Watched, Watched], bool]) -> None:
        self.reached = reached
        self.baseline = {s: Watched(s.spiffe_id, s.serial, s.bundle) for s in streams}
        self.arrived: dict[Watched, float] = {}
        self.done = asyncio.Event()
        self.t0 = float("nan")

    def observe(self, stream: Watched, at: float) -> None:
        if stream not in self.arrived and self.reached(stream, self.baseline[stream]):
            self.arrived[stream] = at
            if len(self.arrived) == len(self.baseline):
                self.done.set()

    async def wait(self, within: float) -> list[float]:
        """Per-stream latency in ms from t0, sorted; streams that had not arrived ``within`` s are left out."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), within)
        return sorted((t - self.t0) * 1000 for t in self.arrived.values())


class Streams:
    """Every SDS stream the bench holds open, and the phase their responses are checked against."""

    def __init__(self) -> None:
        self.watched: list[Watched] = []
        self.phase: Phase | None = None
        self.responses = 0  # DiscoveryResponses received on all streams
        self._tasks: list[asyncio.Task[None]] = []
        self._channels: list[grpc.aio.Channel] = []

    def open(self, socket_path: Path, spiffe_ids: Sequence[str], channels: int) -> None:
        opened = [grpc.aio.insecure_channel(f"unix:{socket_path}") for _ in range(channels)]
        self._channels += opened
        stubs = [sds_pb2_grpc.SecretDiscoveryServiceStub(c) for c in opened]
        for i, spiffe_id in enumerate(spiffe_ids):
            watched = Watched(spiffe_id)
            self.watched.append(watched)
            self._tasks.append(asyncio.create_task(self._follow(stubs[i % channels], watched)))

    def arm(self, reached: Callable[[Watched, Watched], bool]) -> Phase:
        self.phase = Phase(self.watched, reached)
        return self.phase

    def failed(self) -> list[BaseException]:
        ended = [t for t in self._tasks if t.done() and not t.cancelled()]
        return [err for t in ended if (err := t.exception()) is not None]

    async def _follow(self, stub: Any, watched: Watched) -> None:
        names = [watched.spiffe_id, "ROOTCA"]
        queue: asyncio.Queue[Any] = asyncio.Queue()
        await queue.put(discovery_pb2.DiscoveryRequest(type_url=SECRET_TYPE, resource_names=names))

        async def requests() -> AsyncIterator[Any]:
            while (item := await queue.get()) is not None:
                yield item

        call = stub.StreamSecrets(requests())
        try:
            async for response in call:
                received = time.monotonic()
                self.responses += 1
                watched.update(response)
                if self.phase is not None:
                    self.phase.observe(watched, received)
                await queue.put(  # ACK: SotW requests name every subscribed resource
                    discovery_pb2.DiscoveryRequest(
                        type_url=SECRET_TYPE,
                        resource_names=names,
                        version_info=response.version_info,
                        response_nonce=response.nonce,
                    )
                )
        finally:
            await queue.put(None)
            call.cancel()

    async def settle(self, quiet: float = 0.5, within: float = 15.0) -> None:
        """Wait until no response has arrived for ``quiet`` seconds (at most ``within``), so one change's
        pushes are not counted towards the next."""
        deadline = time.monotonic() + within
        seen = -1
        while seen != self.responses and time.monotonic() < deadline:
            seen = self.responses
            await asyncio.sleep(quiet)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for channel in self._channels:
            await channel.close(None)


def _pct(values: Sequence[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def _row(label: str, values: Sequence[float], expected: int, goal: str = "") -> str:
    last = values[-1] if values else float("nan")
    first = values[0] if values else float("nan")
    return (
        f"{label:<38} {first:8.1f} {_pct(values, 0.5):8.1f} {_pct(values, 0.99):8.1f} {last:8.1f}  "
        f"{len(values):>5}/{expected:<5} {goal}"
    ).rstrip()


async def setup(
    fleet: Fleet, admin: httpx.AsyncClient, agents: int, entries: int, streams: Streams, channels: int
) -> None:
    fleet.start_ca()
    await fleet.ca_ready()
    bundle_pem, _ = await fleet.ca("bundle", "show", "--format", "pem")
    (fleet.root / "bundle.pem").write_text(bundle_pem)
    uid = os.getuid()
    sockets: list[tuple[Path, list[str]]] = []
    for n in range(agents):
        reply, _ = await fleet.ca("token", "generate", "--node-name", f"n{n}", "--ttl", "10m", "--json")
        token = json.loads(reply)
        spiffe_ids = [f"spiffe://{TRUST_DOMAIN}/n{n}/w{m}" for m in range(entries)]
        for spiffe_id in spiffe_ids:  # the route `trustmesh-ca entry create --json` posts to
            body = {"spiffe_id": spiffe_id, "parent_id": token["spiffe_id"], "selectors": [f"unix:uid:{uid}"]}
            created = await admin.post("/v1/entries", json=body)
            if created.status_code != 201:
                raise RuntimeError(f"creating entry {spiffe_id} failed: {created.status_code} {created.text}")
        sockets.append((fleet.start_agent(f"agent{n}", token["token"]), spiffe_ids))

    def sockets_exist() -> bool:
        fleet.check_alive()
        return all(path.exists() for path, _ in sockets)

    await wait_for(sockets_exist, 60, "every agent's SDS socket")
    for path, spiffe_ids in sockets:
        streams.open(path, spiffe_ids, min(channels, len(spiffe_ids)))

    def all_served() -> bool:
        fleet.check_alive()
        if failed := streams.failed():
            raise RuntimeError(f"{len(failed)} SDS streams failed, first: {failed[0]!r}")
        return all(w.serial is not None and w.roots > 0 for w in streams.watched)

    await wait_for(all_served, 30 + 0.05 * agents * entries, "every stream's first X509-SVID and bundle")


async def post(admin: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await admin.post(path, json=body)
    if response.status_code != 200:
        raise RuntimeError(f"POST {path} failed: {response.status_code} {response.text}")
    reply: dict[str, Any] = response.json()
    return reply


async def main_async(agents: int, entries: int, channels: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # SIGTERM ends the run like Ctrl-C does: the task is cancelled and the finally blocks stop every child.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    total = agents * entries

    # Baselines first, on a quiet machine.
    sign_rate, _ = raw_rates(2000)
    sign_floor_ms = total / sign_rate * 1000
    with tempfile.TemporaryDirectory() as tmp:
        bare_socket = Path(tmp) / "bare.sock"
        bare, _ = await measure_bare_push(
            [sys.executable, str(Path(__file__).with_name("sds_fanout.py")), "--serve-bare", str(bare_socket)],
            total,
            min(total, agents * channels),
            bare_socket,
        )

    with tempfile.TemporaryDirectory(prefix="tm-prop-") as tmp:
        fleet = Fleet(Path(tmp))
        streams = Streams()
        transport = httpx.AsyncHTTPTransport(uds=str(fleet.admin_socket))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://trustmesh-ca", timeout=30) as admin:
                started = time.monotonic()
                await setup(fleet, admin, agents, entries, streams, channels)
                setup_s = time.monotonic() - started

                listed = (await admin.get("/v1/authorities")).json()["authorities"]
                (old,) = [a["id"] for a in listed if a["kind"] == "x509" and a["state"] == "active"]
                await streams.settle()

                # (a) prepare → every ROOTCA holds the new authority.
                phase_a = streams.arm(lambda s, before: s.roots > before.roots)
                cpu_before = fleet.cpu()
                phase_a.t0 = time.monotonic()
                prepared = await post(admin, "/v1/authorities/prepare", {"kind": "x509"})
                prepare_reply_ms = (time.monotonic() - phase_a.t0) * 1000
                new = prepared["changes"][0]["authority_id"]
                published = await phase_a.wait(PROPAGATION_TIMEOUT)
                cpu_a = _cpu_delta(cpu_before, fleet.cpu())
                new_pem = (await admin.get(f"/v1/authorities/{new}")).json()["certificate_pem"].encode()
                wrong_root = sum(new_pem not in w.bundle for w in streams.watched)

                # activate through the CLI, once the new authority has been in the bundle a refresh hint.
                await asyncio.sleep(max(0.0, REFRESH_HINT + 0.1 - (time.monotonic() - phase_a.t0)))
                serials = {w: w.serial for w in streams.watched}
                responses_before = streams.responses
                bundle_before = streams.watched[0].bundle
                cpu_before = fleet.cpu()
                _, activate_cli_s = await fleet.ca("authority", "activate", new, "--json")
                _, taint_dry_cli_s = await fleet.ca("authority", "taint", old, "--dry-run", "--json")
                dry_started = time.monotonic()
                await post(admin, f"/v1/authorities/{old}/taint", {"dry_run": True})
                taint_dry_api_ms = (time.monotonic() - dry_started) * 1000
                await streams.settle()
                reissued_on_activate = sum(w.serial != serials[w] for w in streams.watched)
                cpu_activate = _cpu_delta(cpu_before, fleet.cpu())
                responses_on_activate = streams.responses - responses_before
                bundle_after = streams.watched[0].bundle

                # (b) taint the old authority → every stream carries a new X509-SVID.
                phase_b = streams.arm(lambda s, before: s.serial != before.serial)
                cpu_before = fleet.cpu()
                phase_b.t0 = time.monotonic()
                tainted = await post(admin, f"/v1/authorities/{old}/taint", {})
                taint_reply_ms = (time.monotonic() - phase_b.t0) * 1000
                reissued = await phase_b.wait(REISSUE_TIMEOUT)
                cpu_b = _cpu_delta(cpu_before, fleet.cpu())
                streams.phase = None
        finally:
            await streams.close()
            fleet.stop()

    bare_last = bare[-1] if bare else float("nan")
    print(
        f"propagation: {agents} agents x {entries} entries = {total} SDS streams "
        f"({min(channels, entries)} channels per agent); setup {setup_s:.1f} s"
    )
    print(f"{'latency from t0 (ms)':<38} {'first':>8} {'p50':>8} {'p99':>8} {'max':>8}  {'streams':<11} goal")
    print(_row("prepare -> new root in every ROOTCA", published, total, "all < 1000 ms"))
    print(_row("taint -> new X509-SVID on every stream", reissued, total, "1,000 SVIDs < 3000 ms"))
    print(_row("baseline: bare grpc.aio push", bare, total))
    print(
        f"{'baseline: ECDSA P-256 sign x ' + str(total):<38} {'':>26} {sign_floor_ms:8.1f}  "
        f"({sign_rate:.0f} signatures/s, one core)"
    )
    print(
        f"ratios: prepare max / bare push max {_ratio(published, bare_last)}; "
        f"taint max / bare push max {_ratio(reissued, bare_last)}; "
        f"taint max / sign floor {_ratio(reissued, sign_floor_ms)}"
    )
    print(
        f"admin API reply: prepare {prepare_reply_ms:.1f} ms, taint {taint_reply_ms:.1f} ms "
        f"(svids_affected {tainted['svids_affected']}, agents_affected {len(tainted['agents_affected'])}); "
        f"CLI wall time: activate {activate_cli_s * 1000:.0f} ms, taint --dry-run {taint_dry_cli_s * 1000:.0f} ms "
        f"(the same over the API: {taint_dry_api_ms:.0f} ms)"
    )
    print(f"CPU s during prepare phase: {_cpu_line(cpu_a)}")
    print(
        f"CPU s activate to taint:    {_cpu_line(cpu_activate)} (two CLI runs not counted); "
        f"SDS responses meanwhile: {responses_on_activate}"
    )
    print(f"CPU s during taint phase:   {_cpu_line(cpu_b)}")
    print(
        f"ROOTCA of stream 0 across activate: {_pem_blocks(bundle_before)} -> {_pem_blocks(bundle_after)}"
        f"{'' if bundle_before != bundle_after else ' (unchanged)'}"
    )
    notes = []
    if wrong_root:
        notes.append(f"{wrong_root} streams' ROOTCA lacks the prepared authority's certificate")
    if reissued_on_activate:
        notes.append(f"{reissued_on_activate} X509-SVIDs were re-issued on activate already (before taint)")
    for note in notes:
        print(f"note: {note}")


def _cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in after}


def _cpu_line(delta: dict[str, float]) -> str:
    agents = [v for k, v in delta.items() if k.startswith("agent")]
    return (
        f"CA {delta['ca']:.2f}, agents {sum(agents):.2f} (busiest {max(agents, default=0):.2f}), "
        f"bench (stream reader) {delta['bench']:.2f}"
    )


def _pem_blocks(pem: bytes) -> str:
    return f"{pem.count(b'BEGIN CERTIFICATE')} certificates, {pem.count(b'BEGIN X509 CRL')} CRLs"


def _ratio(values: Sequence[float], baseline: float) -> str:
    return f"{values[-1] / baseline:.1f}x" if values and baseline > 0 else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--entries", type=int, default=100, help="registration entries (and streams) per agent")
    parser.add_argument("--channels", type=int, default=25, help="gRPC channels per agent the streams share")
    args = parser.parse_args()
    try:
        asyncio.run(main_async(args.agents, args.entries, args.channels))
    except (KeyboardInterrupt, asyncio.CancelledError):
        sys.exit("interrupted; the CA and agents were stopped")


if __name__ == "__main__":
    main()
