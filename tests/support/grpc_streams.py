"""A gRPC stream under test: responses are collected by a reader task, so a test can wait for the next
one (bounded), listen for silence, or wait for the error that ended the stream, without cancelling
the gRPC read."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

WAIT = 5.0  # upper bound for a response that must come
QUIET = 0.3  # how long we listen to be sure nothing comes


class Stream:
    def __init__(self, call: Any) -> None:
        self.call = call
        self.responses: asyncio.Queue[Any] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while (response := await self.call.read()) is not grpc.aio.EOF:
            await self.responses.put(response)

    async def send(self, request: Any) -> None:
        await self.call.write(request)

    async def next(self) -> Any:
        getter = asyncio.ensure_future(self.responses.get())
        done, _ = await asyncio.wait((getter, self._reader), timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        if self._reader in done:
            self._reader.result()  # raises the RPC error that ended the stream
            raise AssertionError("stream ended without a response")
        raise AssertionError(f"no response within {WAIT}s")

    async def error(self) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await asyncio.wait_for(asyncio.shield(self._reader), WAIT)
        return failure.value

    async def expect_silence(self) -> None:
        await asyncio.sleep(QUIET)
        assert self.responses.empty(), f"unexpected response: {self.responses.get_nowait()}"

    async def close(self) -> None:
        self.call.cancel()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
