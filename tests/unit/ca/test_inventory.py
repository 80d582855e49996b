"""The inventory's pure parts (ca/inventory.py): cursors, the authority timeline, token states and
what a filter means."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from ca.authority import AuthorityState
from ca.inventory import (
    SvidFilter,
    TimelineEventKind,
    TokenState,
    authority_timeline,
    decode_cursor,
    encode_cursor,
    token_state,
)
from ca.store import AuthorityKind, CertificateQuery, JoinToken
from spiffe_core.errors import InvalidArgument
from tests.support.store import NOW, authority

HOUR = timedelta(hours=1)
NOT_HANDED_OUT = (
    "the cursor is not one this CA handed out; pass next_cursor from the previous page as it was, or start "
    "again without a cursor"
)


def test_a_cursor_round_trips_its_time_and_key() -> None:
    assert decode_cursor(encode_cursor(NOW, "ab12")) == (NOW, "ab12")


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("not base64 !", id="garbage"),
        pytest.param(encode_cursor(NOW, "k")[:-3], id="truncated"),
        pytest.param("W1td", id="empty-list"),
        pytest.param("x" * 300, id="too-long"),
    ],
)
def test_a_cursor_not_handed_out_is_refused_with_the_fix(cursor: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        decode_cursor(cursor)
    assert str(raised.value) == NOT_HANDED_OUT


def test_the_timeline_lists_every_lifecycle_moment_oldest_first() -> None:
    old = dataclasses.replace(
        authority("old", AuthorityState.RETIRED, created_at=NOW - 10 * HOUR),
        activated_at=NOW - 9 * HOUR,
        retired_at=NOW - HOUR,
        not_after=NOW - HOUR / 2,
    )
    new = dataclasses.replace(
        authority("new", AuthorityState.ACTIVE, created_at=NOW - 5 * HOUR), activated_at=NOW - HOUR
    )
    events = [(e.at, e.authority_id, e.event) for e in authority_timeline([new, old], NOW)]
    assert events == [
        (NOW - 10 * HOUR, "old", TimelineEventKind.PREPARED),
        (NOW - 9 * HOUR, "old", TimelineEventKind.ACTIVATED),
        (NOW - 5 * HOUR, "new", TimelineEventKind.PREPARED),
        (NOW - HOUR, "new", TimelineEventKind.ACTIVATED),
        (NOW - HOUR, "old", TimelineEventKind.RETIRED),
        (NOW - HOUR / 2, "old", TimelineEventKind.EXPIRED),
        (new.not_after, "new", TimelineEventKind.EXPIRES),
    ]


def test_an_authority_created_active_is_prepared_and_activated_at_the_same_moment() -> None:
    record = dataclasses.replace(authority("a", AuthorityState.ACTIVE, AuthorityKind.JWT), activated_at=NOW)
    events = [(e.at, e.event, e.kind) for e in authority_timeline([record], NOW)][:2]
    assert events == [
        (NOW, TimelineEventKind.PREPARED, AuthorityKind.JWT),
        (NOW, TimelineEventKind.ACTIVATED, AuthorityKind.JWT),
    ]


@pytest.mark.parametrize(
    ("token", "state"),
    [
        pytest.param(JoinToken("0" * 64, NOW + HOUR, NOW), TokenState.UNUSED, id="unused"),
        pytest.param(JoinToken("0" * 64, NOW, NOW - HOUR), TokenState.EXPIRED, id="expired"),
        pytest.param(
            JoinToken("0" * 64, NOW - HOUR, NOW - 2 * HOUR, used_at=NOW - 2 * HOUR), TokenState.USED, id="used"
        ),
    ],
)
def test_a_tokens_state_is_used_expired_or_unused(token: JoinToken, state: TokenState) -> None:
    assert token_state(token, NOW) is state


def test_a_token_is_named_by_the_first_16_hex_digits_of_its_hash() -> None:
    assert JoinToken("0123456789abcdef" + "f" * 48, NOW, NOW).token_id == "0123456789abcdef"


def test_a_filter_keeps_unexpired_svids_expiring_within_the_window() -> None:
    assert SvidFilter(expiring_within=HOUR, revoked=False).query(NOW) == CertificateQuery(
        expires_before=NOW + HOUR, unexpired_at=NOW, revoked=False
    )


def test_a_filter_including_expired_svids_sets_no_lower_bound() -> None:
    assert SvidFilter(include_expired=True).query(NOW) == CertificateQuery()


def test_a_window_that_is_not_positive_is_refused() -> None:
    with pytest.raises(InvalidArgument) as raised:
        SvidFilter(expiring_within=timedelta(0)).query(NOW)
    assert str(raised.value) == "expiring within 0s is not a window; give a positive duration, e.g. 24h"
