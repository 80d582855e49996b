"""The node API's limits (ca/ratelimit.py): token buckets per key over a hand-moved monotonic clock, the
bounded map of keys, and the errors the edge answers with. No test sleeps."""

from __future__ import annotations

import pytest

from ca.ratelimit import KeyedRateLimiter, NodeApiGuard, NodeApiLimits, Rate
from spiffe_core.errors import InvalidArgument, ResourceExhausted, transport_status
from spiffe_core.spiffe_id import SpiffeId

NODE_1 = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-1")
NODE_2 = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-2")


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Monotonic:
    return Monotonic()


def test_a_new_key_starts_with_a_full_bucket(clock: Monotonic) -> None:
    limiter = KeyedRateLimiter[str](Rate(10, 5), monotonic=clock)
    assert [limiter.take("a") for _ in range(5)] == [0.0] * 5
    assert limiter.take("a") == pytest.approx(0.1)


def test_a_refused_call_takes_nothing_and_says_when_it_would_pass(clock: Monotonic) -> None:
    limiter = KeyedRateLimiter[str](Rate(10, 100), monotonic=clock)
    assert limiter.take("a", 90) == 0.0
    assert limiter.take("a", 30) == pytest.approx(2.0)  # 10 left, 20 more at 10 a second
    assert limiter.take("a", 30) == pytest.approx(2.0)  # the refusal took nothing
    clock.now += 2.0
    assert limiter.take("a", 30) == 0.0


def test_the_bucket_refills_at_the_rate_up_to_the_burst(clock: Monotonic) -> None:
    limiter = KeyedRateLimiter[str](Rate(2, 4), monotonic=clock)
    assert limiter.take("a", 4) == 0.0
    clock.now += 1.0
    assert limiter.take("a", 3) == pytest.approx(0.5)
    clock.now += 3600.0
    assert limiter.take("a", 4) == 0.0
    assert limiter.take("a", 1) == pytest.approx(0.5)


def test_keys_have_buckets_of_their_own(clock: Monotonic) -> None:
    limiter = KeyedRateLimiter[str](Rate(1, 1), monotonic=clock)
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    assert limiter.take("b") == 0.0


def test_a_cost_over_the_burst_is_a_bug_not_a_wait(clock: Monotonic) -> None:
    limiter = KeyedRateLimiter[str](Rate(1, 10), monotonic=clock)
    with pytest.raises(ValueError, match="could never pass"):
        limiter.take("a", 11)


@pytest.mark.parametrize(
    ("rate", "max_keys"),
    [
        pytest.param(Rate(0, 1), 1, id="no-rate"),
        pytest.param(Rate(1, 0), 1, id="no-burst"),
        pytest.param(Rate(1, 1), 0, id="no-keys"),
    ],
)
def test_refuses_a_limiter_that_could_pass_nothing(rate: Rate, max_keys: int) -> None:
    with pytest.raises(ValueError, match="positive rate"):
        KeyedRateLimiter[str](rate, max_keys=max_keys)


def test_the_map_of_keys_never_grows_past_its_bound(clock: Monotonic) -> None:
    limiter = KeyedRateLimiter[int](Rate(0.001, 1), max_keys=100, monotonic=clock)
    for source in range(10_000):
        limiter.take(source)
    assert len(limiter) == 100


def test_a_full_map_forgets_buckets_that_refilled_before_ones_that_hold_debt(clock: Monotonic) -> None:
    limiter = KeyedRateLimiter[str](Rate(1, 2), max_keys=3, monotonic=clock)
    limiter.take("abuser", 2)  # empty: its debt must be kept
    limiter.take("idle-1")
    limiter.take("idle-2")
    clock.now += 1.5  # idle-1 and idle-2 are full again; abuser holds 1.5 of 2
    limiter.take("abuser", 1)
    limiter.take("newcomer")
    assert len(limiter) <= 3
    assert limiter.take("abuser", 1) == pytest.approx(0.5)  # still remembered, still short


def test_a_map_full_of_debt_forgets_the_least_recently_used(clock: Monotonic) -> None:
    limiter = KeyedRateLimiter[str](Rate(0.001, 1), max_keys=2, monotonic=clock)
    limiter.take("a")
    limiter.take("b")
    limiter.take("a")  # refused, but a is now the most recently used
    limiter.take("c")  # evicts b
    assert limiter.take("a") > 0
    assert limiter.take("b") == 0.0  # forgotten, so it starts full


# --- the node API's guard --------------------------------------------------------------------------


def test_a_batch_over_the_maximum_is_invalid_and_names_the_limit(clock: Monotonic) -> None:
    guard = NodeApiGuard(NodeApiLimits(max_batch_size=10), monotonic=clock)
    with pytest.raises(InvalidArgument) as raised:
        guard.admit_signing(NODE_1, 11)
    assert str(raised.value) == (
        "SignX509Svids asks for 11 X509-SVIDs; the CA signs at most 10 per call (node_api.max_batch_size); "
        "split the batch into calls of at most that many"
    )
    guard.admit_signing(NODE_1, 10)


def test_an_agent_over_its_signing_rate_is_told_when_to_retry_and_others_are_not(clock: Monotonic) -> None:
    guard = NodeApiGuard(NodeApiLimits(max_batch_size=100, signing=Rate(50, 200)), monotonic=clock)
    guard.admit_signing(NODE_1, 100)
    guard.admit_signing(NODE_1, 100)
    with pytest.raises(ResourceExhausted) as raised:
        guard.admit_signing(NODE_1, 100)
    assert str(raised.value) == (
        "agent spiffe://example.org/trustmesh/agent/join_token/node-1 is over its SVID signing rate "
        "(50 per second, bursts of 200; node_api.ratelimit.signing); retry in 2.0 s"
    )
    assert raised.value.retry_after == pytest.approx(2.0)
    assert transport_status(raised.value) == (429, "RESOURCE_EXHAUSTED")
    guard.admit_signing(NODE_2, 100)
    clock.now += 2.0
    guard.admit_signing(NODE_1, 100)


def test_the_default_burst_lets_one_agent_reissue_a_thousand_svids_at_once(clock: Monotonic) -> None:
    guard = NodeApiGuard(monotonic=clock)
    for _ in range(10):  # what an agent's taint round sends: 10 calls of 100
        guard.admit_signing(NODE_1, 100)
    for _ in range(10):  # and again right away, e.g. a second taint
        guard.admit_signing(NODE_1, 100)
    with pytest.raises(ResourceExhausted):
        guard.admit_signing(NODE_1, 100)


def test_attestations_are_limited_per_source(clock: Monotonic) -> None:
    guard = NodeApiGuard(NodeApiLimits(attestation=Rate(1, 2)), monotonic=clock)
    guard.admit_attestation("10.0.0.1")
    guard.admit_attestation("10.0.0.1")
    with pytest.raises(ResourceExhausted) as raised:
        guard.admit_attestation("10.0.0.1")
    assert str(raised.value) == (
        "too many attestations from 10.0.0.1 (1 per second, bursts of 2; node_api.ratelimit.attestation); "
        "retry in 1.0 s"
    )
    guard.admit_attestation("10.0.0.2")


def test_federated_bundle_refreshes_are_limited_per_agent(clock: Monotonic) -> None:
    guard = NodeApiGuard(NodeApiLimits(bundle_refresh=Rate(0.5, 2)), monotonic=clock)
    guard.admit_bundle_refresh(NODE_1)
    guard.admit_bundle_refresh(NODE_1)
    with pytest.raises(ResourceExhausted) as raised:
        guard.admit_bundle_refresh(NODE_1)
    assert str(raised.value) == (
        "agent spiffe://example.org/trustmesh/agent/join_token/node-1 is over its federated bundle refresh rate "
        "(0.5 per second, bursts of 2; node_api.ratelimit.bundle_refresh); retry in 2.0 s"
    )
    guard.admit_bundle_refresh(NODE_2)
    clock.now += 2.0
    guard.admit_bundle_refresh(NODE_1)


def test_a_rate_of_zero_turns_the_limit_off(clock: Monotonic) -> None:
    guard = NodeApiGuard(
        NodeApiLimits(signing=Rate(0, 1), attestation=Rate(0, 1), bundle_refresh=Rate(0, 1)), monotonic=clock
    )
    for _ in range(100):
        guard.admit_signing(NODE_1, 1000)
        guard.admit_attestation("10.0.0.1")
        guard.admit_bundle_refresh(NODE_1)
