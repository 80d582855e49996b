"""The manager's pure decisions (sds/planning.py): when to rotate, which entries need a new X509-SVID,
when the agent's own SVID must be renewed at once, and what snapshot to publish. (How long to back off
is spiffe_core.backoff's, tested in tests/unit/spiffe_core/test_backoff.py.)"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from sds.node_client import EntryRecord, SyncState
from sds.planning import (
    HeldSvid,
    SignReason,
    build_snapshot,
    next_rotation,
    own_svid_reason,
    plan_signing,
    received_life_start,
    same_content,
)
from spiffe_core.bundle import Bundle
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.agent_pki import SigningCa

TD = TrustDomain("example.org")
PEER = TrustDomain("peer.example")
NOW = datetime(2030, 1, 1, 12, tzinfo=UTC)
CA = SigningCa.create(TD, NOW - timedelta(days=1), ttl=timedelta(days=3))
OTHER_CA = SigningCa.create(TD, NOW - timedelta(days=1), ttl=timedelta(days=3))
AGENT = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-1")
WEB = SpiffeId.parse("spiffe://example.org/web")
DB = SpiffeId.parse("spiffe://example.org/db")
UID = frozenset({Selector("unix", "uid:1000")})


def entry(entry_id: str = "e-web", spiffe_id: SpiffeId = WEB, revision: int = 1, **fields: Any) -> EntryRecord:
    return EntryRecord(entry_id, spiffe_id, AGENT, UID, revision=revision, **fields)


def state(*entries: EntryRecord, bundle: Bundle | None = None, **fields: Any) -> SyncState:
    return SyncState(1, bundle or CA.bundle(), entries=entries, **fields)


def held(
    record: EntryRecord,
    *,
    ca: SigningCa = CA,
    issued: datetime = NOW - timedelta(minutes=10),
    ttl: timedelta = timedelta(hours=1),
    rotate_at: datetime | None = None,
    spiffe_id: SpiffeId | None = None,
) -> HeldSvid:
    svid = ca.issue(spiffe_id or record.spiffe_id, not_before=issued, not_after=issued + ttl)
    return HeldSvid(
        record.id, record.revision, svid.spiffe_id, svid.cert_chain, svid.private_key, rotate_at or issued + ttl / 2
    )


# --- next_rotation ------------------------------------------------------------------------------------


def test_rotation_without_jitter_is_at_half_life() -> None:
    at = next_rotation(NOW, NOW, NOW + timedelta(hours=1), fraction=0.5, jitter=0.0, rng=random.Random(1))
    assert at == NOW + timedelta(minutes=30)


@given(
    life_seconds=st.integers(min_value=1, max_value=30 * 86400),
    fraction=st.floats(min_value=0.1, max_value=0.8),
    jitter=st.floats(min_value=0.0, max_value=0.2),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_rotation_stays_within_the_jitter_band(life_seconds: int, fraction: float, jitter: float, seed: int) -> None:
    life = timedelta(seconds=life_seconds)
    at = next_rotation(NOW, NOW, NOW + life, fraction=fraction, jitter=jitter, rng=random.Random(seed))
    slack = timedelta(microseconds=2)  # timedelta arithmetic rounds to microseconds
    assert NOW + life * fraction * (1 - jitter) - slack <= at <= NOW + life * fraction * (1 + jitter) + slack


def test_rotation_of_an_svid_past_its_rotation_point_is_now() -> None:
    issued = NOW - timedelta(hours=1)
    at = next_rotation(NOW, issued, issued + timedelta(hours=2), fraction=0.5, jitter=0.1, rng=random.Random(1))
    assert at == NOW


def test_rotation_is_never_after_expiry() -> None:
    at = next_rotation(
        NOW - timedelta(days=2), NOW - timedelta(days=1), NOW, fraction=0.99, jitter=0.5, rng=random.Random(3)
    )
    assert at <= NOW


def revoked(record: EntryRecord, current: HeldSvid) -> tuple[SyncState, HeldSvid]:
    return state(record, revoked_serials=frozenset({current.serial})), current


# --- plan_signing -------------------------------------------------------------------------------------


def reasons(sync: SyncState, held_svids: dict[str, HeldSvid], now: datetime = NOW) -> list[tuple[str, SignReason]]:
    return [(e.id, reason) for e, reason in plan_signing(sync, held_svids, now).to_sign]


def test_signs_every_entry_without_an_svid_in_the_cas_order() -> None:
    web, db = entry(), entry("e-db", DB)
    assert reasons(state(web, db), {}) == [("e-web", SignReason.NEW), ("e-db", SignReason.NEW)]


def test_keeps_a_valid_svid_for_an_unchanged_entry() -> None:
    web = entry()
    plan = plan_signing(state(web), {"e-web": held(web)}, NOW)
    assert plan.to_sign == ()
    assert plan.to_drop == frozenset()


def test_drops_the_svid_of_a_removed_entry() -> None:
    web, db = entry(), entry("e-db", DB)
    plan = plan_signing(state(web), {"e-web": held(web), "e-db": held(db)}, NOW)
    assert plan.to_drop == frozenset({"e-db"})


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(
            lambda web: (state(entry(revision=2)), held(web)),
            SignReason.ENTRY_CHANGED,
            id="entry-revision-changed",
        ),
        pytest.param(
            lambda web: (state(web), held(web, spiffe_id=DB)),
            SignReason.ENTRY_CHANGED,
            id="held-for-another-spiffe-id",
        ),
        pytest.param(
            lambda web: revoked(web, held(web)),
            SignReason.REVOKED,
            id="serial-revoked",
        ),
        pytest.param(
            lambda web: (state(web, tainted_authority_ids=frozenset({CA.authority_id})), held(web)),
            SignReason.TAINTED,
            id="authority-tainted",
        ),
        pytest.param(
            lambda web: (state(web), held(web, rotate_at=NOW)),
            SignReason.ROTATION_DUE,
            id="rotation-time-reached",
        ),
        pytest.param(
            lambda web: (state(web), held(web, issued=NOW - timedelta(hours=2), rotate_at=NOW + timedelta(hours=1))),
            SignReason.ROTATION_DUE,
            id="expired",
        ),
        pytest.param(
            lambda web: (state(web), held(web, ca=OTHER_CA)),
            SignReason.UNTRUSTED,
            id="signer-not-in-bundle",
        ),
    ],
)
def test_replaces_an_svid_that_must_not_stay(
    make: Callable[[EntryRecord], tuple[SyncState, HeldSvid]], reason: SignReason
) -> None:
    web = entry()
    sync, current = make(web)
    assert reasons(sync, {"e-web": current}) == [("e-web", reason)]


def test_a_tainted_authority_that_did_not_sign_the_svid_changes_nothing() -> None:
    web = entry()
    sync = state(web, tainted_authority_ids=frozenset({OTHER_CA.authority_id}))
    assert reasons(sync, {"e-web": held(web)}) == []


def test_an_svid_whose_rotation_is_near_goes_along_with_one_that_must_be_signed() -> None:
    """Rotations jitter spreads a few minutes apart cost the CA one call, in the CA's order."""
    db, web = entry("e-db", DB), entry()
    near = held(db, rotate_at=NOW + timedelta(minutes=5))  # within a tenth of its hour-long life
    assert reasons(state(db, web), {"e-db": near, "e-web": held(web, rotate_at=NOW)}) == [
        ("e-db", SignReason.ROTATION_NEAR),
        ("e-web", SignReason.ROTATION_DUE),
    ]


def test_an_svid_whose_rotation_is_near_waits_for_its_time_when_nothing_else_is_signed() -> None:
    db = entry("e-db", DB)
    assert reasons(state(db), {"e-db": held(db, rotate_at=NOW + timedelta(minutes=5))}) == []


def test_an_svid_whose_rotation_is_further_than_a_tenth_of_its_life_stays() -> None:
    db, web = entry("e-db", DB), entry()
    later = held(db, rotate_at=NOW + timedelta(minutes=7))
    assert reasons(state(db, web), {"e-db": later, "e-web": held(web, rotate_at=NOW)}) == [
        ("e-web", SignReason.ROTATION_DUE)
    ]


def test_an_entry_listed_twice_is_signed_once() -> None:
    web = entry()
    assert reasons(state(web, web), {}) == [("e-web", SignReason.NEW)]


# --- own_svid_reason (the agent's own X509-SVID) --------------------------------------------------------

AGENT_SVID = CA.issue(AGENT, not_before=NOW - timedelta(minutes=10), not_after=NOW + timedelta(minutes=50))


@pytest.mark.parametrize(
    ("sync", "reason"),
    [
        pytest.param(state(), None, id="nothing-to-do"),
        pytest.param(
            state(tainted_authority_ids=frozenset({OTHER_CA.authority_id})), None, id="another-authority-tainted"
        ),
        pytest.param(
            state(tainted_authority_ids=frozenset({CA.authority_id})), SignReason.TAINTED, id="signer-tainted"
        ),
        pytest.param(
            state(revoked_serials=frozenset({AGENT_SVID.leaf.serial_number})), SignReason.REVOKED, id="serial-revoked"
        ),
        pytest.param(state(bundle=OTHER_CA.bundle()), SignReason.UNTRUSTED, id="signer-gone-from-bundle"),
    ],
)
def test_own_svid_is_renewed_at_once_when_the_state_says_so(sync: SyncState, reason: SignReason | None) -> None:
    assert own_svid_reason(AGENT_SVID.cert_chain, sync, NOW) is reason


def test_an_expired_own_svid_is_left_to_the_renewal_schedule() -> None:
    expired = NOW + timedelta(hours=1)
    assert own_svid_reason(AGENT_SVID.cert_chain, state(), expired) is None


# --- build_snapshot -----------------------------------------------------------------------------------


def test_snapshot_maps_entries_to_workload_svids_in_entry_order() -> None:
    peer_bundle = Bundle(PEER, (SigningCa.create(PEER, NOW).cert,))
    web = entry(federates_with=frozenset({PEER}), hint="external")
    db = entry("e-db", DB)
    sync = state(db, web, federated_bundles={PEER: peer_bundle}, crls=(b"crl",))
    held_web, held_db = held(web), held(db)
    snapshot = build_snapshot(sync, {"e-web": held_web, "e-db": held_db}, NOW, version=7)
    assert [s.entry_id for s in snapshot.svids] == ["e-db", "e-web"]
    svid = snapshot.svids[1]
    assert (svid.spiffe_id, svid.selectors, svid.federates_with, svid.hint) == (WEB, UID, frozenset({PEER}), "external")
    assert svid.cert_chain == held_web.cert_chain
    assert snapshot.version == 7
    assert snapshot.bundle == CA.bundle()
    assert dict(snapshot.federated_bundles) == {PEER: peer_bundle}
    assert snapshot.crls == (b"crl",)


def test_snapshot_carries_the_legacy_roots_and_a_change_of_them_is_new_content() -> None:
    roots = {"corp": SigningCa.create(TrustDomain("corp.example"), NOW).cert.public_bytes(serialization.Encoding.PEM)}
    before = build_snapshot(state(entry()), {}, NOW, version=1)
    after = build_snapshot(state(entry(), legacy_roots=roots), {}, NOW, version=2)

    assert dict(after.legacy_roots) == roots
    assert not same_content(before, after)
    assert same_content(after, build_snapshot(state(entry(), legacy_roots=dict(roots)), {}, NOW, version=3))


@pytest.mark.parametrize(
    ("make", "served"),
    [
        pytest.param(lambda web, h: state(web, revoked_serials=frozenset({h.serial})), False, id="revoked-withdrawn"),
        pytest.param(
            lambda web, h: state(web, tainted_authority_ids=frozenset({CA.authority_id})), True, id="tainted-kept"
        ),
        pytest.param(lambda web, h: state(entry(spiffe_id=DB)), False, id="entry-now-names-another-id"),
        pytest.param(lambda web, h: state(entry(revision=5)), True, id="selectors-changed-same-id-kept"),
    ],
)
def test_snapshot_serves_an_old_svid_only_while_it_is_safe(
    make: Callable[[EntryRecord, HeldSvid], SyncState], served: bool
) -> None:
    web = entry()
    current = held(web)
    snapshot = build_snapshot(make(web, current), {"e-web": current}, NOW, version=1)
    assert bool(snapshot.svids) is served


def test_snapshot_leaves_out_an_expired_svid() -> None:
    web = entry()
    expired = held(web, issued=NOW - timedelta(hours=2))
    assert build_snapshot(state(web), {"e-web": expired}, NOW, version=1).svids == ()


def test_a_just_received_svid_counts_its_life_from_arrival_not_from_its_backdated_not_before() -> None:
    not_after = NOW + timedelta(seconds=6)
    start = received_life_start(NOW - timedelta(seconds=10), not_after, NOW)
    at = next_rotation(NOW, start, not_after, fraction=0.5, jitter=0.0, rng=random.Random(1))
    assert at == NOW + timedelta(seconds=3)
