"""A CA whose work fails (a port gRPC could not bind, a datastore gone) ends with one error line: the
failure cancels its HTTP servers, and each first answers the requests it holds. A request still
running when the CA's event loop ends is cancelled there, and uvicorn logs that as a traceback
("Exception in ASGI application") after the CA's one line."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from ca.admin_listener import serve_draining
from spiffe_core.errors import ConfigError


class SlowReady:
    """A /ready still working when the CA's work fails."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.answered = False
        self.app = FastAPI()
        self.app.get("/ready")(self.ready)

    async def ready(self) -> dict[str, str]:
        self.started.set()
        await asyncio.sleep(0.3)
        self.answered = True
        return {"status": "ready"}


async def test_an_http_server_cancelled_by_a_failing_task_answers_what_it_holds_before_the_ca_fails() -> None:
    probe = SlowReady()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    server = uvicorn.Server(uvicorn.Config(probe.app, log_config=None, lifespan="off"))

    async def failing() -> None:
        await probe.started.wait()  # a request is in flight
        raise ConfigError("server.node_api_address 127.0.0.1:1 is in use")

    async def ca() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(serve_draining(server, [sock]))
            group.create_task(failing())

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}") as client:
        answer = asyncio.create_task(client.get("/ready"))
        with pytest.raises(ExceptionGroup) as failed:
            await ca()
        assert probe.answered  # before the CA's work ended, not cut off when its loop closes
        assert (await answer).status_code == 200
    assert failed.group_contains(ConfigError)
    assert server.should_exit
