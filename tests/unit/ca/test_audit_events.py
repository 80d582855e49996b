"""What the audit records of issuance and refusals say (ca/audit.py): bounded lists, serials and
expiries, outcomes and reasons, and never a token."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ca.audit import (
    MAX_LISTED,
    Issuance,
    jwt_issuance_event,
    listed,
    outcome_of,
    reason_of,
    refusal_event,
    x509_issuance_event,
)
from ca.issuance import IssuedX509Svid
from ca.store.records import Actor
from spiffe_core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotAuthenticated,
    NotAuthorized,
    ResourceExhausted,
    UpstreamUnavailable,
)
from spiffe_core.keys import KeyType, generate_private_key
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.agent_pki import SigningCa

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
AGENT = Actor("spiffe://example.org/trustmesh/agent/join_token/node-1", "node-api")


def issued(count: int, pki: SigningCa) -> list[IssuedX509Svid]:
    key = generate_private_key(KeyType.EC_P256).public_key()
    svids = []
    for n in range(count):
        spiffe_id = SpiffeId.parse(f"spiffe://example.org/w{n}")
        chain = pki.sign(spiffe_id, key, not_before=NOW, not_after=NOW + timedelta(hours=1 + n))
        svids.append(IssuedX509Svid(spiffe_id, chain, pki.authority_id, chain[0].serial_number))
    return svids


@pytest.fixture(scope="module")
def pki() -> SigningCa:
    return SigningCa.create(TrustDomain("example.org"), NOW)


def test_listed_names_the_first_items_and_counts_the_rest() -> None:
    values = [str(n) for n in range(MAX_LISTED + 5)]
    assert listed("ids", values) == {"ids": values[:MAX_LISTED], "ids_omitted": 5}
    assert listed("ids", ["a"]) == {"ids": ["a"]}


def test_one_x509_svid_is_recorded_with_its_serial_expiry_and_authority(pki: SigningCa) -> None:
    (svid,) = issued(1, pki)
    event = x509_issuance_event(Issuance(AGENT), [svid], NOW)
    assert (event.actor, event.action, event.target, event.outcome) == (
        AGENT,
        "x509_svid.issue",
        "spiffe://example.org/w0",
        "ok",
    )
    assert event.detail == {
        "authority_id": pki.authority_id,
        "count": 1,
        "serial": format(svid.serial, "x"),
        "expires_at": svid.not_after.isoformat(),
    }


def test_a_batch_is_one_record_naming_a_bounded_number_of_ids_and_serials(pki: SigningCa) -> None:
    svids = issued(MAX_LISTED + 3, pki)
    event = x509_issuance_event(Issuance(AGENT, detail={"refused": 1}), svids, NOW)
    assert event.target == f"{MAX_LISTED + 3} X509-SVIDs"
    assert event.detail["count"] == MAX_LISTED + 3
    assert event.detail["spiffe_ids"] == [str(s.spiffe_id) for s in svids[:MAX_LISTED]]
    assert event.detail["serials"] == [format(s.serial, "x") for s in svids[:MAX_LISTED]]
    assert (event.detail["spiffe_ids_omitted"], event.detail["serials_omitted"]) == (3, 3)
    assert event.detail["expires_at"] == max(s.not_after for s in svids).isoformat()
    assert event.detail["refused"] == 1


def test_a_jwt_svid_record_names_audiences_key_and_expiry_but_not_the_token() -> None:
    event = jwt_issuance_event(
        AGENT, "spiffe://example.org/web", audience=["db", "cache"], key_id="k1", expires_at=NOW, now=NOW
    )
    assert (event.action, event.target, event.outcome) == ("jwt_svid.issue", "spiffe://example.org/web", "ok")
    assert event.detail == {"key_id": "k1", "expires_at": NOW.isoformat(), "audience": ["db", "cache"]}


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        pytest.param(NotAuthorized("banned"), "denied", id="not-authorized"),
        pytest.param(NotAuthenticated("no cert"), "denied", id="not-authenticated"),
        pytest.param(FailedPrecondition("guard rail"), "denied", id="guard-rail"),
        pytest.param(ResourceExhausted("slow down", 1.0), "denied", id="rate-limited"),
        pytest.param(InvalidArgument("bad CSR"), "failed", id="invalid"),
        pytest.param(UpstreamUnavailable("db down"), "failed", id="unavailable"),
        pytest.param(RuntimeError("bug"), "failed", id="bug"),
    ],
)
def test_refusals_are_denied_and_other_errors_failed(error: Exception, outcome: str) -> None:
    assert outcome_of(error) == outcome


def test_a_refusal_gives_our_first_line_as_its_reason_and_never_a_foreign_errors_text() -> None:
    assert reason_of(NotAuthorized("agent x is banned\nsecond line")) == "agent x is banned"
    assert reason_of(KeyError("/var/lib/trustmesh/keys/x509-1")) == "internal error; see the CA's log"


def test_a_refusal_event_carries_outcome_reason_and_detail() -> None:
    event = refusal_event(NOW, AGENT, "agent.authenticate", "node", NotAuthorized("banned"), detail={"serial": "ab"})
    assert (event.outcome, event.reason, event.detail) == ("denied", "banned", {"serial": "ab"})
