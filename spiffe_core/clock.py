"""Time as a dependency: domain code takes ``now`` or a :class:`Clock`, never calls the OS itself,
so rotation thresholds and expiry are testable without sleeping."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)
