"""A real CA (``ca.server.serve``) running in a thread of the test process, for integration tests that
drive it through its admin socket: one event loop of its own, stopped by cancelling ``serve``."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

from ca.admin_client import AdminClient
from ca.config import CaConfig
from ca.server import serve
from spiffe_core.errors import TrustmeshError
from tests.support.processes import wait_until

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


@contextlib.contextmanager
def serving(config: CaConfig) -> Iterator[None]:
    """Run the CA of ``config`` until the block ends; entered once its admin socket answers ``/ready``."""
    loop = asyncio.new_event_loop()
    main_task = loop.create_task(serve(config))
    thread = threading.Thread(
        target=loop.run_until_complete, args=(asyncio.gather(main_task, return_exceptions=True),), daemon=True
    )
    thread.start()

    def ready() -> bool:
        assert not main_task.done(), f"serve() ended early: {main_task.exception() if main_task.done() else ''}"
        try:
            with AdminClient.local(config.server.admin_socket, timeout=1) as client:
                client.request("GET", "/ready")
        except TrustmeshError:
            return False
        return True

    try:
        wait_until(ready, STARTUP_TIMEOUT, "the CA's admin socket to answer /ready")
        yield
    finally:
        loop.call_soon_threadsafe(main_task.cancel)
        thread.join(STOP_TIMEOUT)
        loop.close()
