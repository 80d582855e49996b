"""The product end to end, as an operator runs it: real CA and agent processes, real Envoys taking
certificates over SDS, requests over mTLS on loopback. Covers DESIGN §4 and the node-agent issue's
acceptance list (rotation under load, CA outage, join-token reuse, unknown trust domains)."""

from __future__ import annotations

import json
import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from sds.envoy_bootstrap import Inbound, Outbound, envoy_bootstrap
from spiffe_core.spiffe_id import TrustDomain
from tests.support.envoy import running_envoy
from tests.support.mesh import TRUST_DOMAIN, Mesh
from tests.support.processes import command, free_port, run, wait_until
from tests.support.sds_snapshots import TestCa

pytestmark = pytest.mark.e2e

FRONTEND = f"spiffe://{TRUST_DOMAIN}/frontend"
BACKEND = f"spiffe://{TRUST_DOMAIN}/backend"
UID = f"unix:uid:{os.getuid()}"


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path)
    with mesh.running_ca():
        yield mesh


def start_agent(mesh: Mesh, x509_ttl: str | None = None) -> tuple[Path, str]:
    token, agent_id = mesh.join_token()
    for workload in (FRONTEND, BACKEND):
        mesh.create_entry(workload, agent_id, UID, x509_ttl=x509_ttl)
    return mesh.write_agent_config(token), agent_id


def envoy_pair(mesh: Mesh) -> tuple[dict[str, object], dict[str, object], int, int]:
    backend_port, frontend_port = free_port(), free_port()
    backend = envoy_bootstrap(
        node_id="backend",
        spiffe_id=BACKEND,
        trust_domain=TrustDomain(TRUST_DOMAIN),
        sds_socket=mesh.sds_socket,
        admin_port=0,
        inbound=Inbound(backend_port, (FRONTEND,)),
    )
    frontend = envoy_bootstrap(
        node_id="frontend",
        spiffe_id=FRONTEND,
        trust_domain=TrustDomain(TRUST_DOMAIN),
        sds_socket=mesh.sds_socket,
        admin_port=0,
        outbound=Outbound(frontend_port, f"127.0.0.1:{backend_port}", BACKEND),
    )
    return backend, frontend, backend_port, frontend_port


def get_through(port: int) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}/", timeout=5)


def wait_for_mtls(port: int) -> None:
    def ok() -> bool:
        try:
            return get_through(port).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ok, 15, "a request through the Envoys to succeed")


def test_two_envoys_do_mtls_on_agent_svids(mesh: Mesh, tmp_path: Path) -> None:
    config, _ = start_agent(mesh)
    backend, frontend, _, frontend_port = envoy_pair(mesh)
    with (
        mesh.running_agent(config),
        running_envoy(backend, tmp_path, "backend"),
        running_envoy(frontend, tmp_path, "frontend"),
    ):
        wait_for_mtls(frontend_port)
        reply = get_through(frontend_port)
        assert reply.status_code == 200
        assert reply.headers["x-peer-spiffe-id"] == FRONTEND
        assert reply.text.strip() == f"hello from {BACKEND}"


def _tls_client(cert: Path, key: Path, bundle: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(bundle))
    context.check_hostname = False  # SVIDs carry SPIFFE IDs, not host names
    context.load_cert_chain(str(cert), str(key))
    return context


def test_backend_refuses_a_peer_from_an_unknown_trust_domain(mesh: Mesh, tmp_path: Path) -> None:
    config, _ = start_agent(mesh)
    backend, _, backend_port, _ = envoy_pair(mesh)
    foreign = TestCa.create("other.org").svid("/frontend")
    (tmp_path / "foreign.pem").write_bytes(foreign.cert_chain[0].public_bytes(serialization.Encoding.PEM))
    (tmp_path / "foreign-key.pem").write_bytes(
        foreign.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with mesh.running_agent(config), running_envoy(backend, tmp_path, "backend") as envoy:
        wait_until(lambda: bool(envoy.certificate_serials()), 15, "backend Envoy to get its SVID")
        context = _tls_client(tmp_path / "foreign.pem", tmp_path / "foreign-key.pem", mesh.root / "bundle.pem")
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"https://127.0.0.1:{backend_port}/", verify=context, timeout=5)
        assert sum(envoy.counters("ssl.fail_verify_error").values()) >= 1


def test_backend_refuses_an_svid_of_its_own_trust_domain_that_it_does_not_allow(mesh: Mesh, tmp_path: Path) -> None:
    config, _ = start_agent(mesh)
    backend, _, backend_port, _ = envoy_pair(mesh)
    mesh.ca("x509", "mint", "--spiffe-id", f"spiffe://{TRUST_DOMAIN}/intruder", "--out", str(tmp_path / "intruder"))
    with mesh.running_agent(config), running_envoy(backend, tmp_path, "backend") as envoy:
        wait_until(lambda: bool(envoy.certificate_serials()), 15, "backend Envoy to get its SVID")
        context = _tls_client(
            tmp_path / "intruder" / "svid.pem",
            tmp_path / "intruder" / "svid_key.pem",
            tmp_path / "intruder" / "bundle.pem",
        )
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"https://127.0.0.1:{backend_port}/", verify=context, timeout=5)


def test_rotation_of_30_second_svids_under_load_fails_no_request(mesh: Mesh, tmp_path: Path) -> None:
    """...and the two workloads' SVIDs, whose rotation times jitter apart, rotate in one call each time
    (docs/agent.md: rotation near, signed along): every issuance the CA audited for the agent holds both."""
    config, agent_id = start_agent(mesh, x509_ttl="30s")
    backend, frontend, _, frontend_port = envoy_pair(mesh)
    with (
        mesh.running_agent(config),
        running_envoy(backend, tmp_path, "backend") as backend_envoy,
        running_envoy(frontend, tmp_path, "frontend"),
    ):
        wait_for_mtls(frontend_port)
        first_serials = backend_envoy.certificate_serials()
        results: list[int | str] = []
        deadline = time.monotonic() + 60
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline and len(results) < 20_000:
                try:
                    results.append(client.get(f"http://127.0.0.1:{frontend_port}/").status_code)
                except httpx.HTTPError as err:
                    results.append(type(err).__name__)
                time.sleep(0.01)
        failures = [r for r in results if r != 200]
        assert len(results) > 1000
        assert failures == []
        assert backend_envoy.certificate_serials().isdisjoint(first_serials)
    issued = json.loads(mesh.ca("audit", "list", "--json", "--actor", agent_id, "--action", "x509_svid.issue"))
    assert len(issued) >= 3  # the first signing and at least two rotations in the minute
    assert [record["detail"]["count"] for record in issued] == [2] * len(issued)


def fetch_secret(socket_path: Path, name: str) -> discovery_pb2.DiscoveryResponse:
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
        return stub.FetchSecrets(discovery_pb2.DiscoveryRequest(resource_names=[name]), timeout=5)


def test_ca_outage_keeps_envoys_serving_and_the_agent_resumes_after_restart(mesh: Mesh, tmp_path: Path) -> None:
    config, agent_id = start_agent(mesh)
    backend, frontend, _, frontend_port = envoy_pair(mesh)
    with (
        mesh.running_agent(config),
        running_envoy(backend, tmp_path, "backend"),
        running_envoy(frontend, tmp_path, "frontend"),
    ):
        wait_for_mtls(frontend_port)
        ca = mesh.processes["ca"]
        ca.terminate()
        ca.wait(timeout=10)
        for _ in range(20):
            assert get_through(frontend_port).status_code == 200
        assert fetch_secret(mesh.sds_socket, FRONTEND).resources, "the agent stopped serving its cached SVID"
        with mesh.running_ca(log_name="ca-restarted.log"):
            late = f"spiffe://{TRUST_DOMAIN}/late"
            mesh.create_entry(late, agent_id, UID)

            def has_late() -> bool:
                try:
                    return bool(fetch_secret(mesh.sds_socket, late).resources)
                except grpc.RpcError:
                    return False

            wait_until(has_late, 60, "the agent to resume its CA stream and sign the new entry")
            assert mesh.processes["agent"].poll() is None
            assert get_through(frontend_port).status_code == 200


def test_a_used_join_token_is_refused_to_a_second_agent(mesh: Mesh, tmp_path: Path) -> None:
    config, _ = start_agent(mesh)
    with mesh.running_agent(config):
        second = mesh.write_agent_config(
            token=_token_of(config),
            path=tmp_path / "agent2.toml",
            data_dir=tmp_path / "agent2",
            socket_dir=tmp_path / "run2",
        )
        result = run([command("trustmesh-agent"), "--config", str(second), "run"], timeout=30)
    assert result.returncode == 1
    assert "join token unknown, used or expired" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("trustmesh-agent: error:")
    assert "Traceback" not in result.stderr


def _token_of(config: Path) -> str:
    for line in config.read_text().splitlines():
        if line.startswith("join_token"):
            return line.split('"')[1]
    raise AssertionError("no join_token in the agent config")


def test_the_quickstart_brings_up_envoys_doing_mtls(tmp_path: Path) -> None:
    base = 21000 + (os.getpid() % 200) * 50
    result = run(
        [
            str(Path(__file__).parents[2] / "scripts" / "quickstart"),
            "--check",
            "--dir",
            str(tmp_path),
            "--port-base",
            str(base),
        ],
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"backend saw peer {FRONTEND}" in result.stdout
