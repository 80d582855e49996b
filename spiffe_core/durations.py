"""Durations as operators write them in configuration files: ``"90s"``, ``"5m"``, ``"12h"``, ``"7d"``.

Shared by the CA's and the agent's configuration (``ca`` and ``sds`` never import each other). Pure.
"""

from __future__ import annotations

import re
from datetime import timedelta

from spiffe_core.errors import InvalidArgument

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> timedelta:
    """``"90s"``, ``"5m"``, ``"12h"``, ``"7d"``, a whole number of seconds, or a timedelta as is.

    Raises InvalidArgument for anything else (fractions, negative numbers, unknown units)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise InvalidArgument(f"{value!r} is a negative duration; write e.g. '30s' or 30")
        return timedelta(seconds=value)
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidArgument(f"{value!r} is not a duration; write e.g. '7d', '12h', '30m', '90s' or seconds")
    return timedelta(seconds=int(match[1]) * _UNITS[match[2]])


def format_duration(value: timedelta) -> str:
    """The shortest exact form: ``timedelta(hours=2)`` → ``"2h"``, 90 seconds → ``"90s"``."""
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
