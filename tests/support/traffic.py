"""Continuous requests through a real Envoy while something else happens (a rotation, a revocation),
counting every request that did not succeed. Bounded in time and count, as every load loop in tests."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx


@dataclass
class Traffic:
    port: int
    interval: float = 0.01
    max_requests: int = 50_000
    results: list[int | str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def failures(self) -> list[int | str]:
        return [r for r in self.results if r != 200]

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set() and len(self.results) < self.max_requests:
                try:
                    self.results.append(client.get(f"http://127.0.0.1:{self.port}/").status_code)
                except httpx.HTTPError as err:
                    self.results.append(type(err).__name__)
                time.sleep(self.interval)


@contextlib.contextmanager
def continuous_requests(port: int, *, max_seconds: float = 600) -> Iterator[Traffic]:
    """Send requests to ``port`` until the block ends (or ``max_seconds`` pass)."""
    traffic = Traffic(port)
    thread = threading.Thread(target=traffic.run, daemon=True)
    thread.start()
    timer = threading.Timer(max_seconds, traffic.stop)
    timer.start()
    try:
        yield traffic
    finally:
        traffic.stop()
        timer.cancel()
        thread.join(timeout=10)
