"""The agent accepts only ``spiffe://<td>/trustmesh/server`` as its CA, end to end: a rogue gRPC server
on loopback holding an X509-SVID that the real CA minted for another ID with the CA's DNS name
(``trustmesh-ca x509 mint --dns trustmesh-ca``) is refused by the real ``trustmesh-agent`` process —
at first contact (the agent exits with the trust failure) and on the node API (it keeps retrying, and
keeps serving what it holds)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from tests.support.mesh import TRUST_DOMAIN, Mesh
from tests.support.processes import command, free_port, run, wait_until

pytestmark = pytest.mark.e2e

IMPOSTOR = f"spiffe://{TRUST_DOMAIN}/web"
SERVER_ID = f"spiffe://{TRUST_DOMAIN}/trustmesh/server"
UID = f"unix:uid:{os.getuid()}"


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path)
    with mesh.running_ca():
        yield mesh


@pytest.fixture
def rogue(mesh: Mesh, tmp_path: Path) -> Iterator[int]:
    """A gRPC server on 127.0.0.1 serving an SVID of the trust domain, signed by the real CA, with the
    CA's DNS name; its port."""
    out = tmp_path / "rogue"
    mesh.ca("x509", "mint", "--spiffe-id", IMPOSTOR, "--dns", "trustmesh-ca", "--out", str(out))
    credentials = grpc.ssl_server_credentials([((out / "svid_key.pem").read_bytes(), (out / "svid.pem").read_bytes())])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_secure_port(f"127.0.0.1:{free_port()}", credentials)
    server.start()
    try:
        yield port
    finally:
        server.stop(None)


def refusal(port: int) -> str:
    return f"the CA at 127.0.0.1:{port} presented SPIFFE ID {IMPOSTOR}, not {SERVER_ID}"


def pointed_at(config: Path, key: str, port: int) -> Path:
    lines = [
        f'{key} = "127.0.0.1:{port}"' if line.startswith(f"{key} ") else line
        for line in config.read_text().splitlines()
    ]
    config.write_text("\n".join(lines) + "\n")
    return config


def test_a_new_agent_refuses_to_attest_with_an_impostor_and_exits(mesh: Mesh, rogue: int) -> None:
    token, _ = mesh.join_token()
    config = pointed_at(mesh.write_agent_config(token), "attestation_address", rogue)
    result = run([command("trustmesh-agent"), "--config", str(config), "run"], timeout=30)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"trustmesh-agent: error: {refusal(rogue)}; the agent talks only to its CA"), result.stderr
    assert "Traceback" not in result.stderr
    assert not (mesh.agent_dir / "agent.json").exists()


def test_an_attested_agent_refuses_an_impostor_node_api_and_keeps_serving(mesh: Mesh, rogue: int) -> None:
    token, agent_id = mesh.join_token()
    mesh.create_entry(f"spiffe://{TRUST_DOMAIN}/frontend", agent_id, UID)
    config = mesh.write_agent_config(token)
    with mesh.running_agent(config):  # the real CA: attested, SVIDs held
        wait_until((mesh.agent_dir / "workloads.json").exists, 15, "the agent to hold workload SVIDs")
    saved = (mesh.agent_dir / "workloads.json").read_bytes()
    pointed_at(config, "server_address", rogue)
    with mesh.running_agent(config, log_name="agent-misled.log"):
        wait_until(lambda: refusal(rogue) in mesh.log("agent-misled.log"), 15, "the agent to refuse the impostor")
        assert mesh.sds_socket.exists()  # still serving what it held
    assert f"sync stream with the CA failed ({refusal(rogue)}" in mesh.log("agent-misled.log")
    assert (mesh.agent_dir / "workloads.json").read_bytes() == saved
