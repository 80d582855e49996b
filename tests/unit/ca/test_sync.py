"""Change notifications: what a NOTIFY payload carries between CA replicas, and SyncUpdate versions."""

from __future__ import annotations

import pytest

from ca.sync import Change, UpdateVersions
from spiffe_core.spiffe_id import SpiffeId

AGENT = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-1")
OTHER = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-2")


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(Change.for_agents(AGENT, OTHER), id="some-agents"),
        pytest.param(Change.everyone(), id="everyone"),
    ],
)
def test_payload_round_trips_origin_and_agents(change: Change) -> None:
    assert Change.from_payload(change.to_payload("replica-a")) == ("replica-a", change)


def test_change_naming_too_many_agents_for_one_notify_widens_to_everyone() -> None:
    many = Change(
        frozenset(SpiffeId.parse(f"spiffe://example.org/trustmesh/agent/join_token/n{i}") for i in range(200))
    )
    assert Change.from_payload(many.to_payload("replica-a")) == ("replica-a", Change.everyone())


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param("not json", id="not-json"),
        pytest.param('{"origin": "a"}', id="no-agents"),
        pytest.param('{"origin": "a", "agents": ["spiffe://Example.org/x"]}', id="bad-spiffe-id"),
    ],
)
def test_unreadable_payload_wakes_everyone(payload: str) -> None:
    assert Change.from_payload(payload)[1] == Change.everyone()


def test_a_change_concerns_only_the_agents_it_names() -> None:
    change = Change.for_agents(AGENT)
    assert change.concerns(AGENT)
    assert not change.concerns(OTHER)
    assert Change.everyone().concerns(OTHER)


def test_update_versions_strictly_increase() -> None:
    versions = UpdateVersions()
    seen = [versions.next() for _ in range(1000)]
    assert seen == sorted(set(seen))
