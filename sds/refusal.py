"""How the agent's gRPC handlers refuse a call: raise :class:`Refused`; the decorators below turn it
into the call's status.

Why not ``context.abort``: it raises an exception inside grpc that holds the handler's frame, and the
frame holds the request, in a reference cycle that only the cyclic garbage collector frees. A caller
sending large requests that are refused (a 1 MB audience) could then make the agent hold them until
the collector's next pass of an older generation — measured on a bare grpc.aio server with the
collector off: 48-50 MB kept after 50 refused 1 MB requests. Setting the status and returning keeps
nothing (4-5 MB, grpc's own buffers): the request is freed the moment the handler ends, by reference
counting, whatever the collector's thresholds (docs/performance.md).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, TypeVar

import grpc

Context = grpc.aio.ServicerContext[Any, Any]
Servicer = TypeVar("Servicer")
Request = TypeVar("Request")
Reply = TypeVar("Reply")


class Refused(Exception):
    """The call ends with ``code`` and ``details``; raised by a handler or anything it calls."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _end(context: Context, refusal: Refused) -> None:
    context.set_code(refusal.code)
    context.set_details(refusal.details)


def refusing_unary(
    handler: Callable[[Servicer, Request, Context], Awaitable[Reply]],
) -> Callable[[Servicer, Request, Context], Awaitable[Reply | None]]:
    """A unary handler whose :class:`Refused` ends the call with its status (and no message)."""

    @functools.wraps(handler)
    async def answer(servicer: Servicer, request: Request, context: Context) -> Reply | None:
        try:
            return await handler(servicer, request, context)
        except Refused as refusal:
            _end(context, refusal)
            return None

    return answer


def refusing_stream(
    handler: Callable[[Servicer, Request, Context], AsyncGenerator[Reply, None]],
) -> Callable[[Servicer, Request, Context], AsyncGenerator[Reply, None]]:
    """A response-streaming handler whose :class:`Refused` ends the stream with its status, after the
    responses it yielded before."""

    @functools.wraps(handler)
    async def stream(servicer: Servicer, request: Request, context: Context) -> AsyncGenerator[Reply, None]:
        try:
            async with aclosing(handler(servicer, request, context)) as responses:
                async for response in responses:
                    yield response
        except Refused as refusal:
            _end(context, refusal)

    return stream
