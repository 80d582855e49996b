"""ca/node_cache.py: per-agent state is read once and answered from memory until a change concerns the
agent (or, while changes may be missed, the read is a TTL old), a read a change overtook is never kept,
memory stays within its bounds; a verified chain is reused only with the same bundle and inside its
path's validity; an agent's contact is due once an interval or on a new version."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from ca.node_cache import TTL_SECONDS, AgentStateCache, ContactNotes, VerifiedChains, VerifiedPeer
from ca.sync import Change, ChangeHub
from spiffe_core.bundle import Bundle
from spiffe_core.spiffe_id import SpiffeId, TrustDomain

NODE_1 = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-1")
NODE_2 = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-2")
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


class Store:
    """The datastore's answer per agent, and how often it was asked."""

    def __init__(self) -> None:
        self.values: dict[SpiffeId, str] = {NODE_1: "v1", NODE_2: "w1"}
        self.reads: list[SpiffeId] = []
        self.during_read: Callable[[], None] = lambda: None

    def load(self, agent: SpiffeId) -> str:
        self.reads.append(agent)
        value = self.values[agent]
        self.during_read()
        return value


def cache_over(store: Store, now: list[float] | None = None, **bounds: int) -> AgentStateCache[str]:
    clock = now if now is not None else [0.0]
    return AgentStateCache(store.load, max_weight=bounds.get("max_weight", 100), monotonic=lambda: clock[0])


def test_calls_within_the_ttl_are_answered_from_one_read_per_agent() -> None:
    store, now = Store(), [0.0]
    cache = cache_over(store, now)
    answers = [cache.get(NODE_1), cache.get(NODE_2), cache.get(NODE_1)]
    now[0] = TTL_SECONDS - 0.01
    answers.append(cache.get(NODE_1))
    assert answers == ["v1", "w1", "v1", "v1"]
    assert store.reads == [NODE_1, NODE_2]


def test_a_read_as_old_as_the_ttl_is_read_again() -> None:
    store, now = Store(), [0.0]
    cache = cache_over(store, now)
    cache.get(NODE_1)
    store.values[NODE_1] = "v2"  # another replica changed it, and its notification got lost
    now[0] = TTL_SECONDS
    assert cache.get(NODE_1) == "v2"


def test_while_every_change_reaches_the_cache_a_read_is_kept_past_the_ttl() -> None:
    """One CA process (or a replica whose change listener is connected): agents call every few
    minutes, so a TTL would make nearly every real call read again."""
    store, now, hub = Store(), [0.0], ChangeHub(complete=True)
    cache = AgentStateCache(store.load, max_weight=100, complete=hub.is_complete, monotonic=lambda: now[0])
    cache.get(NODE_1)
    now[0] = 600.0
    assert cache.get(NODE_1) == "v1"
    assert store.reads == [NODE_1]


def test_a_change_still_drops_a_read_kept_past_the_ttl() -> None:
    store, now, hub = Store(), [0.0], ChangeHub(complete=True)
    cache = AgentStateCache(store.load, max_weight=100, complete=hub.is_complete, monotonic=lambda: now[0])
    cache.get(NODE_1)
    now[0] = 600.0
    store.values[NODE_1] = "v2"
    cache.invalidate(Change.for_agents(NODE_1))
    assert cache.get(NODE_1) == "v2"


def test_once_changes_may_be_missed_a_read_older_than_the_ttl_is_read_again() -> None:
    store, now, hub = Store(), [0.0], ChangeHub(complete=True)
    cache = AgentStateCache(store.load, max_weight=100, complete=hub.is_complete, monotonic=lambda: now[0])
    cache.get(NODE_1)
    hub.set_complete(False)  # the change listener lost its connection
    store.values[NODE_1] = "v2"  # another replica changed it meanwhile
    now[0] = TTL_SECONDS
    assert cache.get(NODE_1) == "v2"


def test_a_change_for_the_agent_is_read_again_at_once_and_the_others_are_kept() -> None:
    store = Store()
    cache = cache_over(store)
    cache.get(NODE_1), cache.get(NODE_2)
    store.values[NODE_1] = "v2"
    cache.invalidate(Change.for_agents(NODE_1))
    assert (cache.get(NODE_1), cache.get(NODE_2)) == ("v2", "w1")
    assert store.reads == [NODE_1, NODE_2, NODE_1]


def test_a_change_for_everyone_drops_every_agent() -> None:
    store = Store()
    cache = cache_over(store)
    cache.get(NODE_1), cache.get(NODE_2)
    cache.invalidate(Change.everyone())
    cache.get(NODE_1), cache.get(NODE_2)
    assert store.reads == [NODE_1, NODE_2, NODE_1, NODE_2]


def test_a_read_overtaken_by_a_change_answers_its_caller_but_is_not_kept() -> None:
    store = Store()
    cache = cache_over(store)
    store.during_read = lambda: cache.invalidate(Change.for_agents(NODE_2))  # any change, while reading
    assert cache.get(NODE_1) == "v1"
    store.during_read = lambda: None
    store.values[NODE_1] = "v2"
    assert cache.get(NODE_1) == "v2"


def test_the_change_feed_drops_an_agent_synchronously_in_notify() -> None:
    store, hub = Store(), ChangeHub()
    cache = cache_over(store)
    hub.add_listener(cache.invalidate)
    cache.get(NODE_1)
    store.values[NODE_1] = "banned"
    hub.notify(Change.for_agents(NODE_1))  # no event loop, no stream: the listener runs in this call
    assert cache.get(NODE_1) == "banned"


def test_the_least_recently_used_agents_go_first_beyond_the_weight_bound() -> None:
    store, node_3 = Store(), SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-3")
    store.values[node_3] = "x1"
    cache = cache_over(store, max_weight=2)
    cache.get(NODE_1), cache.get(NODE_2), cache.get(NODE_1), cache.get(node_3)
    assert len(cache) == 2
    cache.get(NODE_1)  # still held: used more recently than NODE_2
    cache.get(NODE_2)  # read again
    assert store.reads == [NODE_1, NODE_2, node_3, NODE_2]


def test_a_value_heavier_than_the_whole_budget_is_answered_but_not_held() -> None:
    store = Store()
    cache: AgentStateCache[str] = AgentStateCache(store.load, max_weight=1, weight=len, monotonic=lambda: 0.0)
    assert (cache.get(NODE_1), cache.get(NODE_1)) == ("v1", "v1")
    assert (len(cache), store.reads) == (0, [NODE_1, NODE_1])


# --- verified chains ------------------------------------------------------------------------------------


def peer(
    valid_from: datetime = NOW - timedelta(minutes=1), valid_until: datetime = NOW + timedelta(hours=1)
) -> VerifiedPeer:
    return VerifiedPeer(NODE_1, 0xABC, NOW + timedelta(hours=1), valid_from, valid_until)


def bundle() -> Bundle:
    return Bundle(TrustDomain("example.org"), ())


def test_a_chain_verified_against_a_bundle_is_reused_with_that_bundle_within_its_validity() -> None:
    chains, current = VerifiedChains(), bundle()
    chains.put(b"chain", current, peer())
    assert chains.get(b"chain", current, NOW) == peer()
    assert chains.get(b"other chain", current, NOW) is None


def test_a_chain_is_not_reused_outside_its_verified_paths_validity() -> None:
    chains, current = VerifiedChains(), bundle()
    chains.put(b"chain", current, peer(valid_from=NOW, valid_until=NOW + timedelta(seconds=1)))
    assert chains.get(b"chain", current, NOW - timedelta(microseconds=1)) is None
    assert chains.get(b"chain", current, NOW + timedelta(seconds=1)) is not None
    assert chains.get(b"chain", current, NOW + timedelta(seconds=1, microseconds=1)) is None


def test_a_new_bundle_forgets_every_chain_verified_against_the_old_one() -> None:
    chains, old, new = VerifiedChains(), bundle(), bundle()  # equal, but another snapshot
    chains.put(b"chain", old, peer())
    assert chains.get(b"chain", new, NOW) is None
    chains.put(b"other chain", new, peer())
    assert (chains.get(b"chain", old, NOW), len(chains)) == (None, 1)


def test_chains_are_bounded_least_recently_used_first() -> None:
    chains, current = VerifiedChains(max_chains=2), bundle()
    for name in (b"a", b"b", b"c"):
        chains.put(name, current, peer())
    assert [chains.get(name, current, NOW) is not None for name in (b"a", b"b", b"c")] == [False, True, True]


MINUTE = timedelta(minutes=1)


def test_a_contact_is_due_first_then_not_again_within_the_interval() -> None:
    notes = ContactNotes(MINUTE)
    assert notes.claim(NODE_1, NOW, "0.4.0")
    assert not notes.claim(NODE_1, NOW + timedelta(seconds=59), "0.4.0")
    assert notes.claim(NODE_1, NOW + MINUTE, "0.4.0")


def test_a_changed_version_is_due_at_once_and_no_version_keeps_the_noted_one() -> None:
    notes = ContactNotes(MINUTE)
    notes.noted(NODE_1, NOW, "0.4.0")
    assert not notes.due(NODE_1, NOW + timedelta(seconds=1), "")
    assert notes.due(NODE_1, NOW + timedelta(seconds=1), "0.5.0")
    notes.noted(NODE_1, NOW + timedelta(seconds=2), "")
    assert not notes.due(NODE_1, NOW + timedelta(seconds=3), "0.4.0")


def test_a_forgotten_contact_is_due_again() -> None:
    notes = ContactNotes(MINUTE)
    notes.noted(NODE_1, NOW, "")
    notes.forget(NODE_1)
    assert notes.due(NODE_1, NOW, "")


def test_contacts_are_bounded_least_recently_used_first() -> None:
    notes = ContactNotes(MINUTE, max_agents=1)
    notes.noted(NODE_1, NOW, "")
    notes.noted(NODE_2, NOW, "")
    assert (notes.due(NODE_1, NOW, ""), notes.due(NODE_2, NOW, "")) == (True, False)
