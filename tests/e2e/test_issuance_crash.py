"""Crash safety of X509-SVID issuance: an SVID a caller was given is recorded and audited, whenever
the CA dies.

A call of one to four SVIDs is signed and recorded on the CA's event loop through SQLite's immediate
connection, whose commits never checkpoint the WAL: a thread of its own does, every 200 commits
(ca/store/immediate.py). Bigger batches are signed and recorded on a worker thread. Here the real CA
is killed with SIGKILL at seeded-random moments while an attested client made of the agent's own code
(:class:`sds.node_client.NodeClient`) sends both kinds of call back to back on four connections,
and each kill comes after a seeded-random number of answered calls, past at least one checkpoint.
After each restart on the same data directory:

* every serial a client received is recorded once, for the SPIFFE ID it asked for, through the agent;
* every serial a client received is named by the audit record of its issuance;
* the audit chain verifies (``trustmesh-ca audit verify --datastore``, reading the files themselves);
* the same client, never restarted, is signed for again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from sds.node_client import AgentCredentials, NodeClient, make_csr
from spiffe_core.bundle import Bundle
from spiffe_core.errors import UpstreamUnavailable
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import X509Svid, load_pem_certificates
from tests.support.mesh import Mesh

pytestmark = pytest.mark.e2e

SEED = 20261128
KILLS = 3
CONNECTIONS = 4
ENTRIES = 4
# A lone rotation (signed on the loop) and a batch (signed on a worker thread), in turn.
BATCHES = (1, 8)
CSR_POOL = 16
# The CA is killed once this many calls (drawn from the range) were answered: half of them are lone
# rotations, nearly all one commit of the immediate connection (a few go to a worker while a checkpoint
# holds the writer lock), so every start runs past at least one checkpoint (every 200 such commits) and
# the kills fall anywhere in that cycle.
KILL_AFTER_CALLS = (500, 900)
# How long a client retries before its first answer, and the longest a round waits for its kill.
LOAD_LIMIT_S = 20.0


class Load:
    """SignX509Svids calls back to back on every client until the CA is gone; what each call
    returned is kept as serial -> the SPIFFE ID it was asked for. A client retries (as the agent
    does) until its first answer: the channel may still be waiting to reconnect to a restarted CA."""

    def __init__(self, clients: Sequence[NodeClient], entries: Sequence[tuple[str, str]], kill_after: int) -> None:
        self.clients = clients
        self.entries = entries
        self.csrs = [make_csr(ec.generate_private_key(ec.SECP256R1())) for _ in range(CSR_POOL)]
        self.received: dict[int, str] = {}
        self.calls = 0
        self.kill_after = kill_after
        self.time_to_kill = asyncio.Event()

    async def until_refused(self) -> None:
        await asyncio.gather(*(self._connection(n) for n in range(len(self.clients))))

    async def _connection(self, n: int) -> None:
        turn = n
        reconnecting_until = asyncio.get_running_loop().time() + LOAD_LIMIT_S
        while True:
            batch = BATCHES[turn % len(BATCHES)]
            turn += 1
            asked = [self.entries[(turn + i) % len(self.entries)] for i in range(batch)]
            items = [(entry_id, self.csrs[(turn + i) % CSR_POOL]) for i, (entry_id, _) in enumerate(asked)]
            try:
                signed = await self.clients[n].sign_x509_svids(items)
            except UpstreamUnavailable:  # anything else the CA answers fails the test
                if asyncio.get_running_loop().time() < reconnecting_until:
                    await asyncio.sleep(0.2)
                    continue
                return  # the CA was killed
            reconnecting_until = 0.0
            self.calls += 1
            if self.calls >= self.kill_after:
                self.time_to_kill.set()
            for (_, spiffe_id), svid in zip(asked, signed, strict=True):
                assert svid.cert_chain, svid.error
                self.received[svid.cert_chain[0].serial_number] = spiffe_id


async def attested_clients(mesh: Mesh) -> tuple[list[NodeClient], list[tuple[str, str]], str]:
    """``CONNECTIONS`` node clients sharing one agent's credentials, that agent's ``ENTRIES`` entries
    (id, SPIFFE ID), and the agent's SPIFFE ID."""
    token, agent_id = mesh.join_token("crash")
    entries = []
    for n in range(ENTRIES):
        spiffe_id = f"spiffe://{mesh.trust_domain}/crash/w{n}"
        entries.append((mesh.create_entry(spiffe_id, agent_id, f"unix:uid:{n}"), spiffe_id))
    roots = Bundle(
        TrustDomain(mesh.trust_domain), load_pem_certificates(mesh.ca("bundle", "show", "--format", "pem").encode())
    )
    clients = [
        NodeClient(
            trust_domain=TrustDomain(mesh.trust_domain),
            server_address=f"127.0.0.1:{mesh.node_port}",
            attestation_address=f"127.0.0.1:{mesh.attestation_port}",
            server_name="trustmesh-ca",
            rpc_timeout=10,
        )
        for _ in range(CONNECTIONS)
    ]
    key = ec.generate_private_key(ec.SECP256R1())
    attested = await clients[0].attest(roots, "join_token", token.encode(), make_csr(key))
    assert attested.spiffe_id == SpiffeId.parse(agent_id)
    credentials = AgentCredentials(X509Svid(attested.spiffe_id, attested.cert_chain, key), attested.bundle)
    for client in clients:
        client.use_credentials(credentials)
    return clients, entries, agent_id


def recorded(datastore: Path) -> dict[int, list[tuple[str, str | None]]]:
    """serial -> every (SPIFFE ID, agent) row recorded for it."""
    rows: dict[int, list[tuple[str, str | None]]] = {}
    with contextlib.closing(sqlite3.connect(f"file:{datastore}?mode=ro", uri=True)) as db:
        for serial, spiffe_id, agent in db.execute("SELECT serial, spiffe_id, agent_id FROM issued_certificates"):
            rows.setdefault(int(serial, 16), []).append((spiffe_id, agent))
    return rows


def audited_serials(datastore: Path) -> set[int]:
    """The serials named by the audit records of X509-SVID issuance (one SVID, or a batch's list)."""
    serials: set[int] = set()
    with contextlib.closing(sqlite3.connect(f"file:{datastore}?mode=ro", uri=True)) as db:
        for (detail,) in db.execute("SELECT detail FROM audit_log WHERE action = 'x509_svid.issue'"):
            named = json.loads(detail)
            serials.update(int(s, 16) for s in [named.get("serial"), *named.get("serials", [])] if s)
    return serials


async def test_kill_9_during_issuance_loses_no_record_or_audit_of_an_svid_a_caller_received(tmp_path: Path) -> None:
    chance = random.Random(SEED)
    mesh = Mesh(tmp_path)
    mesh.write_ca_config("[node_api.ratelimit]\nsigning = 0\n")  # the load must run until the kill
    datastore = mesh.root / "ca" / "datastore.sqlite3"
    clients: list[NodeClient] = []
    entries: list[tuple[str, str]] = []
    agent_id = ""
    received: dict[int, str] = {}
    try:
        for kill in range(KILLS):
            with mesh.running_ca(f"ca-{kill}.log") as ca:
                if not clients:  # attested at the first start, then never again
                    clients, entries, agent_id = await attested_clients(mesh)
                load = Load(clients, entries, chance.randint(*KILL_AFTER_CALLS))
                running = asyncio.ensure_future(load.until_refused())
                with contextlib.suppress(TimeoutError):  # a slow machine: kill it where it got to
                    await asyncio.wait_for(load.time_to_kill.wait(), LOAD_LIMIT_S)
                ca.send_signal(signal.SIGKILL)
                await asyncio.wait_for(running, 30)
                assert ca.wait(10) == -signal.SIGKILL
            assert load.received, f"no call was answered before kill {kill}"
            received |= load.received

            rows = recorded(datastore)
            wrong = {
                serial: rows.get(serial) for serial, sid in received.items() if rows.get(serial) != [(sid, agent_id)]
            }
            assert not wrong, f"after kill {kill}, received but not recorded once as issued: {list(wrong.items())[:3]}"
            assert set(received) <= audited_serials(datastore), f"after kill {kill}: an SVID received is not audited"
            verified = mesh.ca("audit", "verify", "--datastore", "--json")
            assert json.loads(verified)["ok"], verified

        with mesh.running_ca("ca-after.log"):  # the clients, never restarted, are signed for again
            again = Load(clients, entries, kill_after=1)
            running = asyncio.ensure_future(again.until_refused())
            await asyncio.wait_for(again.time_to_kill.wait(), LOAD_LIMIT_S)
        await asyncio.wait_for(running, 30)  # the CA stopped
        assert again.received
        assert again.received.keys() <= recorded(datastore).keys()
    finally:
        for client in clients:
            await client.close()
