"""Retrying without spinning and without flooding the log: how long to wait after consecutive
failures (:func:`backoff_delay`), and how often to say so (:class:`LogThrottle`).

Pure: time comes in as an argument and randomness as a :class:`random.Random`, so every retry loop of
the CA and the agent is testable without sleeping. Each loop owns its own policy (base and cap); the
agent backs off from 0.5 s to 30 s, the CA's serving identity from 1 s to 60 s.

A loop reads::

    failures += 1
    delay = backoff_delay(failures, rng, base=1.0, cap=60.0)
    if throttle.should_log(time.monotonic()):
        log.warning("could not renew (%s); retrying in %.1f s%s", err, delay, throttle.note())
    await asyncio.sleep(delay)
"""

from __future__ import annotations

import random

# One line per this many seconds per loop is enough to see that it keeps failing.
DEFAULT_LOG_INTERVAL_SECONDS = 10.0


def backoff_delay(failures: int, rng: random.Random, base: float, cap: float) -> float:
    """Seconds to wait after ``failures`` consecutive failures (≥ 1; less counts as 1): ``base``
    doubling per failure up to ``cap``, with the upper half jittered so that clients which lost their
    server together do not come back together. Always within [ceiling / 2, ceiling]."""
    if base <= 0 or cap < base:
        raise ValueError(f"backoff needs 0 < base <= cap, got base={base} cap={cap}")
    ceiling = min(cap, base * float(2 ** min(max(failures, 1) - 1, 32)))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


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
