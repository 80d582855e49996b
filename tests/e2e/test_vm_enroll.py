"""VM onboarding (issue 10): ``trustmesh-bridge enroll`` against a running CA writes what config
management installs on a brownfield host, and that output boots a real agent that attests — with a
join token the CA issued for it, and with the host's enterprise certificate (x509pop). The systemd
unit it writes passes ``systemd-analyze verify``, and the Ansible playbook of docs/vm-onboarding.md
passes ``ansible-playbook --syntax-check``.

Each "VM" gets its own install paths under the test's directory (``--config-dir``, ``--state-dir``,
``--runtime-dir``), and the agent is started from the enrolled ``agent.toml`` as it is."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.enterprise_pki import EnterprisePki
from tests.support.mesh import TRUST_DOMAIN, Mesh
from tests.support.processes import command, run, wait_until

pytestmark = pytest.mark.e2e

APP = f"spiffe://{TRUST_DOMAIN}/payments/app"
X509POP_AGENT = f"spiffe://{TRUST_DOMAIN}/trustmesh/agent/x509pop/legacy/payments/web01"
JOIN_TOKEN_AGENT = f"spiffe://{TRUST_DOMAIN}/trustmesh/agent/join_token/vm-join"
GUIDE = Path(__file__).parents[2] / "docs" / "vm-onboarding.md"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, enterprise_pki: EnterprisePki) -> Iterator[Mesh]:
    """A CA trusting the enterprise root, with the payments mapping rule; shared by the module."""
    mesh = Mesh(tmp_path_factory.mktemp("enroll"))
    mesh.write_ca_config(f'[bridge]\ntrust_anchors = {{ corp = "{enterprise_pki.root}" }}\n')
    with mesh.running_ca():
        mesh.ca("mapping", "add", "--name", "payments", "--dns", "*.payments.corp.example.com", "--spiffe-id",
                "/legacy/payments/{host}")  # fmt: skip
        yield mesh


def enroll(mesh: Mesh, host: str, *method: str) -> Path:
    """``trustmesh-bridge enroll`` for ``host`` with install paths under ``mesh.root/host``; its output
    directory is the config directory, as if config management had copied it there."""
    vm = mesh.root / host
    argv = [
        command("trustmesh-bridge"), "enroll", "--host", host, *method, "--out", str(vm / "etc"),
        "--trust-domain", TRUST_DOMAIN, "--ca-config", str(mesh.ca_config),
        "--server-address", f"127.0.0.1:{mesh.node_port}",
        "--attestation-address", f"127.0.0.1:{mesh.attestation_port}",
        "--config-dir", str(vm / "etc"), "--state-dir", str(vm / "state"), "--runtime-dir", str(mesh.socket_dir),
        "--agent-bin", command("trustmesh-agent"),
    ]  # fmt: skip
    result = run(argv)
    assert result.returncode == 0, result.stderr
    return vm / "etc"


@pytest.fixture(scope="module")
def join_token_vm(mesh: Mesh) -> Path:
    return enroll(mesh, "vm-join", "--method", "join-token", "--token-ttl", "10m")


@pytest.fixture(scope="module")
def x509pop_vm(mesh: Mesh, enterprise_pki: EnterprisePki) -> Path:
    web = enterprise_pki.web
    return enroll(mesh, "web01", "--method", "x509pop", "--x509pop-cert", str(web.chain), "--x509pop-key", str(web.key))


def test_an_agent_enrolled_with_a_join_token_attests_as_the_host(mesh: Mesh, join_token_vm: Path) -> None:
    assert (join_token_vm / "join-token").stat().st_mode & 0o777 == 0o600

    with mesh.running_agent(join_token_vm / "agent.toml", log_name="join.log"):
        wait_until(lambda: f"attested as {JOIN_TOKEN_AGENT}" in mesh.log("join.log"), 20, "the agent to attest")


def test_an_agent_enrolled_with_x509pop_attests_and_its_workload_gets_an_svid(
    mesh: Mesh, x509pop_vm: Path, tmp_path: Path
) -> None:
    mesh.create_entry(APP, X509POP_AGENT, f"unix:uid:{os.getuid()}")

    with mesh.running_agent(x509pop_vm / "agent.toml", log_name="x509pop.log"):
        fetch = [command("trustmesh-agent"), "api", "--socket", str(mesh.workload_socket), "fetch", "x509"]
        wait_until(lambda: run([*fetch, "--out", str(tmp_path)]).returncode == 0, 20, "the workload's X509-SVID")

    assert f"attested as {X509POP_AGENT}" in mesh.log("x509pop.log")
    svid = run(["openssl", "x509", "-in", str(tmp_path / "svid.pem"), "-noout", "-ext", "subjectAltName"])
    assert f"URI:{APP}" in svid.stdout


@pytest.mark.parametrize("vm", ["join_token_vm", "x509pop_vm"])
def test_the_enrolled_systemd_unit_passes_systemd_analyze_verify(vm: str, request: pytest.FixtureRequest) -> None:
    unit = request.getfixturevalue(vm) / "trustmesh-agent.service"
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is missing: apt-get install systemd"

    result = run([analyze, "verify", str(unit)])

    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if unit.name in line] == []


def test_the_guides_ansible_playbook_passes_syntax_check(tmp_path: Path) -> None:
    blocks = re.findall(r"```yaml\n# playbook: (\S+)\n(.*?)```", GUIDE.read_text(), re.DOTALL)
    assert [name for name, _ in blocks] == ["onboard-vm.yml"]
    playbook = tmp_path / "onboard-vm.yml"
    playbook.write_text(blocks[0][1])

    result = run([command("ansible-playbook"), "--syntax-check", "-i", "web01,", str(playbook)])

    assert result.returncode == 0, result.stdout + result.stderr
