"""Retry pacing (spiffe_core/backoff.py): exponential backoff with a cap and jitter, and a log throttle
that lets one line per interval through and counts the rest."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spiffe_core.backoff import LogThrottle, backoff_delay

# --- backoff_delay ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "base", "cap", "low", "high"),
    [
        pytest.param(1, 0.5, 30.0, 0.25, 0.5, id="first-failure-half-a-second"),
        pytest.param(2, 0.5, 30.0, 0.5, 1.0, id="doubles"),
        pytest.param(4, 0.5, 30.0, 2.0, 4.0, id="fourth"),
        pytest.param(10, 0.5, 30.0, 15.0, 30.0, id="capped-at-30s"),
        pytest.param(10_000, 0.5, 30.0, 15.0, 30.0, id="huge-count-still-capped"),
        pytest.param(0, 1.0, 60.0, 0.5, 1.0, id="zero-counts-as-one"),
        pytest.param(7, 1.0, 60.0, 30.0, 60.0, id="ca-capped-at-60s"),
    ],
)
def test_backoff_grows_exponentially_with_jitter_up_to_the_cap(
    failures: int, base: float, cap: float, low: float, high: float
) -> None:
    delays = [backoff_delay(failures, random.Random(seed), base, cap) for seed in range(50)]
    assert all(low <= d <= high for d in delays)
    assert len(set(delays)) > 1  # jittered


@given(
    failures=st.integers(min_value=1, max_value=100),
    base=st.floats(min_value=0.01, max_value=10.0),
    extra=st.floats(min_value=0.0, max_value=100.0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_never_exceeds_the_cap_nor_drops_below_half_the_step(
    failures: int, base: float, extra: float, seed: int
) -> None:
    cap = base + extra
    delay = backoff_delay(failures, random.Random(seed), base, cap)
    ceiling = min(cap, base * 2 ** (failures - 1))
    assert ceiling / 2 <= delay <= ceiling <= cap


@pytest.mark.parametrize(
    ("base", "cap"),
    [pytest.param(0.0, 1.0, id="zero-base"), pytest.param(2.0, 1.0, id="cap-below-base")],
)
def test_backoff_refuses_a_policy_that_would_spin_or_never_grow(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match=r"^backoff needs 0 < base <= cap"):
        backoff_delay(1, random.Random(1), base, cap)


# --- LogThrottle --------------------------------------------------------------------------------------


def test_throttle_lets_one_line_per_interval_through_and_reports_what_it_held_back() -> None:
    throttle = LogThrottle(interval=10.0)
    assert throttle.should_log(100.0) is True
    assert throttle.note() == ""
    assert [throttle.should_log(100.0 + t) for t in (1.0, 5.0, 9.9)] == [False, False, False]
    assert throttle.suppressed() == 3
    assert throttle.should_log(110.0) is True
    assert throttle.note() == " (3 similar messages suppressed)"
    assert throttle.note() == ""  # reported once
    assert throttle.suppressed() == 0


def test_throttle_says_message_for_a_single_suppressed_line() -> None:
    throttle = LogThrottle(interval=10.0)
    throttle.should_log(0.0)
    throttle.should_log(1.0)
    assert throttle.should_log(10.0) is True
    assert throttle.note() == " (1 similar message suppressed)"


def test_throttle_keeps_each_key_apart() -> None:
    throttle = LogThrottle(interval=10.0)
    assert throttle.should_log(0.0, "sync") is True
    assert throttle.should_log(1.0, "svids") is True
    assert throttle.should_log(2.0, "sync") is False
    assert throttle.should_log(12.0, "sync") is True
    assert throttle.note("sync") == " (1 similar message suppressed)"
    assert throttle.note("svids") == ""


def test_throttle_of_a_failing_loop_logs_about_once_per_interval() -> None:
    throttle = LogThrottle(interval=10.0)
    logged = [t for t in range(0, 600, 2) if throttle.should_log(float(t / 10 * 10))]
    assert logged == list(range(0, 600, 10))
