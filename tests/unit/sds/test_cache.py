"""The workload cache's publish/subscribe contract: newest wins, every waiter wakes on a publish, one
waiter going away never takes the others' wake-up with it, and the cache holds nothing for waiters
that left."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from sds.cache import CacheSnapshot, WorkloadCache
from spiffe_core.spiffe_id import TrustDomain

TD = TrustDomain("example.org")


def version(n: int) -> CacheSnapshot:
    return CacheSnapshot(TD, version=n)


async def test_a_subscriber_gets_the_current_snapshot_at_once() -> None:
    cache = WorkloadCache(version(3))
    subscription = cache.subscribe()
    assert (await anext(subscription)).version == 3
    await subscription.aclose()


async def test_every_waiting_stream_wakes_on_one_publish() -> None:
    cache = WorkloadCache(version(1))
    waiting = [cache.next_change(seen=1) for _ in range(100)]
    assert not any(f.done() for f in waiting)
    await cache.publish(version(2))
    assert {f.result().version for f in waiting} == {2}


async def test_a_stream_behind_gets_the_newest_snapshot_without_waiting() -> None:
    cache = WorkloadCache(version(1))
    await cache.publish(version(2))
    await cache.publish(version(3))
    change = cache.next_change(seen=1)
    assert (change.done(), change.result().version) == (True, 3)


async def test_a_cancelled_subscriber_does_not_cancel_the_others_wake_up() -> None:
    cache = WorkloadCache(version(1))

    async def second(subscription: AsyncGenerator[CacheSnapshot, None]) -> int:
        await anext(subscription)
        return (await anext(subscription)).version

    leaving, staying = cache.subscribe(), cache.subscribe()
    left = asyncio.create_task(second(leaving))
    stays = asyncio.create_task(second(staying))
    await asyncio.sleep(0.01)
    left.cancel()
    await asyncio.gather(left, return_exceptions=True)
    await cache.publish(version(2))
    assert await asyncio.wait_for(stays, 5) == 2
    assert cache.next_change(seen=2).cancelled() is False


async def test_each_waiter_has_a_future_of_its_own_that_it_may_cancel() -> None:
    cache = WorkloadCache(version(1))
    leaving, staying = cache.next_change(seen=1), cache.next_change(seen=1)
    leaving.cancel()
    await cache.publish(version(2))
    assert (leaving.cancelled(), staying.result().version) == (True, 2)


async def test_a_waiter_that_stops_waiting_is_forgotten_and_not_woken() -> None:
    cache = WorkloadCache(version(1))
    gone, waiting = cache.next_change(seen=1), cache.next_change(seen=1)
    cache.forget(gone)
    assert cache.waiting == 1
    await cache.publish(version(2))
    assert (gone.done(), waiting.done(), cache.waiting) == (False, True, 0)


async def test_a_closed_subscription_leaves_no_waiter_behind() -> None:
    cache = WorkloadCache(version(1))
    subscription = cache.subscribe()
    await anext(subscription)
    pending = asyncio.ensure_future(anext(subscription))
    await asyncio.sleep(0)
    assert cache.waiting == 1
    pending.cancel()
    await asyncio.gather(pending, return_exceptions=True)
    await subscription.aclose()
    assert cache.waiting == 0
