"""How many refusals the audit log records one by one (ca/audit_throttle.py): a burst per source, a cap
over all sources, and counts for the rest that one summary per source reports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ca.audit_throttle import OTHER_SOURCES, RefusalThrottle
from ca.ratelimit import Rate
from ca.store.records import Actor, AuditEvent

T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


class Monotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Monotonic:
    return Monotonic()


def refusal(source: str, n: int = 0, action: str = "agent.attest") -> AuditEvent:
    return AuditEvent(T0 + timedelta(seconds=n), Actor(source, "attestation"), action, "join_token", "denied")


def test_a_source_is_recorded_up_to_its_burst_and_then_counted(clock: Monotonic) -> None:
    throttle = RefusalThrottle(Rate(1 / 60, 3), Rate(100, 100), monotonic=clock)
    admitted = [throttle.admit(refusal("attestation:10.0.0.1", n)) for n in range(5)]
    assert admitted == [True, True, True, False, False]
    (tally,) = throttle.drain()
    assert (tally.source, tally.count, tally.by_action) == ("attestation:10.0.0.1", 2, {"agent.attest": 2})
    assert (tally.first_at, tally.last_at) == (T0 + timedelta(seconds=3), T0 + timedelta(seconds=4))


def test_a_source_is_recorded_again_once_its_bucket_refilled(clock: Monotonic) -> None:
    throttle = RefusalThrottle(Rate(1 / 60, 1), Rate(100, 100), monotonic=clock)
    assert throttle.admit(refusal("a"))
    assert not throttle.admit(refusal("a"))
    clock.now += 60
    assert throttle.admit(refusal("a"))


def test_other_sources_are_not_held_back_by_one_over_its_burst(clock: Monotonic) -> None:
    throttle = RefusalThrottle(Rate(1 / 60, 1), Rate(100, 100), monotonic=clock)
    throttle.admit(refusal("a"))
    assert not throttle.admit(refusal("a"))
    assert throttle.admit(refusal("b"))


def test_all_sources_together_are_capped(clock: Monotonic) -> None:
    throttle = RefusalThrottle(Rate(1, 10), Rate(1 / 60, 3), monotonic=clock)
    admitted = [throttle.admit(refusal(f"attestation:10.0.0.{n}")) for n in range(5)]
    assert admitted == [True, True, True, False, False]


def test_drain_counts_by_action_and_forgets(clock: Monotonic) -> None:
    throttle = RefusalThrottle(Rate(1 / 60, 1), Rate(100, 100), monotonic=clock)
    throttle.admit(refusal("agent"))
    throttle.admit(refusal("agent", action="agent.authenticate"))
    throttle.admit(refusal("agent", action="agent.authenticate"))
    throttle.admit(refusal("agent", action="x509_svid.issue"))
    (tally,) = throttle.drain()
    assert tally.by_action == {"agent.authenticate": 2, "x509_svid.issue": 1}
    assert throttle.drain() == []


def test_the_counts_are_bounded_by_lumping_further_sources_together(clock: Monotonic) -> None:
    throttle = RefusalThrottle(Rate(1 / 60, 1), Rate(1 / 60, 1), max_sources=2, monotonic=clock)
    for n in range(6):
        throttle.admit(refusal(f"attestation:10.0.0.{n}"))
    drained = {tally.source: tally.count for tally in throttle.drain()}
    assert drained == {"attestation:10.0.0.1": 1, "attestation:10.0.0.2": 1, OTHER_SOURCES: 3}
