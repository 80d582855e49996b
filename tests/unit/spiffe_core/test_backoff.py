"""Retry pacing (spiffe_core/backoff.py): exponential backoff with a cap and jitter, a log throttle
that lets one line per interval through and counts the rest, and the retry loop built on both (run
with a fake sleep and a fake clock: nothing here really waits)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spiffe_core.backoff import Backoff, LogThrottle, backoff_delay, retry_forever
from spiffe_core.errors import UpstreamUnavailable

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


# --- Backoff and retry_forever ------------------------------------------------------------------------

LOG = logging.getLogger("tests.retry")


class Stop(BaseException):
    """Ends a loop under test from its sleep (a BaseException, as cancellation is: never retried)."""


class FakeSleep:
    """Records the delays a loop asks for; raises :class:`Stop` at the ``stop_at``-th."""

    def __init__(self, stop_at: int) -> None:
        self.delays: list[float] = []
        self._stop_at = stop_at

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if len(self.delays) >= self._stop_at:
            raise Stop


def scripted(outcomes: list[float | Exception]) -> tuple[list[int], Callable[[], Awaitable[float]]]:
    """An attempt that returns or raises each outcome in turn; the list counts the calls."""
    calls: list[int] = []
    steps: Iterator[float | Exception] = iter(outcomes)

    async def attempt() -> float:
        calls.append(1)
        outcome = next(steps)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return calls, attempt


async def run_until_stopped(
    outcomes: list[float | Exception], backoff: Backoff, *, first_delay: float | None = None
) -> list[float]:
    sleep = FakeSleep(stop_at=len(outcomes) + (first_delay is not None))
    _, attempt = scripted(outcomes)
    with pytest.raises(Stop):
        await retry_forever(attempt, backoff, "the chore", first_delay=first_delay, sleep=sleep)
    return sleep.delays


async def test_the_loop_backs_off_exponentially_while_the_attempt_fails() -> None:
    down = UpstreamUnavailable("datastore is down")
    delays = await run_until_stopped([down] * 5, Backoff(LOG, base=1.0, cap=4.0, rng=random.Random(7)))

    ceilings = [1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))


async def test_the_loop_waits_what_a_successful_attempt_returns_and_starts_backing_off_from_the_base_again() -> None:
    down = UpstreamUnavailable("datastore is down")
    backoff = Backoff(LOG, base=1.0, cap=60.0, rng=random.Random(7))

    delays = await run_until_stopped([down, down, down, 300.0, down], backoff)

    assert delays[3] == 300.0
    assert 0.5 <= delays[4] <= 1.0  # the failure after a success waits the base, not 8 s
    assert backoff.failures == 1


async def test_the_loop_waits_first_delay_before_its_first_attempt() -> None:
    delays = await run_until_stopped([30.0], Backoff(LOG, base=1.0, cap=60.0), first_delay=30.0)
    assert delays == [30.0, 30.0]


async def test_the_loop_ends_when_cancelled_and_does_not_count_that_as_a_failure() -> None:
    started = asyncio.Event()
    backoff = Backoff(LOG, base=1.0, cap=60.0)

    async def attempt() -> float:
        started.set()
        await asyncio.Event().wait()  # an attempt that never finishes by itself
        return 0.0

    task = asyncio.create_task(retry_forever(attempt, backoff, "the chore"))
    await asyncio.wait_for(started.wait(), 1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)
    assert backoff.failures == 0


async def test_the_loop_ends_when_cancelled_in_its_sleep() -> None:
    attempted = asyncio.Event()
    calls = 0

    async def attempt() -> float:
        nonlocal calls
        calls += 1
        attempted.set()
        return 0.001

    task = asyncio.create_task(retry_forever(attempt, Backoff(LOG, base=1.0, cap=60.0), "the chore"))
    await asyncio.wait_for(attempted.wait(), 1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)
    made = calls
    await asyncio.sleep(0.005)
    assert calls == made


async def test_failures_are_logged_once_per_interval_naming_what_failed_and_the_wait(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    backoff = Backoff(LOG, base=1.0, cap=1.0, rng=random.Random(1), log_interval=10.0, monotonic=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        delays = [backoff.failed("the chore failed: down") for now[0] in (0.0, 1.0, 2.0, 10.0)]

    assert caplog.messages == [
        f"the chore failed: down; retrying in {delays[0]:.1f}s",
        f"the chore failed: down; retrying in {delays[3]:.1f}s (2 similar messages suppressed)",
    ]
    assert backoff.failures == 4


async def test_a_bug_is_logged_with_its_trace_and_an_outage_without(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        await run_until_stopped([UpstreamUnavailable("down")], Backoff(LOG, base=1.0, cap=1.0, log_interval=0.0))
        await run_until_stopped([KeyError("oops")], Backoff(LOG, base=1.0, cap=1.0, log_interval=0.0))

    outage, bug = caplog.records
    assert outage.getMessage().startswith("the chore failed: down; retrying in ")
    assert outage.exc_info is None
    assert bug.getMessage().startswith("the chore failed: 'oops'; retrying in ")
    assert bug.exc_info is not None
    assert isinstance(bug.exc_info[1], KeyError)


def test_a_failure_with_its_own_cap_waits_at_most_that_long() -> None:
    backoff = Backoff(LOG, base=1.0, cap=3600.0, rng=random.Random(3))
    delays = [backoff.failed("partner down", cap=0.5) for _ in range(5)]
    assert all(0.25 <= d <= 0.5 for d in delays)


def test_a_backoff_that_would_spin_is_refused_when_built() -> None:
    with pytest.raises(ValueError, match=r"^backoff needs 0 < base <= cap"):
        Backoff(LOG, base=0.0, cap=1.0)
