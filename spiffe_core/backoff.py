"""Retrying without spinning and without flooding the log: how long to wait after consecutive
failures (:func:`backoff_delay`), how often to say so (:class:`LogThrottle`), the two together for one
loop (:class:`Backoff`), and the loop itself (:func:`retry_forever`).

The primitives are pure: time comes in as an argument and randomness as a :class:`random.Random`, so
every retry loop of the CA and the agent is testable without sleeping. :class:`Backoff` and
:func:`retry_forever` take their clock and their sleep as arguments for the same reason. Each loop owns
its own policy (base and cap); the agent backs off from 0.5 s to 30 s, the CA's serving identity from 1 s
to 60 s, its rotation task from 1 s to a minute.

A periodic task of the CA (rotation, retention, audit upkeep) is one call::

    await retry_forever(self._attempt, Backoff(log, base=1.0, cap=60.0), "authority rotation")

where ``_attempt`` does one run and returns the seconds until the next; a failure is retried after
the backoff and logged at most every 10 s as ``authority rotation failed: <why>; retrying in 1.3s``.
A loop that waits on something else between attempts (a partner's schedule in the datastore) keeps its
own loop and uses :class:`Backoff` for the failures::

    delay = backoff.failed(f"could not renew ({err})")   # counts, logs (throttled), says how long
    ...
    backoff.succeeded()                                   # the next failure starts at the base again
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn

from spiffe_core.errors import TrustmeshError

# One line per this many seconds per loop is enough to see that it keeps failing.
DEFAULT_LOG_INTERVAL_SECONDS = 10.0


def backoff_delay(failures: int, rng: random.Random, base: float, cap: float) -> float:
    """Seconds to wait after ``failures`` consecutive failures (≥ 1; less counts as 1): ``base``
    doubling per failure up to ``cap``, with the upper half jittered so that clients which lost their
    server together do not come back together. Always within [ceiling / 2, ceiling]."""
    _check_policy(base, cap)
    ceiling = min(cap, base * float(2 ** min(max(failures, 1) - 1, 32)))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def _check_policy(base: float, cap: float) -> None:
    if base <= 0 or cap < base:
        raise ValueError(f"backoff needs 0 < base <= cap, got base={base} cap={cap}")


class LogThrottle:
    """At most one log line per ``interval`` seconds per key; the lines held back are counted, and the
    next line that goes out says how many (:meth:`note`). Not thread-safe: one per task."""

    def __init__(self, interval: float = DEFAULT_LOG_INTERVAL_SECONDS) -> None:
        if interval < 0:
            raise ValueError(f"a log interval cannot be negative, got {interval}")
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._to_report: dict[str, int] = {}

    def should_log(self, now_monotonic: float, key: str = "") -> bool:
        """Whether to log the line for ``key`` at ``now_monotonic`` (seconds, ``time.monotonic()``).
        False counts the line as suppressed; True makes the suppressed count :meth:`note`'s to report."""
        last = self._last.get(key)
        if last is not None and now_monotonic - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now_monotonic
        self._to_report[key] = self._suppressed.pop(key, 0)
        return True

    def suppressed(self, key: str = "") -> int:
        """Lines for ``key`` held back since the last one that went out."""
        return self._suppressed.get(key, 0)

    def note(self, key: str = "") -> str:
        """What to append to the line :meth:`should_log` just allowed: " (N similar messages
        suppressed)", or "" when none were. Reported once."""
        count = self._to_report.pop(key, 0)
        if count == 0:
            return ""
        return f" ({count} similar message{'s' if count != 1 else ''} suppressed)"


Sleep = Callable[[float], Awaitable[None]]


class Backoff:
    """One retry loop's consecutive failures: how long each calls for (:func:`backoff_delay`, ``base``
    doubling up to ``cap``) and the warning that says so, at most one per ``log_interval`` seconds
    (:class:`LogThrottle`). Not thread-safe: one per task."""

    def __init__(
        self,
        logger: logging.Logger,
        base: float,
        cap: float,
        *,
        rng: random.Random | None = None,
        log_interval: float = DEFAULT_LOG_INTERVAL_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_policy(base, cap)  # a policy that would spin is refused now, not at the first failure
        self._logger = logger
        self._base = base
        self._cap = cap
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self._throttle = LogThrottle(log_interval)
        self._monotonic = monotonic
        self._failures = 0

    @property
    def failures(self) -> int:
        """Failures since the last success."""
        return self._failures

    def failed(self, problem: str, *, cap: float | None = None, exc_info: BaseException | None = None) -> float:
        """Count a failure and return the seconds to wait before the next attempt. Logs ``<problem>;
        retrying in N.Ns`` as a warning unless a line went out within the log interval (the next one
        that does says how many were held back). ``cap``: this failure's cap, for a loop whose cap
        follows something that changes (the base is then at most the cap); ``exc_info``: an error
        whose trace belongs in the log (a bug, not an outage)."""
        self._failures += 1
        cap = self._cap if cap is None else cap
        delay = backoff_delay(self._failures, self._rng, min(self._base, cap), cap)
        if self._throttle.should_log(self._monotonic()):
            self._logger.warning("%s; retrying in %.1fs%s", problem, delay, self._throttle.note(), exc_info=exc_info)
        return delay

    def succeeded(self) -> None:
        """The next failure waits ``base`` again."""
        self._failures = 0


async def retry_forever(
    attempt: Callable[[], Awaitable[float]],
    backoff: Backoff,
    what: str,
    *,
    first_delay: float | None = None,
    sleep: Sleep | None = None,
) -> NoReturn:
    """Run ``attempt`` again and again until cancelled: after it returns, wait the seconds it returned;
    after it raises, wait what ``backoff`` calls for and log ``<what> failed: <error>; retrying in …``
    (with the trace when the error is not a :class:`TrustmeshError`, i.e. a bug). Any ``Exception``
    is retried, so an outage never takes the caller's TaskGroup down; cancellation ends it.
    ``first_delay``: wait that long before the first attempt (default: attempt at once)."""
    pause = sleep or asyncio.sleep  # looked up now, not at import, so a test can replace asyncio.sleep
    delay = first_delay
    while True:
        if delay is not None:
            await pause(delay)
        try:
            delay = await attempt()
        except Exception as err:
            delay = backoff.failed(f"{what} failed: {err}", exc_info=None if isinstance(err, TrustmeshError) else err)
        else:
            backoff.succeeded()
