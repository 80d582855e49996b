"""Legacy trust to proxies (issue 10 item 5), end to end: one CA serving the enterprise roots as
``[bridge] legacy_roots``, one agent, one real Envoy taking its SVID and ``legacy/corp`` over SDS.

* The Envoy originates TLS to a legacy server (Python ``ssl``, an enterprise host certificate) and
  verifies it through ``legacy/corp`` and its DNS name; a server with a certificate of the same name
  from an untrusted CA is refused.
* A replaced roots file on the CA reaches the running Envoy (CA -> Sync -> agent -> SDS) without a
  restart; so does the issuing CA's CRL added to it, after which the Envoy refuses the server whose
  certificate the CRL lists and still reaches the others.
* A legacy client trusting only the mesh bundle exported as PEM (``trustmesh-agent bundle show``)
  verifies the Envoy's SVID by the DNS name its registration entry carries, and gets an answer.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sds.envoy_bootstrap import LegacyInbound, LegacyOutbound, envoy_bootstrap
from spiffe_core.spiffe_id import TrustDomain
from tests.support.enterprise_pki import EnterprisePki, Issuer, enterprise_crl
from tests.support.envoy import Envoy, running_envoy
from tests.support.files import replace_file
from tests.support.legacy_tls import legacy_get, legacy_https_server
from tests.support.mesh import TRUST_DOMAIN, Mesh
from tests.support.processes import command, free_port, run, wait_until

pytestmark = pytest.mark.e2e

PROXY = f"spiffe://{TRUST_DOMAIN}/payments/proxy"
PROXY_DNS = "payments-api.example.org"  # what legacy clients call the mesh service by
LEGACY_NAME = "web01.payments.corp.example.com"  # both legacy servers' certificates carry it
PUSH_TIMEOUT = 15.0  # the CA checks the file every second; then Sync, snapshot and SDS push


@dataclass(frozen=True)
class Setup:
    mesh: Mesh
    envoy: Envoy
    roots_file: Path
    trusted_port: int  # Envoy's plain-HTTP listener for the legacy server the enterprise CA vouches for
    untrusted_port: int  # ... for the one whose certificate comes from an untrusted CA
    revoked_port: int  # ... for the one whose certificate the enterprise CRL lists
    deep_port: int  # ... for one whose issuing CA (four below the root) publishes no CRL here
    legacy_inbound_port: int  # Envoy's TLS listener for legacy clients
    agent_config: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, enterprise_pki: EnterprisePki) -> Iterator[Setup]:
    """Started once for the module: a CA, an agent and Envoy cost seconds; each test reads, and the one
    that replaces the roots file puts it back."""
    root = tmp_path_factory.mktemp("legacy")
    mesh = Mesh(root)
    roots_file = root / "corp-roots.pem"
    roots_file.write_bytes(enterprise_pki.root.read_bytes())
    mesh.write_ca_config(f'[bridge]\nlegacy_roots = {{ corp = "{roots_file}" }}\nlegacy_roots_check_interval = "1s"\n')
    web, rogue, stolen, deep = (
        enterprise_pki.web,
        enterprise_pki.untrusted,
        enterprise_pki.revoked,
        enterprise_pki.long_chain,
    )
    with (
        mesh.running_ca(),
        legacy_https_server(web.chain, web.key, b"legacy web01\n") as trusted_server,
        legacy_https_server(rogue.chain, rogue.key, b"impostor\n") as untrusted_server,
        legacy_https_server(stolen.chain, stolen.key, b"stolen01\n") as revoked_server,
        legacy_https_server(deep.chain, deep.key, b"deep01\n") as deep_server,
    ):
        token, agent_id = mesh.join_token()
        mesh.ca("entry", "create", "--spiffe-id", PROXY, "--parent-id", agent_id, "--selector",
                f"unix:uid:{os.getuid()}", "--dns", PROXY_DNS)  # fmt: skip
        agent_config = mesh.write_agent_config(token)
        ports = free_port(), free_port(), free_port(), free_port(), free_port()
        bootstrap = envoy_bootstrap(
            node_id="payments",
            spiffe_id=PROXY,
            trust_domain=TrustDomain(TRUST_DOMAIN),
            sds_socket=mesh.sds_socket,
            admin_port=0,
            legacy_outbound=(
                LegacyOutbound(ports[0], f"127.0.0.1:{trusted_server}", "corp", LEGACY_NAME),
                LegacyOutbound(ports[1], f"127.0.0.1:{untrusted_server}", "corp", LEGACY_NAME),
                LegacyOutbound(ports[2], f"127.0.0.1:{revoked_server}", "corp", stolen.dns_names[0]),
                LegacyOutbound(ports[3], f"127.0.0.1:{deep_server}", "corp", deep.dns_names[0]),
            ),
            legacy_inbound=LegacyInbound(ports[4]),
        )
        with mesh.running_agent(agent_config), running_envoy(bootstrap, root, "envoy", ready_timeout=20) as envoy:
            yield Setup(mesh, envoy, roots_file, *ports, agent_config)


def get_through(port: int) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}/", timeout=5)


def test_envoy_reaches_a_legacy_server_verified_by_enterprise_roots_and_dns_name(setup: Setup) -> None:
    reply = get_through(setup.trusted_port)

    assert (reply.status_code, reply.text) == (200, "legacy web01\n")


def test_envoy_refuses_a_legacy_server_whose_certificate_an_untrusted_ca_issued(setup: Setup) -> None:
    reply = get_through(setup.untrusted_port)

    assert reply.status_code == 503
    refused = setup.envoy.counters(f"cluster.legacy_{setup.untrusted_port}.ssl.fail_verify_error")
    assert sum(refused.values()) >= 1


def test_a_replaced_roots_file_reaches_the_running_envoy(setup: Setup, enterprise_pki: EnterprisePki) -> None:
    def untrusted_server_answers() -> bool:
        return get_through(setup.untrusted_port).status_code == 200

    original = setup.roots_file.read_bytes()
    replace_file(setup.roots_file, original + enterprise_pki.untrusted_root.read_bytes())
    try:
        wait_until(untrusted_server_answers, PUSH_TIMEOUT, "Envoy to trust the root added to the CA's file")
    finally:
        replace_file(setup.roots_file, original)
        wait_until(lambda: not untrusted_server_answers(), PUSH_TIMEOUT, "Envoy to drop the root again")


@contextmanager
def roots_file_with(setup: Setup, extra: bytes) -> Iterator[None]:
    """The CA's roots file with ``extra`` appended for the block, then as it was, each change waited
    for at the Envoy (through the server the enterprise CRL lists, which answers only without it)."""
    original = setup.roots_file.read_bytes()
    replace_file(setup.roots_file, original + extra)
    try:
        yield
    finally:
        replace_file(setup.roots_file, original)
        wait_until(lambda: answers(setup.revoked_port), PUSH_TIMEOUT, "Envoy to drop the CRL again")


def answers(port: int) -> bool:
    return get_through(port).status_code == 200


def test_the_issuing_cas_crl_added_to_the_roots_file_has_envoy_refuse_the_server_it_lists(
    setup: Setup, enterprise_pki: EnterprisePki
) -> None:
    """Before: nothing tells Envoy the certificate is revoked. After: the CRL reaches the running Envoy
    with the roots, the listed server is refused, and a server the CRL does not list still answers."""
    assert answers(setup.revoked_port)
    with roots_file_with(setup, enterprise_pki.crl.read_bytes()):
        wait_until(lambda: not answers(setup.revoked_port), PUSH_TIMEOUT, "Envoy to refuse the server the CRL lists")
        refused = setup.envoy.counters(f"cluster.legacy_{setup.revoked_port}.ssl.fail_verify_error")
        assert sum(refused.values()) >= 1
        assert answers(setup.trusted_port)


def test_with_crls_in_a_set_a_server_whose_issuer_has_none_there_is_refused(
    setup: Setup, enterprise_pki: EnterprisePki
) -> None:
    """Fail closed, as Envoy's validator does: once a set holds CRLs, each server's issuing CA needs one."""
    assert answers(setup.deep_port)
    with roots_file_with(setup, enterprise_pki.crl.read_bytes()):
        wait_until(lambda: not answers(setup.revoked_port), PUSH_TIMEOUT, "the CRL to reach Envoy")
        assert not answers(setup.deep_port)
        assert answers(setup.trusted_port)


def test_a_crl_past_its_next_update_has_envoy_refuse_every_server_its_ca_issued(
    setup: Setup, enterprise_pki: EnterprisePki
) -> None:
    key = serialization.load_pem_private_key((enterprise_pki.directory / "intermediate.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    issuing = Issuer(x509.load_pem_x509_certificate(enterprise_pki.intermediate.read_bytes()), key)
    stale = enterprise_crl(issuing, (), next_update=-timedelta(days=1)).public_bytes(serialization.Encoding.PEM)
    with roots_file_with(setup, stale):
        wait_until(lambda: not answers(setup.trusted_port), PUSH_TIMEOUT, "Envoy to refuse under the stale CRL")
        assert not answers(setup.revoked_port)
    assert answers(setup.trusted_port)


def test_a_legacy_client_trusting_the_exported_mesh_bundle_verifies_envoy_by_dns_name(
    setup: Setup, tmp_path: Path
) -> None:
    exported = tmp_path / "mesh-bundle.pem"
    result = run([command("trustmesh-agent"), "--config", str(setup.agent_config), "bundle", "show", "--out",
                  str(exported)])  # fmt: skip
    assert result.returncode == 0, result.stderr

    status, body = legacy_get(setup.legacy_inbound_port, exported, PROXY_DNS)

    assert (status, body) == (200, f"hello from {PROXY}\n".encode())


def test_a_legacy_client_refuses_the_envoy_under_a_name_its_svid_does_not_carry(setup: Setup) -> None:
    ca_export = setup.mesh.root / "bundle.pem"  # `trustmesh-ca bundle show --format pem`, for the agent's config

    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        legacy_get(setup.legacy_inbound_port, ca_export, "billing-api.example.org")
