"""The audit log's checkpoints and verification on a real datastore (SQLite and PostgreSQL): the upkeep
task signs the chain's head with the active authority, and ``verify`` catches records cut off the end,
a log cut back and written again, and checkpoints that were edited or forged — naming where."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from ca.audit import AuditTrail
from ca.audit_checkpoints import CheckpointTrust, sign_head
from ca.audit_log import AuditLog, when
from ca.audit_task import AuditKeeper
from ca.audit_throttle import RefusalThrottle
from ca.authority import AuthorityState, X509Authority, authority_id_for
from ca.authority_manager import AuthorityManager
from ca.http_audit import record_document
from ca.ratelimit import Rate
from ca.store import Actor, AuditCheckpointRepository, AuditEvent, AuditQuery, Database
from ca.upstream import CaSubject, SelfSignedUpstream
from spiffe_core.errors import FailedPrecondition
from spiffe_core.keys import KeyType, generate_private_key
from spiffe_core.spiffe_id import TrustDomain
from tests.support.clock import FakeClock
from tests.support.enterprise_pki import memory_authorities

TD = TrustDomain("example.org")
INTERVAL = timedelta(minutes=1)
ALICE = Actor("alice", "oidc", "operator")


@dataclass
class Audit:
    database: Database
    clock: FakeClock
    authorities: AuthorityManager
    trail: AuditTrail
    keeper: AuditKeeper
    log: AuditLog

    def append(self, count: int) -> None:
        for _ in range(count):
            self.clock.advance(timedelta(seconds=1))
            self.trail.record(AuditEvent(self.clock.now(), ALICE, "entry.create", "e", "ok"))

    def sql(self, *statements: str) -> None:
        with self.database.transaction() as session:
            for statement in statements:
                session.execute(text(statement))


@pytest.fixture
def audit(database: Database) -> Audit:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    authorities = memory_authorities(database, clock, timedelta(days=7))
    trail = AuditTrail(database, RefusalThrottle(Rate(1 / 60, 2), Rate(100, 100)))
    keeper = AuditKeeper(database, authorities, trail, clock, INTERVAL)
    log = AuditLog(database, lambda: CheckpointTrust.of(authorities.get_current()), clock, INTERVAL)
    return Audit(database, clock, authorities, trail, keeper, log)


def test_a_log_without_checkpoints_verifies_and_says_so(audit: Audit) -> None:
    audit.append(3)
    result = audit.log.verify()
    assert (result.ok, result.records, result.last_id, result.newest) == (True, 3, 3, None)
    assert result.summary == (
        "the audit log verifies: 3 records up to record 3; no checkpoint yet, so records cut off the end could "
        "go unnoticed"
    )


def test_the_keeper_signs_the_head_once_and_again_when_it_moved(audit: Audit) -> None:
    audit.append(5)
    first = audit.keeper.tick()
    assert first is not None
    assert (first.last_id, first.authority_id) == (5, audit.authorities.get_current().active_x509().id)
    assert audit.keeper.tick() is None
    audit.append(2)
    second = audit.keeper.tick()
    assert second is not None
    assert second.last_id == 7


def test_an_empty_log_gets_no_checkpoint(audit: Audit) -> None:
    assert audit.keeper.tick() is None


def test_a_verified_checkpoint_is_reported_with_its_age(audit: Audit) -> None:
    audit.append(5)
    checkpoint = audit.keeper.tick()
    assert checkpoint is not None
    audit.clock.advance(timedelta(seconds=40))
    result = audit.log.verify()
    assert (result.ok, result.checkpoints, result.newest_age) == (True, 1, timedelta(seconds=40))
    assert result.summary == (
        f"the audit log verifies: 5 records up to record 5; 1 checkpoints verified, the newest (checkpoint "
        f"{checkpoint.id}, signed {when(checkpoint.at)}, 40s ago) covers up to record 5"
    )
    assert result.notes == ()


def test_records_cut_off_the_end_past_a_checkpoint_are_named(audit: Audit) -> None:
    audit.append(5)
    checkpoint = audit.keeper.tick()
    assert checkpoint is not None
    audit.sql("DELETE FROM audit_log WHERE id > 3")
    result = audit.log.verify()
    assert (result.ok, result.first_bad_id) == (False, 5)
    assert result.problem == (
        f"the log ends at record 3 but checkpoint {checkpoint.id} (signed {when(checkpoint.at)}) covers up to "
        "record 5: records were cut off the end"
    )


def test_a_log_cut_back_and_written_again_past_a_checkpoint_is_named(audit: Audit) -> None:
    audit.append(5)
    checkpoint = audit.keeper.tick()
    assert checkpoint is not None
    audit.sql("DELETE FROM audit_log WHERE id > 3")
    audit.append(5)  # SQLite reuses IDs 4..8; PostgreSQL's sequence goes on from 6
    result = audit.log.verify()
    signed = f"checkpoint {checkpoint.id} (signed {when(checkpoint.at)})"
    expected = (
        f"record 5 is not the one {signed} covers: the log was cut back to before it and written again, or "
        "rewritten from there on"
        if audit.database.dialect == "sqlite"
        else f"record 5 is missing although {signed} covers it: the log was rewritten"
    )
    assert (result.ok, result.first_bad_id, result.problem) == (False, 5, expected)


def test_a_chain_problem_is_named_before_any_checkpoint_problem(audit: Audit) -> None:
    audit.append(5)
    audit.keeper.tick()
    audit.sql("UPDATE audit_log SET target = 'x' WHERE id = 2", "DELETE FROM audit_log WHERE id > 3")
    result = audit.log.verify()
    assert (result.first_bad_id, result.problem) == (2, "record 2 was edited (its hash does not match its contents)")


def test_an_edited_checkpoint_is_named_as_forged(audit: Audit) -> None:
    audit.append(5)
    checkpoint = audit.keeper.tick()
    assert checkpoint is not None
    audit.sql(f"UPDATE audit_checkpoints SET last_id = 3 WHERE id = {checkpoint.id}")
    result = audit.log.verify()
    assert result.problem == (
        f"checkpoint {checkpoint.id} (signed {when(checkpoint.at)}) does not verify with the certificate of "
        f"authority {checkpoint.authority_id} it names: it was forged or edited"
    )


def test_a_checkpoint_signed_with_a_key_of_ones_own_is_not_evidence(audit: Audit) -> None:
    """Someone with write access to the datastore adds a checkpoint with a self-made certificate: it is
    counted apart and neither breaks nor vouches for the log."""
    audit.append(2)
    key = generate_private_key(KeyType.EC_P256)
    authority_id = authority_id_for(key.public_key())
    cert, _ = SelfSignedUpstream().mint_x509_ca(
        private_key=key,
        trust_domain=TD,
        subject=CaSubject().name_for(TD, authority_id),
        not_before=audit.clock.now() - timedelta(hours=1),
        not_after=audit.clock.now() + timedelta(hours=1),
    )
    forged = sign_head(X509Authority(authority_id, cert, key, AuthorityState.ACTIVE), audit.clock.now(), 99, "0" * 64)
    with audit.database.transaction() as session:
        AuditCheckpointRepository(session).add(
            at=forged.at,
            last_id=forged.last_id,
            last_hash=forged.last_hash,
            authority_id=forged.authority_id,
            certificate_der=forged.certificate_der,
            signature=forged.signature,
        )
    result = audit.log.verify()
    assert (result.ok, result.checkpoints, result.unverifiable) == (True, 0, 1)


def test_records_no_checkpoint_covers_for_two_intervals_are_noted(audit: Audit) -> None:
    audit.append(2)
    audit.keeper.tick()
    audit.append(1)
    audit.clock.advance(3 * INTERVAL)
    (note,) = audit.log.verify().notes
    assert note.startswith("record 3 (of ")
    assert note.endswith(
        "and the ones after it are covered by no checkpoint, although one is written every 1m: the checkpoint "
        "task is failing (see the CA's log), or the newest checkpoints were deleted"
    )


def test_the_keeper_does_not_sign_a_chain_broken_since_its_last_checkpoint(audit: Audit) -> None:
    audit.append(3)
    audit.keeper.tick()
    audit.append(3)
    audit.sql("UPDATE audit_log SET outcome = 'denied' WHERE id = 5")
    with pytest.raises(FailedPrecondition) as raised:
        audit.keeper.tick()
    assert str(raised.value) == (
        "not signing an audit checkpoint: record 5 was edited (its hash does not match its contents); run "
        "`trustmesh-ca audit verify`"
    )


def test_the_keeper_notices_a_log_cut_back_even_when_nothing_new_was_written(audit: Audit) -> None:
    audit.append(3)
    checkpoint = audit.keeper.tick()
    assert checkpoint is not None
    audit.sql("DELETE FROM audit_log WHERE id = 3")
    with pytest.raises(FailedPrecondition, match="record 3 is no longer the one checkpoint"):
        audit.keeper.tick()


def test_two_replicas_sign_one_head_once(audit: Audit) -> None:
    other = AuditKeeper(audit.database, audit.authorities, AuditTrail(audit.database), audit.clock, INTERVAL)
    audit.append(3)
    assert audit.keeper.tick() is not None
    assert other.tick() is None
    with audit.database.transaction() as session:
        assert len(AuditCheckpointRepository(session).list()) == 1


def test_refusals_over_the_throttle_are_summed_up_in_one_record_at_the_next_tick(audit: Audit) -> None:
    attacker = Actor("attestation:192.0.2.7", "attestation")
    for n in range(5):
        audit.trail.record_refusal(AuditEvent(audit.clock.now(), attacker, "agent.attest", f"t{n}", "denied", {}, "no"))
    assert len(audit.log.list(AuditQuery(actor=attacker.name))) == 2
    audit.keeper.tick()
    (summary,) = audit.log.list(AuditQuery(action="audit.suppressed"))
    assert (summary.event.actor.name, summary.event.target, summary.event.detail["count"]) == (
        "system:audit",
        attacker.name,
        3,
    )
    assert summary.event.detail["actions"] == {"agent.attest": 3}
    assert audit.log.verify().ok


def siem_hash(line: dict[str, Any]) -> str:
    """docs/audit.md's recipe, as a SIEM would write it: nothing of trustmesh's, only JSON and SHA-256."""
    fields = {key: line[key] for key in ("at", "actor", "action", "target", "outcome", "detail")}
    fields |= {key: line[key] for key in ("auth_method", "role", "reason") if line[key]}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((line["prev_hash"] + canonical).encode()).hexdigest()


def test_an_export_can_be_verified_by_a_siem_on_its_own(audit: Audit) -> None:
    audit.append(2)
    audit.trail.record(
        AuditEvent(
            audit.clock.now(),
            Actor("bob", "mtls", "security-officer"),
            "authority.taint",
            "a",
            "denied",
            {"dry_run": True, "ratio": 0.5, "names": ["é", "ü"]},
            "authority a is active",
        )
    )
    lines = [json.loads(json.dumps(record_document(record))) for record in audit.log.export(AuditQuery())]
    assert [siem_hash(line) for line in lines] == [line["hash"] for line in lines]
    assert [line["prev_hash"] for line in lines[1:]] == [line["hash"] for line in lines[:-1]]


def test_export_pages_through_every_matching_record(audit: Audit) -> None:
    audit.append(2)
    audit.trail.record(AuditEvent(audit.clock.now(), Actor("bob", "mtls"), "authority.taint", "a", "ok"))
    exported = list(audit.log.export(AuditQuery(actor="alice")))
    assert [r.id for r in exported] == [1, 2]
