"""ca/admin_entry_ids.py: the admin entries' SPIFFE IDs are read once per TTL however many questions
come, read again at once after a local change, and never cached from a read a change overtook."""

from __future__ import annotations

from collections.abc import Callable

from ca.admin_entry_ids import TTL_SECONDS, AdminEntryIds
from spiffe_core.spiffe_id import SpiffeId

DEPLOYER = SpiffeId.parse("spiffe://example.org/ci/deployer")
WEB = SpiffeId.parse("spiffe://example.org/web")


class Store:
    """The datastore's answer, and how often it was asked."""

    def __init__(self, *ids: SpiffeId) -> None:
        self.ids = frozenset(ids)
        self.reads = 0
        self.during_read: Callable[[], None] = lambda: None

    def load(self) -> frozenset[SpiffeId]:
        self.reads += 1
        ids = self.ids
        self.during_read()
        return ids


def test_questions_within_the_ttl_are_answered_from_one_read() -> None:
    store, now = Store(DEPLOYER), [0.0]
    cache = AdminEntryIds(store.load, monotonic=lambda: now[0])

    answers = [DEPLOYER in cache, WEB in cache, DEPLOYER in cache]
    now[0] = TTL_SECONDS - 0.01
    answers.append(DEPLOYER in cache)

    assert answers == [True, False, True, True]
    assert store.reads == 1


def test_a_set_as_old_as_the_ttl_is_read_again() -> None:
    store, now = Store(DEPLOYER), [0.0]
    cache = AdminEntryIds(store.load, monotonic=lambda: now[0])
    assert DEPLOYER in cache
    store.ids = frozenset()  # another replica removed the flag

    now[0] = TTL_SECONDS
    assert DEPLOYER not in cache
    assert store.reads == 2


def test_an_invalidated_set_is_read_again_at_once() -> None:
    store = Store(DEPLOYER)
    cache = AdminEntryIds(store.load, monotonic=lambda: 0.0)
    assert DEPLOYER in cache
    store.ids = frozenset()

    cache.invalidate()

    assert DEPLOYER not in cache


def test_a_read_a_local_change_overtook_is_not_kept() -> None:
    store = Store(DEPLOYER)
    cache = AdminEntryIds(store.load, monotonic=lambda: 0.0)

    def change_commits_meanwhile() -> None:
        store.ids = frozenset()
        cache.invalidate()

    store.during_read = change_commits_meanwhile
    assert DEPLOYER in cache  # this question raced the change and saw the old set
    store.during_read = lambda: None

    assert DEPLOYER not in cache  # the next one does not get it from the cache
    assert store.reads == 2
