"""What an SDS stream is woken for (sds.sds_v3._events): each request is judged by the stream's reader
as it arrives; only an outcome reaches the stream, and the next request is read once the stream took
it, so a client cannot make a stream hold more than one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from sds.cache import CacheSnapshot, WorkloadCache
from sds.sds_v3 import _Answer, _events, _Outcome
from tests.support.sds_snapshots import TestCa, snapshot


def cache() -> WorkloadCache:
    return WorkloadCache(snapshot(TestCa.create("example.org"), version=1))


async def requests(*items: str) -> AsyncIterator[str]:
    for item in items:
        yield item


async def test_requests_with_nothing_to_send_never_reach_the_stream() -> None:
    judged: list[str] = []

    def judge(request: Any) -> _Outcome | None:
        judged.append(request)
        return None  # an ACK

    received = [event async for event in _events(requests("ack-1", "ack-2", "ack-3"), judge, cache())]

    assert judged == ["ack-1", "ack-2", "ack-3"]
    assert [type(e) for e in received] == [CacheSnapshot]  # the current snapshot, nothing for the ACKs


async def test_the_next_request_is_judged_only_after_the_stream_took_the_last_outcome() -> None:
    judged: list[str] = []

    def judge(request: Any) -> _Outcome | None:
        judged.append(request)
        return _Answer(request)

    events = _events(requests("r1", "r2", "r3"), judge, cache())
    outcomes = []
    async for event in events:
        if isinstance(event, _Answer):
            outcomes.append(event.response)
            for _ in range(10):  # the reader gets every chance to run ahead
                await asyncio.sleep(0)
            assert len(judged) <= len(outcomes) + 1, "a second outcome waits while the stream holds one"
    assert outcomes == ["r1", "r2", "r3"]
