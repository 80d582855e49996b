"""Authority rotation end to end (the rotation issue's acceptance list): real CA and agent processes,
two real Envoys doing mTLS on the agent's SVIDs, continuous requests, and a CA whose authority lives
48 seconds, so three generations pass within the test."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_mesh import FRONTEND, envoy_pair, get_through, start_agent, wait_for_mtls
from tests.support.envoy import Envoy, running_envoy
from tests.support.mesh import Mesh
from tests.support.processes import wait_until
from tests.support.tls_peer import client_context, connects
from tests.support.traffic import continuous_requests

pytestmark = pytest.mark.e2e

# ca.ttl 48 s: prepare at 24 s, activate at 40 s, then a new authority every 24 s. SVIDs live 8 s (at
# most ca.ttl/6) and rotate at about 4 s; the refresh hint is 3 s (shorter than the SVID TTL, at most
# ca.ttl/6).
SHORT_TTLS = """
[ca]
ttl = "48s"
[x509_svid]
default_ttl = "8s"
max_ttl = "8s"
[jwt_svid]
default_ttl = "8s"
max_ttl = "8s"
[agent_svid]
ttl = "8s"
[bundle]
refresh_hint = "3s"
"""


def authorities(mesh: Mesh) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = json.loads(mesh.ca("authority", "list", "--json"))
    return listed


def active_x509(mesh: Mesh) -> str:
    (active,) = [a["id"] for a in authorities(mesh) if a["kind"] == "x509" and a["state"] == "active"]
    return str(active)


def invalid_served_certificates(envoy: Envoy) -> list[dict[str, Any]]:
    """The certificates Envoy serves (admin /certs) that are not valid at this moment."""
    now = datetime.now(UTC)
    invalid = []
    for context in envoy.admin_json("/certs").get("certificates", []):
        for cert in context.get("cert_chain", []):
            valid_from = datetime.fromisoformat(cert["valid_from"].replace("Z", "+00:00"))
            expires = datetime.fromisoformat(cert["expiration_time"].replace("Z", "+00:00"))
            if not valid_from <= now < expires:
                invalid.append({"now": now.isoformat(), **cert})
    return invalid


def test_scheduled_rotation_through_three_generations_fails_no_request(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    mesh.write_ca_config(SHORT_TTLS)
    with mesh.running_ca():
        config, _ = start_agent(mesh)
        backend, frontend, _, frontend_port = envoy_pair(mesh)
        first = active_x509(mesh)
        with (
            mesh.running_agent(config) as agent,
            running_envoy(backend, tmp_path, "backend") as backend_envoy,
            running_envoy(frontend, tmp_path, "frontend") as frontend_envoy,
        ):
            wait_for_mtls(frontend_port)
            generations = [first]
            invalid_served: list[dict[str, Any]] = []
            deadline = time.monotonic() + 150
            with continuous_requests(frontend_port) as traffic:
                while len(generations) < 4 and time.monotonic() < deadline:
                    time.sleep(0.5)
                    for envoy in (backend_envoy, frontend_envoy):
                        invalid_served += invalid_served_certificates(envoy)
                    active = active_x509(mesh)
                    if active != generations[-1]:
                        generations.append(active)
            assert len(generations) == 4, f"only {len(generations) - 1} rotations in 150 s: {generations}"
            assert len(traffic.results) > 1000
            assert traffic.failures == []
            # Traffic alone would not show an SVID left to expire: the frontend's pooled connection to
            # the backend was handshaken while it was valid. What Envoy serves is checked instead.
            agent_log = "\n".join((tmp_path / "agent.log").read_text().splitlines()[-30:])
            assert invalid_served == [], json.dumps(invalid_served[:3], indent=1) + "\nagent log:\n" + agent_log
            assert agent.poll() is None, agent_log
            remaining = {a["id"] for a in authorities(mesh)}
            assert first not in remaining, "the first authority signed nothing alive any more; it must be pruned"
            assert len(json.loads(mesh.ca("bundle", "show", "--format", "spiffe"))["keys"]) <= 3 + 3


OFFICER_TTLS = """
[bundle]
refresh_hint = "2s"
"""


def admin_api(mesh: Mesh) -> httpx.Client:
    """The CA's admin API over its Unix socket, as the CLI uses it."""
    transport = httpx.HTTPTransport(uds=str(mesh.root / "ca" / "admin.sock"))
    return httpx.Client(transport=transport, base_url="http://trustmesh-ca", timeout=10)


def officer(mesh: Mesh, *args: str) -> dict[str, Any]:
    reply: dict[str, Any] = json.loads(mesh.ca(*args, "--json"))
    return reply


def test_officer_rotation_under_live_traffic_fails_no_request_and_revoke_cuts_the_old_authority_off(
    tmp_path: Path,
) -> None:
    mesh = Mesh(tmp_path)
    mesh.write_ca_config(OFFICER_TTLS)
    with mesh.running_ca():
        config, _ = start_agent(mesh)
        backend, frontend, backend_port, frontend_port = envoy_pair(mesh)
        old = active_x509(mesh)
        # A certificate of the old authority, held outside the agent: after revoke, Envoy must refuse it.
        mesh.ca("x509", "mint", "--spiffe-id", FRONTEND, "--out", str(tmp_path / "old"))
        old_client = client_context(tmp_path / "old")
        with (
            mesh.running_agent(config),
            running_envoy(backend, tmp_path, "backend") as backend_envoy,
            running_envoy(frontend, tmp_path, "frontend") as frontend_envoy,
        ):
            wait_for_mtls(frontend_port)
            assert connects(backend_port, old_client)
            with continuous_requests(frontend_port) as traffic:
                prepared = officer(mesh, "authority", "prepare")["changes"][0]["authority_id"]
                time.sleep(4.1)  # two refresh hints in the bundle before it may sign
                before = backend_envoy.certificate_serials() | frontend_envoy.certificate_serials()
                started = time.monotonic()  # through the admin API: CLI start-up is not what is measured
                with admin_api(mesh) as admin:
                    admin.post(f"/v1/authorities/{prepared}/activate", json={}).raise_for_status()
                    tainted = admin.post(f"/v1/authorities/{old}/taint", json={}).raise_for_status().json()
                wait_until(
                    lambda: (backend_envoy.certificate_serials() | frontend_envoy.certificate_serials()).isdisjoint(
                        before
                    ),
                    10,
                    "both Envoys to serve SVIDs of the new authority",
                )
                switched = time.monotonic() - started
                print(f"\nactivate + taint -> both Envoys serve the new authority's SVIDs: {switched:.2f} s")
                assert tainted["svids_affected"] >= 3  # both workloads' SVIDs and the minted one, at least
                wait_until(lambda: agent_renewed_after_taint(mesh), 10, "the agent to renew its own SVID")
                officer(mesh, "authority", "revoke", old)
                wait_until(lambda: not connects(backend_port, old_client), 5, "Envoy to refuse the old authority")
                time.sleep(1)
            assert len(traffic.results) > 200
            assert traffic.failures == []
            assert switched < 2.0
            assert get_through(frontend_port).status_code == 200


def agent_renewed_after_taint(mesh: Mesh) -> bool:
    """Whether the agent replaced its own SVID after the taint (before a revoke, else it is cut off)."""
    log = (mesh.root / "agent.log").read_text()
    tainted_at = log.find("must be replaced (signing authority tainted)")
    return tainted_at >= 0 and "renewed agent SVID" in log[tainted_at:]


def test_emergency_rotation_under_live_traffic_replaces_every_svid_and_fails_no_request(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    mesh.write_ca_config(OFFICER_TTLS)
    with mesh.running_ca():
        config, _ = start_agent(mesh)
        backend, frontend, _, frontend_port = envoy_pair(mesh)
        old = active_x509(mesh)
        with (
            mesh.running_agent(config),
            running_envoy(backend, tmp_path, "backend") as backend_envoy,
            running_envoy(frontend, tmp_path, "frontend") as frontend_envoy,
        ):
            wait_for_mtls(frontend_port)
            before = backend_envoy.certificate_serials() | frontend_envoy.certificate_serials()
            with continuous_requests(frontend_port) as traffic:
                dry = officer(mesh, "authority", "rotate", "--now", "--dry-run")
                assert active_x509(mesh) == old
                started = time.monotonic()
                with admin_api(mesh) as admin:
                    report = admin.post("/v1/authorities/rotate", json={"kind": "x509"}).raise_for_status().json()
                wait_until(
                    lambda: (backend_envoy.certificate_serials() | frontend_envoy.certificate_serials()).isdisjoint(
                        before
                    ),
                    10,
                    "both Envoys to serve SVIDs of the new authority",
                )
                switched = time.monotonic() - started
                print(f"\nrotate --now -> both Envoys serve the new authority's SVIDs: {switched:.2f} s")
                wait_until(lambda: agent_renewed_after_taint(mesh), 10, "the agent to renew its own SVID")
                officer(mesh, "authority", "revoke", old)
                time.sleep(1)
            assert dry["svids_affected"] == report["svids_affected"]
            assert active_x509(mesh) != old
            assert len(traffic.results) > 100
            assert traffic.failures == []
            assert get_through(frontend_port).status_code == 200
