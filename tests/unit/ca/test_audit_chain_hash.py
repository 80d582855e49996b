"""The audit chain's hash of a record is fixed by docs/audit.md (SHA-256 over the previous hash and the
record's canonical JSON): records written by any version of the CA must verify under every other, so
these digests are pinned, for an issuance record (non-ASCII, nested detail, another UTC offset) and for
a refusal (the optional fields present)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from ca.store.records import Actor, AuditEvent
from ca.store.repositories.audit import GENESIS_HASH, chain_hash

AT = datetime(2026, 11, 28, 2, 3, 4, 5678, tzinfo=timezone(timedelta(hours=1)))


def test_the_hash_of_an_issuance_record_is_the_documented_digest() -> None:
    event = AuditEvent(
        AT,
        Actor("spiffe://example.org/agent/é", "node-api", ""),
        "x509_svid.issue",
        "spiffe://example.org/web",
        "ok",
        {"count": 2, "serials": ["1f", "a0"], "expires_at": "2026-11-28T03:00:00+00:00", "note": 'ünïcode "quoted"'},
        "",
    )
    assert chain_hash(GENESIS_HASH, event) == "aeb0445b894d99059f31a069a7cfa29f7fe19921b3657a86ac964a9743656892"


def test_the_hash_of_a_refusal_with_role_and_reason_is_the_documented_digest() -> None:
    event = AuditEvent(AT, Actor("admin", "oidc", "officer"), "authority.prepare", "t", "denied", {}, "refused: reason")
    assert chain_hash("ab" * 32, event) == "cfc777bcf7afb255de8d972ddb6b3dbc6768b327ae0e96884f486b3374400745"
