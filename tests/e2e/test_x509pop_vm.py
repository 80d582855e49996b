"""VM onboarding with x509pop (issue 10): an agent on a brownfield "VM" (its own process and data
directory) proves possession of its enterprise host certificate's key, gets the agent ID the mapping
rules give it, and its workload gets an X509-SVID; an agent with a revoked certificate stops, saying
so. (The other refusals — expired, untrusted CA, over-long chain — are covered against the real node
API in tests/integration/ca/test_node_api_x509pop.py.)"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.enterprise_pki import EnterprisePki, HostFiles
from tests.support.mesh import TRUST_DOMAIN, Mesh
from tests.support.processes import background, command, run, wait_until

pytestmark = pytest.mark.e2e

VM_AGENT = f"spiffe://{TRUST_DOMAIN}/trustmesh/agent/x509pop/legacy/payments/web01"
APP = f"spiffe://{TRUST_DOMAIN}/payments/app"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, enterprise_pki: EnterprisePki) -> Iterator[Mesh]:
    """A CA trusting the enterprise root (and its CRL), with one mapping rule for the payments hosts;
    shared by this module's tests (each VM agent has its own data directory), as starting a CA costs."""
    mesh = Mesh(tmp_path_factory.mktemp("x509pop"))
    mesh.write_ca_config(
        f'[bridge]\ntrust_anchors = {{ corp = "{enterprise_pki.root}" }}\ncrls = ["{enterprise_pki.crl}"]\n'
    )
    with mesh.running_ca():
        mesh.ca("mapping", "add", "--name", "payments", "--dns", "*.payments.corp.example.com", "--spiffe-id",
                "/legacy/payments/{host}")  # fmt: skip
        (mesh.root / "bundle.pem").write_text(mesh.ca("bundle", "show", "--format", "pem"))
        yield mesh


def vm_agent_config(mesh: Mesh, host: HostFiles) -> Path:
    """The agent config of a VM whose enterprise certificate is ``host``: its own data directory."""
    config = mesh.root / f"{host.name}-agent.toml"
    config.write_text(
        f'trust_domain = "{TRUST_DOMAIN}"\nserver_address = "127.0.0.1:{mesh.node_port}"\n'
        f'attestation_address = "127.0.0.1:{mesh.attestation_port}"\n'
        f'trust_bundle_path = "{mesh.root / "bundle.pem"}"\nattestation = "x509pop"\n'
        f'data_dir = "{mesh.root / host.name}"\nsocket_dir = "{mesh.socket_dir}"\n'
        f'[x509pop]\ncert_file = "{host.chain}"\nkey_file = "{host.key}"\n'
    )
    return config


def test_a_vm_agent_attests_with_its_enterprise_cert_and_its_workload_gets_an_svid(
    mesh: Mesh, enterprise_pki: EnterprisePki, tmp_path: Path
) -> None:
    mesh.create_entry(APP, VM_AGENT, f"unix:uid:{os.getuid()}")

    with mesh.running_agent(vm_agent_config(mesh, enterprise_pki.web)):
        out = tmp_path / "svid"
        fetch = [command("trustmesh-agent"), "api", "--socket", str(mesh.workload_socket), "fetch", "x509"]
        wait_until(lambda: run([*fetch, "--out", str(out)]).returncode == 0, 20, "the workload's X509-SVID")

    assert f"attested as {VM_AGENT}" in mesh.log("agent.log")
    svid = run(["openssl", "x509", "-in", str(out / "svid.pem"), "-noout", "-ext", "subjectAltName"])
    assert f"URI:{APP}" in svid.stdout
    verify = run(["openssl", "verify", "-CAfile", str(out / "bundle.pem"), str(out / "svid.pem")])
    assert verify.returncode == 0, verify.stderr


def test_a_vm_agent_with_a_revoked_cert_stops_saying_it_is_revoked(mesh: Mesh, enterprise_pki: EnterprisePki) -> None:
    argv = [command("trustmesh-agent"), "--config", str(vm_agent_config(mesh, enterprise_pki.revoked)), "run"]
    with background(argv, mesh.root / "revoked.log") as agent:
        agent.wait(timeout=20)

    assert agent.returncode != 0
    assert "revoked: " in mesh.log("revoked.log")
