"""What operators see of a scripted scenario, with real processes (issue 11 "Metrics and alerts", "Logs"):
a CA and an agent (JSON logs at debug level, the agent's health listener on), one attestation and
``ISSUED`` workload X509-SVIDs. The CA's counters and the agent's expiry gauges must agree with what was
issued; every metric the shipped alert rules name must exist on a real ``/metrics``; the logs must be
JSON, name the attestation and the issuance with their SPIFFE IDs, and never hold the join token or a
private key. One CA and one agent for the whole module."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client.parser import text_string_to_metric_families

from sds.persistence import AgentStore
from spiffe_core.keys import PrivateKey
from spiffe_core.spiffe_id import TrustDomain
from tests.support.mesh import TRUST_DOMAIN, Mesh
from tests.support.processes import command, free_port, run, wait_until
from tests.support.prometheus import exposed_names, metric_names_in_rules

pytestmark = pytest.mark.e2e

ISSUED = 4
WORKLOADS = [f"spiffe://{TRUST_DOMAIN}/obs/w{i}" for i in range(ISSUED)]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Scenario:
    mesh: Mesh
    agent_config: Path
    health_port: int
    token: str
    agent_id: str
    issued_before: float  # the CA's X509-SVID counter before the agent came (its own serving SVID)
    fetched: Path  # the workload SVIDs and keys, as the Workload API handed them out

    def ca_metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.mesh.http_port}/metrics", timeout=5).text

    def agent_metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.health_port}/metrics", timeout=5).text


def samples(exposition: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def value(exposition: str, name: str, **labels: str) -> float | None:
    return samples(exposition).get((name, tuple(sorted(labels.items()))))


def by_spiffe_id(exposition: str, name: str) -> dict[str, float]:
    return {dict(labels)["spiffe_id"]: v for (sample, labels), v in samples(exposition).items() if sample == name}


def create_entries(mesh: Mesh, parent_id: str) -> None:
    """The workloads' entries, over the admin socket in one client (the CLI would start a process each)."""
    transport = httpx.HTTPTransport(uds=str(mesh.root / "ca" / "admin.sock"))
    with httpx.Client(transport=transport, base_url="http://ca", timeout=10) as admin:
        for workload in WORKLOADS:
            body = {"spiffe_id": workload, "parent_id": parent_id, "selectors": [f"unix:uid:{os.getuid()}"]}
            reply = admin.post("/v1/entries", json=body)
            assert reply.status_code == 201, reply.text


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    root = tmp_path_factory.mktemp("obs")
    mesh = Mesh(root)
    mesh.write_ca_config()
    mesh.ca_config.write_text(mesh.ca_config.read_text() + 'log_level = "debug"\nlog_format = "json"\n')  # [server]
    with mesh.running_ca():
        ca_metrics = httpx.get(f"http://127.0.0.1:{mesh.http_port}/metrics", timeout=5).text
        issued_before = value(ca_metrics, "trustmesh_x509_svids_issued_total")
        assert issued_before is not None
        token, agent_id = mesh.join_token("obs-node")
        create_entries(mesh, agent_id)
        health_port = free_port()
        config = mesh.write_agent_config(token)
        config.write_text(
            config.read_text()
            + f'log_level = "debug"\nlog_format = "json"\n[health]\naddress = "127.0.0.1:{health_port}"\n'
        )
        with mesh.running_agent(config):

            def all_held() -> bool:
                try:
                    metrics = httpx.get(f"http://127.0.0.1:{health_port}/metrics", timeout=2).text
                except httpx.HTTPError:
                    return False
                return value(metrics, "trustmesh_agent_workload_svids") == ISSUED

            wait_until(all_held, 30, f"the agent to hold all {ISSUED} workload SVIDs")
            fetched = root / "fetched"
            argv = [command("trustmesh-agent"), "api", "--socket", str(mesh.workload_socket), "fetch", "x509"]
            result = run([*argv, "--out", str(fetched)])
            assert result.returncode == 0, result.stderr
            yield Scenario(mesh, config, health_port, token, agent_id, issued_before, fetched)


def fetched_certificates(scenario: Scenario) -> dict[str, x509.Certificate]:
    certs = {}
    for pem in scenario.fetched.glob("svid*.pem"):
        leaf = x509.load_pem_x509_certificates(pem.read_bytes())[0]
        uri = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        certs[uri.get_values_for_type(x509.UniformResourceIdentifier)[0]] = leaf
    return certs


# --- metrics agree with what was issued ---------------------------------------------------------------


def test_the_ca_counts_the_attestation_and_every_svid_it_issued(scenario: Scenario) -> None:
    ca = scenario.ca_metrics()
    assert value(ca, "trustmesh_x509_svids_issued_total") == scenario.issued_before + 1 + ISSUED  # agent + workloads
    assert value(ca, "trustmesh_node_attestations_total", method="join_token") == 1
    assert not [k for k in samples(ca) if k[0] == "trustmesh_issuance_errors_total"], "nothing was refused"
    assert value(ca, "trustmesh_sync_streams") == 1
    assert value(ca, "trustmesh_connected_agents") == 1


def test_the_ca_shows_its_active_authority_expiry_as_the_bundle_certificate_says(scenario: Scenario) -> None:
    # The bundle as `trustmesh-ca bundle show` printed it for the agent's trust_bundle_path.
    (root,) = x509.load_pem_x509_certificates((scenario.mesh.root / "bundle.pem").read_bytes())
    expiries = {
        dict(labels)["state"]: v
        for (name, labels), v in samples(scenario.ca_metrics()).items()
        if name == "trustmesh_authority_expiry_timestamp_seconds" and dict(labels)["kind"] == "x509"
    }
    assert expiries == {"active": root.not_valid_after_utc.timestamp()}


def test_the_agents_expiry_gauges_equal_the_issued_certificates_not_after(scenario: Scenario) -> None:
    agent = scenario.agent_metrics()
    issued = fetched_certificates(scenario)
    assert sorted(issued) == sorted(WORKLOADS)
    assert by_spiffe_id(agent, "trustmesh_agent_workload_svid_expiry_timestamp_seconds") == {
        spiffe_id: cert.not_valid_after_utc.timestamp() for spiffe_id, cert in issued.items()
    }
    assert value(agent, "trustmesh_agent_workload_svids") == ISSUED
    own = AgentStore(scenario.mesh.agent_dir, TrustDomain(TRUST_DOMAIN)).load_agent()
    assert own is not None
    assert by_spiffe_id(agent, "trustmesh_agent_svid_expiry_timestamp_seconds") == {
        scenario.agent_id: own.svid.leaf.not_valid_after_utc.timestamp()
    }
    assert value(agent, "trustmesh_agent_ready") == 1
    assert value(agent, "trustmesh_agent_ca_sync_connected") == 1


def test_every_metric_the_alert_rules_name_is_exported(scenario: Scenario) -> None:
    exported = exposed_names(scenario.ca_metrics()) | exposed_names(scenario.agent_metrics())
    assert sorted(metric_names_in_rules() - exported) == []


def test_the_healthcheck_command_says_ready(scenario: Scenario) -> None:
    result = run([command("trustmesh-agent"), "--config", str(scenario.agent_config), "healthcheck"])
    assert (result.returncode, result.stdout, result.stderr) == (0, "ready\n", "")


# --- logs ---------------------------------------------------------------------------------------------


def log_records(scenario: Scenario, name: str) -> list[dict[str, object]]:
    lines = (scenario.mesh.root / name).read_text().splitlines()
    assert lines, f"{name} is empty"
    return [json.loads(line) for line in lines]  # every line is one JSON object, or this fails


def audit_fields(scenario: Scenario, action: str) -> list[dict[str, object]]:
    return [
        record["fields"]  # type: ignore[misc]
        for record in log_records(scenario, "ca.log")
        if record["logger"] == "trustmesh.audit" and record["fields"]["action"] == action  # type: ignore[index]
    ]


def test_the_attestation_is_one_json_log_line_naming_the_agent(scenario: Scenario) -> None:
    (attested,) = audit_fields(scenario, "agent.attest")
    assert (attested["outcome"], attested["target"]) == ("ok", scenario.agent_id)
    assert attested["detail"]["method"] == "join_token"  # type: ignore[index]
    assert str(attested["actor"]).startswith("attestation:127.0.0.1")


def test_the_issuance_batches_are_json_log_lines_naming_every_spiffe_id(scenario: Scenario) -> None:
    batches = [f for f in audit_fields(scenario, "x509_svid.issue") if f["actor"] == scenario.agent_id]
    named = set()
    for batch in batches:
        detail = batch["detail"]
        named.update(detail.get("spiffe_ids", [batch["target"]]))  # type: ignore[union-attr]
    assert named == set(WORKLOADS)
    assert sum(int(b["detail"]["count"]) for b in batches) == ISSUED  # type: ignore[index]


def test_the_agent_logs_json_too(scenario: Scenario) -> None:
    messages = [str(record["message"]) for record in log_records(scenario, "agent.log")]
    assert any(m.startswith(f"attested as {scenario.agent_id}") for m in messages)


def key_fragments(key: PrivateKey) -> list[str]:
    """How a private key could show up in a log: its PEM lines, its DER in base64, its secret number."""
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    number = key.private_numbers().private_value  # type: ignore[union-attr]
    lines = [line for line in pem.decode().splitlines() if not line.startswith("-----")]
    return [*lines, base64.b64encode(der).decode(), format(number, "x"), str(number)]


def test_no_log_holds_the_join_token_or_a_private_key(scenario: Scenario) -> None:
    logs = (scenario.mesh.root / "ca.log").read_text() + (scenario.mesh.root / "agent.log").read_text()
    assert scenario.token not in logs
    store = AgentStore(scenario.mesh.agent_dir, TrustDomain(TRUST_DOMAIN))
    own, workloads = store.load_agent(), store.load_workloads()
    assert own is not None
    assert workloads is not None
    keys = [own.svid.private_key, *(held.private_key for held in workloads.svids)]
    assert len(keys) == 1 + ISSUED
    leaked = [fragment for key in keys for fragment in key_fragments(key) if fragment in logs]
    assert leaked == []
