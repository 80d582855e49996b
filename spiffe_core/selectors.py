"""Selectors: ``type:value`` facts about a node or workload that registration entries match on.

The CA stores them on entries; the agent produces them by attesting callers (``unix:uid:1000``,
``unix:path:/usr/bin/envoy``). An entry applies to a caller when *all* its selectors are among the
caller's selectors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from spiffe_core.errors import InvalidArgument


@dataclass(frozen=True, slots=True, order=True)
class Selector:
    type: str
    value: str

    @classmethod
    def parse(cls, text: str) -> Selector:
        """Parse ``type:value``; the value may itself hold colons (``unix:uid:1000`` is type ``unix``)."""
        kind, sep, value = text.partition(":")
        if not sep or not kind or not value:
            raise InvalidArgument(f"selector {text!r} must be written 'type:value', e.g. 'unix:uid:1000'")
        if any(ch.isspace() for ch in text):
            raise InvalidArgument(f"selector {text!r} has white space")
        return cls(kind, value)

    def __str__(self) -> str:
        return f"{self.type}:{self.value}"


def matches(required: Iterable[Selector], presented: Iterable[Selector]) -> bool:
    """True when every required selector is presented (an entry with no selectors matches nothing)."""
    need = frozenset(required)
    return bool(need) and need <= frozenset(presented)
