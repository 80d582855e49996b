"""Selectors and the all-must-match rule of registration entries (DESIGN §3, §4)."""

from __future__ import annotations

import re

import pytest

from spiffe_core.errors import InvalidArgument
from spiffe_core.selectors import Selector, matches


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


def selectors(*texts: str) -> list[Selector]:
    return [Selector.parse(t) for t in texts]


def test_parse_splits_at_the_first_colon() -> None:
    assert Selector.parse("unix:uid:1000") == Selector("unix", "uid:1000")


def test_str_round_trips() -> None:
    assert str(Selector.parse("unix:path:/usr/bin/envoy")) == "unix:path:/usr/bin/envoy"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("unix", id="no-colon"),
        pytest.param(":uid:1000", id="empty-type"),
        pytest.param("unix:", id="empty-value"),
        pytest.param("", id="empty"),
    ],
)
def test_parse_rejects_text_that_is_not_type_colon_value(text: str) -> None:
    with pytest.raises(
        InvalidArgument, match=exact(f"selector {text!r} must be written 'type:value', e.g. 'unix:uid:1000'")
    ):
        Selector.parse(text)


@pytest.mark.parametrize("text", ["unix:uid: 1000", "unix:user:web\n", "unix :uid:0", "unix:path:/a\tb"])
def test_parse_rejects_white_space(text: str) -> None:
    with pytest.raises(InvalidArgument, match=exact(f"selector {text!r} has white space")):
        Selector.parse(text)


def test_selectors_sort_by_type_then_value() -> None:
    assert sorted(selectors("unix:uid:1000", "k8s:ns:prod", "unix:gid:10")) == selectors(
        "k8s:ns:prod", "unix:gid:10", "unix:uid:1000"
    )


def test_entry_matches_when_every_selector_is_presented() -> None:
    assert matches(
        selectors("unix:uid:1000", "unix:gid:10"), selectors("unix:gid:10", "unix:uid:1000", "unix:user:web")
    )


def test_entry_does_not_match_when_one_selector_is_missing() -> None:
    assert not matches(selectors("unix:uid:1000", "unix:gid:10"), selectors("unix:uid:1000"))


def test_entry_without_selectors_matches_nothing() -> None:
    assert not matches([], selectors("unix:uid:1000"))


def test_values_compare_exactly() -> None:
    assert not matches(selectors("unix:uid:1000"), selectors("unix:uid:10000"))
