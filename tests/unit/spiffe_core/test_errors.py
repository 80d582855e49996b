"""Messages that repeat what a caller sent repeat only its start (spiffe_core.errors.shown)."""

from __future__ import annotations

import pytest

from spiffe_core.errors import shown


@pytest.mark.parametrize(
    ("value", "text"),
    [
        pytest.param("short", "'short'", id="short-string-whole"),
        pytest.param("x" * 40, f"{'x' * 32!r}…", id="long-string-cut-inside-its-quotes"),
        pytest.param([1] * 40, "[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1…", id="other-value-repr-cut"),
        pytest.param(7, "7", id="number"),
    ],
)
def test_shown_repeats_at_most_the_start_of_a_value_a_caller_sent(value: object, text: str) -> None:
    assert shown(value) == text
