"""The agent's life as an operator sees it, with real processes: started before its CA it waits and
attests once the CA is up; a restart uses the saved SVID; SIGTERM closes and removes its sockets; and
an Envoy from ``trustmesh-agent envoy-bootstrap --inbound-upstream`` fronts a real application."""

from __future__ import annotations

import http.server
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sds.envoy_bootstrap import Outbound, envoy_bootstrap
from spiffe_core.spiffe_id import TrustDomain
from tests.support.envoy import running_envoy
from tests.support.mesh import TRUST_DOMAIN, Mesh
from tests.support.processes import background, command, free_port, run, wait_until

pytestmark = pytest.mark.e2e

FRONTEND = f"spiffe://{TRUST_DOMAIN}/frontend"
BACKEND = f"spiffe://{TRUST_DOMAIN}/backend"
UID = f"unix:uid:{os.getuid()}"


def prepared_agent(mesh: Mesh) -> Path:
    """A join token, the two entries and the agent config, made while the CA runs."""
    token, agent_id = mesh.join_token()
    for workload in (FRONTEND, BACKEND):
        mesh.create_entry(workload, agent_id, UID)
    return mesh.write_agent_config(token)


def agent_sockets(mesh: Mesh) -> list[Path]:
    return sorted(mesh.socket_dir.glob("*.sock")) + sorted(mesh.socket_dir.glob(".*.sock.d"))


def test_an_agent_started_before_its_ca_attests_once_the_ca_is_up(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    with mesh.running_ca():
        config = prepared_agent(mesh)
    argv = [command("trustmesh-agent"), "--config", str(config), "run"]
    with background(argv, tmp_path / "agent.log") as agent:
        wait_until(lambda: "attestation attempt 1 failed" in mesh.log("agent.log"), 20, "a failed attestation")
        assert agent.poll() is None, mesh.log("agent.log")
        with mesh.running_ca(log_name="ca-late.log"):
            wait_until(lambda: "attested as" in mesh.log("agent.log"), 40, "the agent to attest")
            svids = fetched_svids(config, tmp_path)
            assert {s["spiffe_id"] for s in svids} == {FRONTEND, BACKEND}
            assert all(Path(s["key"]).exists() for s in svids)
            fetch = [command("trustmesh-agent"), "--config", str(config), "api", "fetch"]
            bundles = json.loads(run([*fetch, "bundles", "--out", str(tmp_path / "bundles"), "--json"]).stdout)
            assert bundles[TRUST_DOMAIN]["authorities"] >= 1
            jwts = json.loads(run([*fetch, "jwt", "--audience", "payments", "--json"]).stdout)
            assert {j["spiffe_id"] for j in jwts} == {FRONTEND, BACKEND}
            assert agent.poll() is None
    log = mesh.log("agent.log")
    assert log.count("attested as") == 1
    assert "retrying in" in log
    assert "Traceback" not in log


def fetched_svids(config: Path, tmp_path: Path) -> list[dict[str, str]]:
    """``api fetch x509 --json`` as this process, once the agent hands out both SVIDs."""
    fetched: list[dict[str, str]] = []

    def both() -> bool:
        nonlocal fetched
        result = run(
            [
                command("trustmesh-agent"),
                "--config",
                str(config),
                "api",
                "fetch",
                "x509",
                "--out",
                str(tmp_path / "svids"),
                "--json",
            ]
        )
        fetched = json.loads(result.stdout) if result.returncode == 0 else []
        return len(fetched) == 2

    wait_until(both, 30, "the agent to hand out both SVIDs", interval=0.5)
    return fetched


def test_sigterm_removes_the_sockets_and_a_restart_loads_the_saved_svid(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    with mesh.running_ca():
        config = prepared_agent(mesh)
        with mesh.running_agent(config) as agent:
            wait_until(lambda: "attested as" in mesh.log("agent.log"), 20, "the agent to attest")
            assert [p.name for p in agent_sockets(mesh)] == [
                "sds.sock",
                "workload.sock",
                ".sds.sock.d",
                ".workload.sock.d",
            ]
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(timeout=15) == 0
        assert agent_sockets(mesh) == []
        log = mesh.log("agent.log")
        assert "received SIGTERM; closing streams and removing the agent's sockets" in log
        assert "agent stopped; sockets removed" in log

        with mesh.running_agent(config, log_name="agent-restarted.log"):
            wait_until(lambda: " ready; serving SDS" in mesh.log("agent-restarted.log"), 20, "the restarted agent")
            restarted = mesh.log("agent-restarted.log")
            assert "loaded saved SVID spiffe://example.org/trustmesh/agent/join_token/e2e" in restarted
            assert "attested" not in restarted


class _App(http.server.BaseHTTPRequestHandler):
    """The application behind the inbound Envoy: echoes who Envoy says called."""

    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "xfcc": self.headers.get("x-forwarded-client-cert", "")}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def application() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _App)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_envoy_bootstrap_inbound_forwards_to_the_application_over_mtls(tmp_path: Path, application: int) -> None:
    mesh = Mesh(tmp_path)
    backend_port, frontend_port = free_port(), free_port()
    with mesh.running_ca():
        config = prepared_agent(mesh)
        with mesh.running_agent(config):
            generated = run(
                [
                    command("trustmesh-agent"),
                    "--config",
                    str(config),
                    "envoy-bootstrap",
                    "--spiffe-id",
                    BACKEND,
                    "--node-id",
                    "backend",
                    "--admin-port",
                    "0",
                    "--inbound-port",
                    str(backend_port),
                    "--allow",
                    FRONTEND,
                    "--inbound-upstream",
                    f"127.0.0.1:{application}",
                ]
            )
            assert generated.returncode == 0, generated.stderr
            frontend = envoy_bootstrap(
                node_id="frontend",
                spiffe_id=FRONTEND,
                trust_domain=TrustDomain(TRUST_DOMAIN),
                sds_socket=mesh.sds_socket,
                admin_port=0,
                outbound=Outbound(frontend_port, f"127.0.0.1:{backend_port}", BACKEND),
            )
            with (
                running_envoy(json.loads(generated.stdout), tmp_path, "backend", ready_timeout=30),
                running_envoy(frontend, tmp_path, "frontend", ready_timeout=30),
            ):

                def answered() -> bool:
                    try:
                        return httpx.get(f"http://127.0.0.1:{frontend_port}/hello", timeout=5).status_code == 200
                    except httpx.HTTPError:
                        return False

                wait_until(answered, 20, "a request through both Envoys to reach the application")
                # A client cannot claim another identity: Envoy replaces what it sent (SANITIZE_SET).
                forged = {"x-forwarded-client-cert": f"URI=spiffe://{TRUST_DOMAIN}/admin"}
                reply = httpx.get(f"http://127.0.0.1:{frontend_port}/hello", headers=forged, timeout=5)
    assert reply.status_code == 200
    seen = reply.json()
    assert seen["path"] == "/hello"
    fields = dict(part.split("=", 1) for part in seen["xfcc"].split(";"))
    assert (fields["URI"], fields["By"]) == (FRONTEND, BACKEND)
    assert "admin" not in seen["xfcc"]
