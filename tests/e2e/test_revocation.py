"""Leaf revocation end to end: ``trustmesh-ca revoke`` → CRL pushed through the agent → a real Envoy
refuses NEW connections from the revoked certificate, while other peers are unaffected and the
revoked workload gets a fresh SVID (DESIGN §3 "Leaf revocation"; docs/runbooks/revocation.md)."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sds.envoy_bootstrap import Inbound, envoy_bootstrap
from spiffe_core.spiffe_id import TrustDomain
from tests.e2e.test_mesh import BACKEND, FRONTEND, envoy_pair, get_through, start_agent, wait_for_mtls
from tests.support.envoy import running_envoy
from tests.support.mesh import TRUST_DOMAIN, Mesh
from tests.support.processes import free_port, wait_until
from tests.support.tls_peer import client_context, connects
from tests.support.traffic import continuous_requests

pytestmark = pytest.mark.e2e


def test_a_revoked_leaf_is_refused_on_new_connections_within_two_seconds(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    with mesh.running_ca():
        config, _ = start_agent(mesh)
        backend, frontend, backend_port, frontend_port = envoy_pair(mesh)
        minted = json.loads(mesh.ca("x509", "mint", "--spiffe-id", FRONTEND, "--out", str(tmp_path / "leaf"), "--json"))
        peer = client_context(tmp_path / "leaf")
        with (
            mesh.running_agent(config),
            running_envoy(backend, tmp_path, "backend"),
            running_envoy(frontend, tmp_path, "frontend"),
        ):
            wait_for_mtls(frontend_port)
            wait_until(lambda: connects(backend_port, peer), 10, "Envoy to accept the minted SVID")
            with continuous_requests(frontend_port) as traffic:
                report = json.loads(
                    mesh.ca("revoke", "--serial", minted["serial"], "--reason", "key-compromise", "--json")
                )
                # Timed from the API's reply (the revocation is committed by then): the CLI's own start-up,
                # seconds on a loaded machine, is not part of the propagation being measured.
                started = time.monotonic()
                wait_until(lambda: not connects(backend_port, peer), 10, "Envoy to refuse the revoked SVID")
                refused_after = time.monotonic() - started
                print(f"\nrevoke --serial -> Envoy refuses new connections: {refused_after:.2f} s")
                time.sleep(1)
            assert report["revoked_serials"] == [minted["serial"]]
            assert refused_after < 2.0
            assert len(traffic.results) > 50
            assert traffic.failures == [], "an unrevoked peer must be unaffected"


def test_a_revoked_workload_gets_a_fresh_svid_and_traffic_recovers(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    with mesh.running_ca():
        config, _ = start_agent(mesh)
        backend, frontend, _, frontend_port = envoy_pair(mesh)
        with (
            mesh.running_agent(config),
            running_envoy(backend, tmp_path, "backend"),
            running_envoy(frontend, tmp_path, "frontend") as frontend_envoy,
        ):
            wait_for_mtls(frontend_port)
            before = frontend_envoy.certificate_serials()
            report = json.loads(mesh.ca("revoke", "--spiffe-id", FRONTEND, "--json"))
            assert {int(s, 16) for s in report["revoked_serials"]} == before
            wait_until(
                lambda: (
                    bool(frontend_envoy.certificate_serials())
                    and frontend_envoy.certificate_serials().isdisjoint(before)
                ),
                10,
                "the frontend Envoy to get a fresh SVID",
            )
            wait_for_mtls(frontend_port)
            assert get_through(frontend_port).status_code == 200


def test_an_open_connection_of_a_revoked_peer_ends_within_the_bounded_connection_lifetime(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    with mesh.running_ca():
        config, _ = start_agent(mesh)
        backend_port = free_port()
        backend = envoy_bootstrap(
            node_id="backend",
            spiffe_id=BACKEND,
            trust_domain=TrustDomain(TRUST_DOMAIN),
            sds_socket=mesh.sds_socket,
            admin_port=0,
            inbound=Inbound(backend_port, (FRONTEND,)),
            max_connection_duration=timedelta(seconds=3),
        )
        minted = json.loads(mesh.ca("x509", "mint", "--spiffe-id", FRONTEND, "--out", str(tmp_path / "leaf"), "--json"))
        with mesh.running_agent(config), running_envoy(backend, tmp_path, "backend"):
            peer = client_context(tmp_path / "leaf")
            wait_until(lambda: connects(backend_port, peer), 10, "Envoy to accept the minted SVID")
            with httpx.Client(verify=peer, timeout=3) as keep_alive:  # one connection, reused
                assert keep_alive.get(f"https://127.0.0.1:{backend_port}/").status_code == 200
                mesh.ca("revoke", "--serial", minted["serial"])
                wait_until(lambda: not connects(backend_port, peer), 5, "new connections to be refused")
                started = time.monotonic()
                answered_on_old_connection = 0
                while time.monotonic() - started < 8:
                    try:
                        keep_alive.get(f"https://127.0.0.1:{backend_port}/")
                    except httpx.HTTPError:
                        break  # the old connection closed; a new one is refused
                    answered_on_old_connection += 1
                    time.sleep(0.2)
                lived_on = time.monotonic() - started
        print(f"\nrevoked peer's open connection lived on {lived_on:.1f} s ({answered_on_old_connection} requests)")
        assert lived_on < 5.0


def test_the_crl_listing_a_revoked_svid_is_served_over_http_and_by_the_cli(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    with mesh.running_ca():
        minted = json.loads(mesh.ca("x509", "mint", "--spiffe-id", FRONTEND, "--out", str(tmp_path / "leaf"), "--json"))
        mesh.ca("revoke", "--serial", minted["serial"], "--reason", "key-compromise")
        (authority,) = [a["id"] for a in json.loads(mesh.ca("authority", "list", "--json")) if a["kind"] == "x509"]
        served = httpx.get(f"http://127.0.0.1:{mesh.http_port}/crl/{authority}.crl", timeout=5)
        assert served.headers["content-type"] == "application/pkix-crl"
        crl = x509.load_der_x509_crl(served.content)
        entry = crl.get_revoked_certificate_by_serial_number(int(minted["serial"], 16))
        assert entry is not None
        assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.key_compromise
        assert crl.public_bytes(serialization.Encoding.PEM).decode() in mesh.ca("crl", "show", "--authority", authority)
