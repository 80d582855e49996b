"""A lone X509-SVID (a batch of up to ITEMS_SIGNED_NOW) is signed and recorded on the node API's event
loop when nothing in it would wait (ca.store.immediate), and on a worker thread otherwise: the answer,
the issued-certificate row and the audit record are the same either way, and the loop never waits on
the datastore."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from ca.node_cache import TTL_SECONDS
from ca.node_service import ITEMS_SIGNED_NOW
from ca.service import CaService
from ca.store import AuditLogRepository, IssuedCertificateRepository
from ca.store.records import CertificateQuery
from spiffe_core.keys import KeyType, generate_private_key
from spiffe_core.spiffe_id import SpiffeId
from tests.integration.ca.test_node_api import (
    NODE_1,
    RPC_TIMEOUT,
    WEB,
    RunningCa,
    attested_agent,
    channel,
    csr_for,
    sign_for,
)
from wire import node_pb2, node_pb2_grpc

# How late a 10 ms tick may come while the loop serves a call: far below the busy timeout a worker's
# transaction waits for the writer lock (10 s), so a loop that waited on the datastore would show.
LOOP_LAG_BOUND = 0.25


def _issued_and_audited(ca: RunningCa) -> tuple[int, list[str]]:
    """How many SVIDs of WEB were recorded, and the audit records of the agent's X509-SVID issuance."""
    with ca.database.transaction() as session:
        count = IssuedCertificateRepository(session).count(CertificateQuery(spiffe_id=WEB))
        records = AuditLogRepository(session).list()
    return count, [
        f"{r.event.action} {r.event.outcome}"
        for r in records
        if r.event.action == "x509_svid.issue" and r.event.actor.name == str(NODE_1)
    ]


async def test_a_lone_svid_is_signed_and_recorded_at_once(ca: RunningCa, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = await attested_agent(ca)
    entry = ca.entry(WEB, NODE_1)
    await sign_for(ca, agent, entry.id)  # the first call reads the agent's entries on a worker
    monkeypatch.setattr(CaService, "mint_x509_svids_each", lambda *_: pytest.fail("signed on a worker thread"))
    item = await sign_for(ca, agent, entry.id)
    assert (item.error, len(item.cert_chain)) == ("", 1)
    assert _issued_and_audited(ca) == (2, ["x509_svid.issue ok", "x509_svid.issue ok"])


async def test_a_lone_svid_is_signed_at_once_long_after_the_agents_last_call(
    ca: RunningCa, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Agents call every few minutes: one CA process hears every change to what it read of an agent,
    so it still holds the agent's entries then (ca.node_cache), instead of reading them again on a
    worker once a TTL passed (which would send nearly every real call there)."""
    agent = await attested_agent(ca)
    entry = ca.entry(WEB, NODE_1)
    await sign_for(ca, agent, entry.id)
    await asyncio.sleep(TTL_SECONDS + 0.1)
    monkeypatch.setattr(CaService, "mint_x509_svids_each", lambda *_: pytest.fail("signed on a worker thread"))
    item = await sign_for(ca, agent, entry.id)
    assert (item.error, len(item.cert_chain)) == ("", 1)


async def test_a_batch_over_the_bound_is_signed_on_a_worker(ca: RunningCa, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = await attested_agent(ca)
    entry = ca.entry(WEB, NODE_1)
    await sign_for(ca, agent, entry.id)
    monkeypatch.setattr(CaService, "mint_x509_svids_now", lambda *_: pytest.fail("signed on the event loop"))
    request = node_pb2.SignX509SvidsRequest(
        requests=[
            node_pb2.X509SvidRequest(entry_id=entry.id, csr=csr_for(generate_private_key(KeyType.EC_P256)))
            for _ in range(ITEMS_SIGNED_NOW + 1)
        ]
    )
    async with channel(ca, ca.node_api_port, agent) as ch:
        response = await node_pb2_grpc.NodeStub(ch).SignX509Svids(request, timeout=RPC_TIMEOUT)
    assert [item.error for item in response.svids] == [""] * (ITEMS_SIGNED_NOW + 1)
    assert _issued_and_audited(ca) == (ITEMS_SIGNED_NOW + 2, ["x509_svid.issue ok", "x509_svid.issue ok"])


async def test_a_refused_item_is_answered_and_audited_once_by_the_worker(ca: RunningCa) -> None:
    """Signing at once gives way without a trace; the worker refuses the item and audits it, once."""
    agent = await attested_agent(ca)
    entry = ca.entry(WEB, NODE_1)
    await sign_for(ca, agent, entry.id)
    request = node_pb2.SignX509SvidsRequest(requests=[node_pb2.X509SvidRequest(entry_id=entry.id, csr=b"broken")])
    async with channel(ca, ca.node_api_port, agent) as ch:
        response = await node_pb2_grpc.NodeStub(ch).SignX509Svids(request, timeout=RPC_TIMEOUT)
    (item,) = response.svids
    assert item.error.startswith("CSR is not a PKCS#10 certificate request")
    assert _issued_and_audited(ca) == (1, ["x509_svid.issue ok", "x509_svid.issue failed"])


async def test_a_broken_csr_among_lone_svids_is_refused_in_its_place_and_the_others_signed_once_at_once(
    ca: RunningCa, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Until 2026-11-28 such a call was signed on the loop, rolled back and signed again on a worker."""
    agent = await attested_agent(ca)
    entry = ca.entry(WEB, NODE_1)
    await sign_for(ca, agent, entry.id)
    monkeypatch.setattr(CaService, "mint_x509_svids_each", lambda *_: pytest.fail("signed on a worker thread"))
    csrs = [csr_for(generate_private_key(KeyType.EC_P256)), b"broken", csr_for(generate_private_key(KeyType.EC_P256))]
    request = node_pb2.SignX509SvidsRequest(
        requests=[node_pb2.X509SvidRequest(entry_id=entry.id, csr=csr) for csr in csrs]
    )
    async with channel(ca, ca.node_api_port, agent) as ch:
        response = await node_pb2_grpc.NodeStub(ch).SignX509Svids(request, timeout=RPC_TIMEOUT)
    assert [bool(item.error) for item in response.svids] == [False, True, False]
    assert response.svids[1].error.startswith("CSR is not a PKCS#10 certificate request")
    assert _issued_and_audited(ca) == (3, ["x509_svid.issue ok", "x509_svid.issue ok"])
    with ca.database.transaction() as session:
        last = AuditLogRepository(session).list()[-1].event
    assert (last.detail["count"], last.detail["invalid"]) == (2, 1)


async def test_while_another_writer_holds_the_datastore_a_lone_svid_waits_on_a_worker_not_the_loop(
    ca: RunningCa, tmp_path: Path
) -> None:
    agent = await attested_agent(ca)
    entry = ca.entry(WEB, NODE_1)
    await sign_for(ca, agent, entry.id)
    other = sqlite3.connect(tmp_path / "ca.db", timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        call = asyncio.create_task(sign_for(ca, agent, entry.id))
        worst_lag = 0.0
        for _ in range(30):  # 0.3 s of ticks while the writer lock is held
            ticked = time.monotonic()
            await asyncio.sleep(0.01)
            worst_lag = max(worst_lag, time.monotonic() - ticked - 0.01)
        assert not call.done()  # its record waits for the writer lock, on a worker thread
        other.execute("COMMIT")
        item = await asyncio.wait_for(call, RPC_TIMEOUT)
    finally:
        other.close()
    assert worst_lag < LOOP_LAG_BOUND
    assert (item.error, len(item.cert_chain)) == ("", 1)
    assert _issued_and_audited(ca) == (2, ["x509_svid.issue ok", "x509_svid.issue ok"])


async def test_another_agents_entry_is_refused_as_before(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    await sign_for(ca, agent, ca.entry(WEB, NODE_1).id)
    theirs = ca.entry(SpiffeId.parse("spiffe://example.org/db"), SpiffeId.parse(f"{NODE_1}-other"))
    item = await sign_for(ca, agent, theirs.id)
    assert item.error == f"entry {theirs.id} is not parented to {NODE_1}"
    assert _issued_and_audited(ca) == (1, ["x509_svid.issue ok", "x509_svid.issue denied"])
