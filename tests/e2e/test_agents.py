"""Cutting agents off, as an operator does it: real ``trustmesh-ca run`` and ``trustmesh-agent run``
processes, driven through ``trustmesh-ca agent …`` and ``token generate`` (hardening issue items 3, 4)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mesh import Mesh
from tests.support.processes import command, run, wait_until

pytestmark = pytest.mark.e2e

NODE = "node-a"


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path)
    with mesh.running_ca():
        yield mesh


def agent_ids(mesh: Mesh) -> list[str]:
    return [agent["spiffe_id"] for agent in json.loads(mesh.ca("agent", "list", "--json"))]


def ca_fails(mesh: Mesh, *args: str) -> str:
    result = run([command("trustmesh-ca"), "--config", str(mesh.ca_config), *args])
    assert result.returncode == 1, result.stdout
    return result.stderr.strip()


def test_token_generate_for_an_attested_node_name_is_refused_naming_agent_evict(mesh: Mesh) -> None:
    token, agent_id = mesh.join_token(NODE)
    with mesh.running_agent(mesh.write_agent_config(token)):
        wait_until(lambda: agent_id in agent_ids(mesh), 10, "the agent to attest")
        error = ca_fails(mesh, "token", "generate", "--node-name", NODE)
    assert error.startswith(f"trustmesh-ca: error: agent {agent_id} is attested (its SVID is valid until ")
    assert f"evict it first with `trustmesh-ca agent evict {agent_id}`" in error


def test_ban_ends_the_running_agents_sync_stream_within_one_second(mesh: Mesh) -> None:
    token, agent_id = mesh.join_token(NODE)
    with mesh.running_agent(mesh.write_agent_config(token)):
        wait_until(lambda: agent_id in agent_ids(mesh), 10, "the agent to attest")
        time.sleep(1)  # the agent's Sync stream is open by now
        mesh.ca("agent", "ban", agent_id)
        banned_at = time.monotonic()
        wait_until(lambda: "is banned" in mesh.log("agent.log"), 5, "the agent to see its stream refused")
        elapsed = time.monotonic() - banned_at
    assert "sync stream with the CA failed (node API Sync at" in mesh.log("agent.log")
    assert elapsed < 1.0


def test_evict_forgets_the_agent_so_its_node_name_can_attest_again(mesh: Mesh) -> None:
    token, agent_id = mesh.join_token(NODE)
    with mesh.running_agent(mesh.write_agent_config(token)):
        wait_until(lambda: agent_id in agent_ids(mesh), 10, "the agent to attest")
        mesh.ca("agent", "evict", agent_id)
        assert agent_ids(mesh) == []
        wait_until(lambda: "is not known to this CA" in mesh.log("agent.log"), 5, "the agent to be refused")
    _, again = mesh.join_token(NODE)  # no --replace needed any more
    assert again == agent_id


def test_a_trust_domain_mismatch_leaves_the_join_token_unspent(mesh: Mesh, tmp_path: Path) -> None:
    token, agent_id = mesh.join_token(NODE)
    config = mesh.write_agent_config(token)
    wrong = tmp_path / "wrong-td.toml"
    wrong.write_text(config.read_text().replace('trust_domain = "example.org"', 'trust_domain = "prod.example"'))
    wrong.chmod(0o600)
    result = run([command("trustmesh-agent"), "--config", str(wrong), "run"], timeout=30)
    assert result.returncode == 1
    assert "the agent is configured for 'prod.example'" in result.stderr
    assert "(the join token was not sent)" in result.stderr
    with mesh.running_agent(config):  # the same token still attests
        wait_until(lambda: agent_id in agent_ids(mesh), 10, "the agent to attest with the unspent token")
