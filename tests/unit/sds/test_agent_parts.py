"""The agent's long-running parts (its SVID renewal, the workload SVID keeper, the cert file writer)
stop the agent when they end, however they end: a TaskGroup would carry on without a part whose task
ended cancelled, and the agent would serve SVIDs that nobody renews."""

from __future__ import annotations

import asyncio
import gc

import pytest

from sds.server import GC_YOUNG_THRESHOLD, collect_cycles_less_often, until_stopped


async def test_a_part_cancelled_from_within_stops_the_agent() -> None:
    async def part() -> None:
        raise asyncio.CancelledError  # what grpc.aio raises for a call whose channel was closed

    with pytest.raises(RuntimeError, match="workload SVID task was cancelled from within"):
        await until_stopped(part(), "workload SVID")


async def test_a_part_that_returns_stops_the_agent() -> None:
    async def part() -> None:
        return None

    with pytest.raises(RuntimeError, match="cert file task ended"):
        await until_stopped(part(), "cert file")


async def test_a_part_keeps_its_own_error() -> None:
    async def part() -> None:
        raise ValueError("the CA refused the join token")

    with pytest.raises(ValueError, match="join token"):
        await until_stopped(part(), "agent SVID")


async def test_a_part_cancelled_with_the_agent_ends_cancelled() -> None:
    started = asyncio.Event()

    async def part() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(until_stopped(part(), "agent SVID"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_a_taskgroup_keeps_running_without_a_part_cancelled_from_within() -> None:
    """Why until_stopped exists: the same part, bare, vanishes from its TaskGroup without a trace."""

    async def part() -> None:
        raise asyncio.CancelledError

    async def survivor() -> str:
        await asyncio.sleep(0.05)
        return "still running"

    async with asyncio.TaskGroup() as tasks:
        vanished = tasks.create_task(part())
        other = tasks.create_task(survivor())
    assert vanished.cancelled()
    assert other.result() == "still running"


def test_the_agent_lets_the_youngest_garbage_generation_grow_and_keeps_the_older_thresholds() -> None:
    before = gc.get_threshold()
    try:
        collect_cycles_less_often()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, before[1], before[2])
    finally:
        gc.set_threshold(*before)
