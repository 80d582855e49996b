"""Everything the CA does is audited once, naming who did it (issue 8): officer operations (dry runs and
refusals too), scheduled rotation, leaf revocation, admin-API minting, and on the node API attestation,
one record per signing batch, JWT-SVIDs and refused calls — with the refusals a caller can repeat
bounded. The officer's part runs on SQLite and PostgreSQL; the node API's on the real gRPC server (the ``ca``
fixture of conftest.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from ca.audit import MAX_LISTED, ROTATOR, Issuance
from ca.authority_manager import AuthorityManager
from ca.authority_ops import AuthorityOperations
from ca.http_api import create_admin_app
from ca.issuance import X509SvidRequest
from ca.rbac import BREAK_GLASS_ROLE
from ca.rotation import PUBLISH_HINTS
from ca.rotator import Rotator
from ca.service import CaService
from ca.store import AgentRepository, AuditLogRepository, AuditQuery, AuditRecord, Database
from ca.store.records import Actor, AuthorityKind
from spiffe_core.errors import FailedPrecondition
from spiffe_core.keys import KeyType, generate_private_key
from spiffe_core.spiffe_id import SpiffeId
from tests.integration.ca.test_node_api import (
    NODE_1,
    NODE_2,
    REFUSED,
    RPC_TIMEOUT,
    WEB,
    RunningCa,
    attest,
    attested_agent,
    channel,
    csr_for,
    refused,
    renewed,
    sign_nothing,
)
from tests.support.admin import LocalAdmin, RecordedAudit
from tests.support.clock import FakeClock
from tests.support.enterprise_pki import ca_use_cases, memory_authorities
from tests.support.store import OFFICER
from wire import node_pb2, node_pb2_grpc

# Who the local admin socket authenticates (TestClient has no socket; LocalAdmin stands in for uid 0).
LOCAL_ROOT = Actor("unix:uid=0", "unix-socket", BREAK_GLASS_ROLE)
CA_TTL = timedelta(minutes=60)
HINT = timedelta(minutes=1)
UNUSED: object = object()


def audit_records(database: Database, action: str | None = None) -> list[AuditRecord]:
    with database.transaction() as session:
        return list(AuditLogRepository(session).list(AuditQuery(action=action), limit=1000))


# --- officer operations, rotation, leaf revocation, admin minting (SQLite and PostgreSQL) --------------


@dataclass
class Officer:
    database: Database
    clock: FakeClock
    authorities: AuthorityManager
    ops: AuthorityOperations
    rotator: Rotator
    service: CaService


@pytest.fixture
def officer(database: Database) -> Officer:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    manager = memory_authorities(database, clock, CA_TTL, HINT)
    cases = ca_use_cases(database, manager, clock, timedelta(minutes=10))
    return Officer(database, clock, manager, cases.officer, cases.rotator, cases.service)


def officer_mint(officer: Officer) -> int:
    (svid,) = officer.service.mint_x509_svids(
        [X509SvidRequest(csr_for(generate_private_key(KeyType.EC_P256)), WEB)], Issuance(OFFICER)
    )
    return svid.serial


def test_each_officer_operation_is_one_record_by_the_officer(officer: Officer) -> None:
    old = officer.authorities.get_current().active_x509().id
    new = officer.ops.prepare(AuthorityKind.X509, OFFICER).changes[0].authority_id
    officer.clock.advance(HINT * PUBLISH_HINTS)
    officer.ops.activate(new, OFFICER)
    officer.ops.taint(old, OFFICER)
    officer.ops.revoke(old, OFFICER)
    officer.ops.rotate_now(AuthorityKind.JWT, OFFICER)
    records = audit_records(officer.database, "authority.")
    assert [(r.event.actor, r.event.action, r.event.outcome, r.event.detail["dry_run"]) for r in records] == [
        (OFFICER, "authority.prepare", "ok", False),
        (OFFICER, "authority.activate", "ok", False),
        (OFFICER, "authority.taint", "ok", False),
        (OFFICER, "authority.revoke", "ok", False),
        (OFFICER, "authority.rotate", "ok", False),
    ]
    assert [r.event.target for r in records[:4]] == [new, new, old, old]
    assert records[1].event.detail["changes"] == [
        f"{new} (x509): prepared -> active",
        f"{old} (x509): active -> retired",
    ]


def test_a_dry_run_is_recorded_as_one_and_changes_nothing_else(officer: Officer) -> None:
    report = officer.ops.rotate_now(AuthorityKind.X509, OFFICER, dry_run=True)
    (record,) = audit_records(officer.database)
    assert (record.event.action, record.event.target, record.event.detail["dry_run"]) == (
        "authority.rotate",
        "x509 authority",
        True,
    )
    assert record.event.detail["changes"] == [
        f"{change.authority_id} ({change.kind}): {change.before or 'new'} -> {change.after}"
        for change in report.changes
    ]
    assert [v.record.state.value for v in officer.ops.list() if v.record.kind is AuthorityKind.X509] == ["active"]


def test_a_refused_operation_is_recorded_as_denied_with_its_reason(officer: Officer) -> None:
    active = officer.authorities.get_current().active_x509().id
    with pytest.raises(FailedPrecondition) as raised:
        officer.ops.taint(active, OFFICER, dry_run=True)
    (record,) = audit_records(officer.database)
    assert (record.event.actor, record.event.action, record.event.target, record.event.outcome) == (
        OFFICER,
        "authority.taint",
        active,
        "denied",
    )
    assert record.event.reason == str(raised.value)
    assert record.event.detail == {"dry_run": True}


def test_a_leaf_revocation_names_the_revoked_serials(officer: Officer) -> None:
    serials = [officer_mint(officer) for _ in range(2)]
    officer.ops.revoke_svids(OFFICER, spiffe_id=WEB)
    (record,) = audit_records(officer.database, "x509_svid.revoke")
    assert (record.event.actor, record.event.target, record.event.detail["revoked"]) == (OFFICER, str(WEB), 2)
    assert sorted(record.event.detail["revoked_serials"]) == sorted(format(s, "x") for s in serials)


def test_scheduled_rotation_steps_are_recorded_by_the_rotator(officer: Officer) -> None:
    officer.clock.advance(CA_TTL / 2)
    officer.rotator.tick()
    records = audit_records(officer.database, "authority.")
    assert [(r.event.actor, r.event.action, r.event.detail["kind"]) for r in records] == [
        (ROTATOR, "authority.prepare", "x509"),
        (ROTATOR, "authority.prepare", "jwt"),
    ]
    assert all(r.event.detail["why"] for r in records)


def test_minting_through_the_admin_api_is_recorded_with_the_caller(officer: Officer) -> None:
    app = create_admin_app(
        officer.service,
        CollectorRegistry(),
        entries=UNUSED,  # type: ignore[arg-type]
        join_tokens=UNUSED,  # type: ignore[arg-type]
        authenticator=LocalAdmin(),
        audit=RecordedAudit(),
        clock=officer.clock,
    )
    client = TestClient(app)
    csr = csr_for(generate_private_key(KeyType.EC_P256))
    pem = x509.load_der_x509_csr(csr).public_bytes(serialization.Encoding.PEM).decode()
    minted = client.post("/v1/x509-svids", json={"csr_pem": pem, "spiffe_id": str(WEB)}).json()
    token = client.post("/v1/jwt-svids", json={"spiffe_id": str(WEB), "audience": ["payments"]}).json()["token"]
    x509_record, jwt_record = audit_records(officer.database)
    assert (x509_record.event.actor, x509_record.event.action, x509_record.event.target) == (
        LOCAL_ROOT,
        "x509_svid.issue",
        str(WEB),
    )
    assert (x509_record.event.detail["serial"], x509_record.event.detail["expires_at"]) == (
        minted["serial"],
        datetime.fromisoformat(minted["expires_at"].replace("Z", "+00:00")).isoformat(),
    )
    assert (jwt_record.event.actor, jwt_record.event.action, jwt_record.event.target) == (
        LOCAL_ROOT,
        "jwt_svid.issue",
        str(WEB),
    )
    assert jwt_record.event.detail["audience"] == ["payments"]
    assert token not in json.dumps([dict(r.event.detail) for r in (x509_record, jwt_record)])


# --- the node API (SQLite, real gRPC server) ------------------------------------------------------------


async def test_an_attestation_is_recorded_from_the_address_it_came_from(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    (record,) = audit_records(ca.database, "agent.attest")
    assert (record.event.actor.name, record.event.actor.method, record.event.target, record.event.outcome) == (
        "attestation:127.0.0.1",
        "attestation",
        str(agent.spiffe_id),
        "ok",
    )
    assert record.event.detail["method"] == "join_token"
    assert record.event.detail["serial"] == format(agent.chain[0].serial_number, "x")


async def test_a_refused_attestation_is_recorded_without_the_token(ca: RunningCa) -> None:
    token = "never-issued-token-" + "x" * 20
    await refused(attest(ca, token))
    (record,) = audit_records(ca.database, "agent.attest")
    assert (record.event.actor.name, record.event.outcome, record.event.reason, record.event.target) == (
        "attestation:127.0.0.1",
        "denied",
        REFUSED,
        "join_token",
    )
    assert token not in json.dumps(
        [dict(r.event.detail) | {"reason": r.event.reason} for r in audit_records(ca.database)]
    )


async def test_a_flood_of_refused_attestations_writes_a_bounded_number_of_records(ca: RunningCa) -> None:
    for _ in range(25):  # past the attestation rate's burst too: those refusals are throttled alike
        await refused(attest(ca, "wrong"))
    assert len(audit_records(ca.database, "agent.attest")) == 20


async def test_a_batch_of_a_hundred_signings_is_one_record(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    ids = [ca.entry(SpiffeId.parse(f"spiffe://example.org/w{n}"), NODE_1).id for n in range(100)]
    csr = csr_for(generate_private_key(KeyType.EC_P256))
    request = node_pb2.SignX509SvidsRequest(
        requests=[node_pb2.X509SvidRequest(entry_id=entry_id, csr=csr) for entry_id in ids]
    )
    async with channel(ca, ca.node_api_port, agent) as ch:
        response = await node_pb2_grpc.NodeStub(ch).SignX509Svids(request, timeout=RPC_TIMEOUT)
    assert all(not item.error for item in response.svids)
    (record,) = [r for r in audit_records(ca.database, "x509_svid.issue") if r.event.actor.name == str(NODE_1)]
    detail = record.event.detail
    assert (record.event.actor.method, record.event.target, detail["count"]) == ("node-api", "100 X509-SVIDs", 100)
    assert detail["spiffe_ids"] == [f"spiffe://example.org/w{n}" for n in range(MAX_LISTED)]
    assert detail["spiffe_ids_omitted"] == 100 - MAX_LISTED
    (attestation,) = audit_records(ca.database, "agent.attest")
    assert detail["authority_id"] == attestation.event.detail["authority_id"]


async def test_entries_refused_in_a_batch_are_named_in_its_record(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    mine = ca.entry(WEB, NODE_1)
    theirs = ca.entry(SpiffeId.parse("spiffe://example.org/db"), NODE_2)
    request = node_pb2.SignX509SvidsRequest(
        requests=[
            node_pb2.X509SvidRequest(entry_id=entry.id, csr=csr_for(generate_private_key(KeyType.EC_P256)))
            for entry in (mine, theirs)
        ]
    )
    async with channel(ca, ca.node_api_port, agent) as ch:
        await node_pb2_grpc.NodeStub(ch).SignX509Svids(request, timeout=RPC_TIMEOUT)
    (record,) = [r for r in audit_records(ca.database, "x509_svid.issue") if r.event.actor.name == str(NODE_1)]
    assert (record.event.target, record.event.detail["refused"], record.event.detail["refused_entries"]) == (
        str(WEB),
        1,
        [theirs.id],
    )


async def test_a_batch_of_only_foreign_entries_is_recorded_as_denied(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    theirs = ca.entry(SpiffeId.parse("spiffe://example.org/db"), NODE_2)
    request = node_pb2.SignX509SvidsRequest(requests=[node_pb2.X509SvidRequest(entry_id=theirs.id, csr=b"x")])
    async with channel(ca, ca.node_api_port, agent) as ch:
        await node_pb2_grpc.NodeStub(ch).SignX509Svids(request, timeout=RPC_TIMEOUT)
    (record,) = [r for r in audit_records(ca.database, "x509_svid.issue") if r.event.actor.name == str(NODE_1)]
    assert (record.event.outcome, record.event.reason) == ("denied", f"entry {theirs.id} is not parented to {NODE_1}")


async def test_a_jwt_svid_minted_on_the_node_api_is_recorded_for_the_agent(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    entry = ca.entry(WEB, NODE_1)
    async with channel(ca, ca.node_api_port, agent) as ch:
        response = await node_pb2_grpc.NodeStub(ch).MintJwtSvid(
            node_pb2.MintJwtSvidRequest(entry_id=entry.id, audience=["payments"]), timeout=RPC_TIMEOUT
        )
    (record,) = audit_records(ca.database, "jwt_svid.issue")
    assert (record.event.actor.name, record.event.actor.method, record.event.target) == (
        str(NODE_1),
        "node-api",
        str(WEB),
    )
    assert response.token not in json.dumps(dict(record.event.detail))


async def test_a_renewal_is_recorded_for_the_agent(ca: RunningCa) -> None:
    new = await renewed(ca, await attested_agent(ca))
    (record,) = audit_records(ca.database, "agent.renew")
    assert (record.event.actor.name, record.event.target, record.event.detail["serial"]) == (
        str(NODE_1),
        str(NODE_1),
        format(new.chain[0].serial_number, "x"),
    )


async def test_a_banned_agents_call_is_recorded_as_denied(ca: RunningCa) -> None:
    agent = await attested_agent(ca)
    with ca.database.transaction() as session:
        AgentRepository(session).set_banned(agent.spiffe_id, True, ca.clock.now())
    await refused(sign_nothing(ca, agent))
    (record,) = audit_records(ca.database, "agent.authenticate")
    assert (record.event.actor.name, record.event.outcome, record.event.reason) == (
        str(NODE_1),
        "denied",
        f"agent {NODE_1} is banned; an operator must lift the ban",
    )


async def test_a_replaced_agent_svid_is_recorded_as_denied_with_its_serial(ca: RunningCa) -> None:
    old = await attested_agent(ca)
    await renewed(ca, old)
    ca.clock.advance(timedelta(seconds=31))
    await refused(sign_nothing(ca, old))
    (record,) = audit_records(ca.database, "agent.authenticate")
    assert (record.event.outcome, record.event.detail["serial"]) == ("denied", format(old.chain[0].serial_number, "x"))
