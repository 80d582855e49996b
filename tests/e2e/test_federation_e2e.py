"""Two trust domains federated end to end (issue 9's acceptance list), as an operator runs them: two CAs
(a.test and b.test), an agent and a real Envoy in each, on loopback. A fetches B's bundle over
``https_spiffe`` (authenticated with B's bootstrap bundle); B fetches A's over ``https_web`` (a Web PKI
certificate from a throwaway root B trusts through ``federation.web_ca_file``).

Each Envoy presents ``spiffe://<td>/web``, takes mTLS on an inbound port from the other trust domain's
web (and its own trust domain), and forwards plain HTTP from an outbound port to the other's inbound
port, a new TLS handshake per request, so every request is verified with the bundles of that moment.

One setup for the module (processes are slow to start); every test leaves it serving. A's CA refreshes
B every second (B's refresh hint), so A follows B through outages and rotations within seconds; B's CA
refreshes A only once a minute, so a brand-new key of A can reach B within the module only through the
refresh on an unknown key (the node API's ``RefreshFederatedBundle``).

B's emergency rotation without failed requests is prepare, activate, taint: the new authority is in
B's bundle before it signs. ``authority rotate --now`` activates a key no partner holds yet: A refuses
B's new SVIDs until its next fetch, which still succeeds because B's endpoint keeps presenting an SVID
A can verify (docs/federation.md, "Emergency rotation with partners").
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca.authority import authority_id_for
from ca.config import load_config
from ca.keys import open_key_manager
from sds.workload_api import CallerBundles
from sds.workload_client import WorkloadApiClient
from spiffe_core.bundle import Bundle
from spiffe_core.errors import X509SvidError
from spiffe_core.jwt_svid import parse_jwt_svid_insecure
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import verify_x509_svid, x509_svid_template
from tests.support.envoy import Envoy, one_request_per_upstream_connection, running_envoy
from tests.support.mesh import Mesh
from tests.support.processes import command, free_port, restartable_port, run
from tests.support.tls_peer import client_context, connects
from tests.support.traffic import continuous_requests
from tests.support.web_pki import write_web_pki
from wire import workload_pb2, workload_pb2_grpc

pytestmark = pytest.mark.e2e

A, B = "a.test", "b.test"
A_WEB, B_WEB = f"spiffe://{A}/web", f"spiffe://{B}/web"
A_LONER = f"spiffe://{A}/loner"  # a workload of A whose entry federates with nobody
LONER_GID = 4242
GID = os.getgid()  # the test process and the Envoys: both sides' web workloads
HEADER = (("workload.spiffe.io", "true"),)
PYSPIFFE_CLIENT = str(Path(__file__).parents[1] / "support" / "pyspiffe_workload_client.py")
BOUND = 15.0  # seconds: the most any single wait in this module may take


@dataclass
class Side:
    """One trust domain: its CA and agent (``mesh``), its Envoy and that Envoy's ports."""

    mesh: Mesh
    endpoint_port: int
    inbound_port: int
    outbound_port: int
    envoy: Envoy | None = None

    @property
    def name(self) -> str:
        return self.mesh.trust_domain

    def admin(self) -> httpx.Client:
        transport = httpx.HTTPTransport(uds=str(self.mesh.root / "ca" / "admin.sock"))
        return httpx.Client(transport=transport, base_url="http://trustmesh-ca", timeout=10)

    def status(self, partner: str) -> dict[str, Any]:
        """This CA's relationship with ``partner``, status included (as ``federation show --json``)."""
        with self.admin() as admin:
            reply: dict[str, Any] = admin.get(f"/v1/federation/relationships/{partner}").raise_for_status().json()
        return reply

    def bundle_sequence(self) -> int:
        with self.admin() as admin:
            sequence: int = admin.get("/v1/bundle").raise_for_status().json()["spiffe_sequence"]
        return sequence

    def get(self) -> httpx.Response:
        """A request from this side's web to the partner's web, through both Envoys."""
        return httpx.get(f"http://127.0.0.1:{self.outbound_port}/", timeout=5)


@dataclass
class Federation:
    a: Side
    b: Side
    stack: ExitStack
    root: Path


def poll(read: Callable[[], Any], done: Callable[[Any], bool], what: str, timeout: float = BOUND) -> Any:
    """``read()`` until ``done`` holds for its value (bounded); returns that value."""
    deadline = time.monotonic() + timeout
    value = read()
    while not done(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {value}")
        time.sleep(0.1)
        value = read()
    return value


def ca_config(web_config: str, endpoint_port: int, fetch_every: str) -> str:
    return (
        f'[bundle]\nrefresh_hint = "1s"\n[federation]\nbundle_endpoint_address = "127.0.0.1:{endpoint_port}"\n'
        f'{web_config}min_refresh = "{fetch_every}"\nmax_refresh = "{fetch_every}"\nfetch_timeout = "2s"\n'
        'unknown_key_refresh_interval = "1s"\n'
    )


def envoy_config(side: Side, agent_config: Path, partner: Side, allow: list[str]) -> dict[str, Any]:
    """The bootstrap ``trustmesh-agent envoy-bootstrap`` writes for this side's web."""
    generated = run(
        [
            command("trustmesh-agent"), "--config", str(agent_config), "envoy-bootstrap",
            "--spiffe-id", f"spiffe://{side.name}/web", "--admin-port", "0",
            "--inbound-port", str(side.inbound_port), *allow,
            "--outbound-port", str(side.outbound_port), "--upstream", f"127.0.0.1:{partner.inbound_port}",
            "--upstream-id", f"spiffe://{partner.name}/web",
        ]
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    bootstrap: dict[str, Any] = json.loads(generated.stdout)
    one_request_per_upstream_connection(bootstrap)
    return bootstrap


def start_agent(side: Side, *entries: tuple[str, str, list[str]]) -> Path:
    """Attest an agent for ``side`` with these (SPIFFE ID, selector, federates_with) entries."""
    token, agent_id = side.mesh.join_token()
    for spiffe_id, selector, federates_with in entries:
        side.mesh.create_entry(spiffe_id, agent_id, selector, federates_with=federates_with)
    return side.mesh.write_agent_config(token)


@pytest.fixture(scope="module")
def federation() -> Iterator[Federation]:
    with federated() as running:
        yield running


@contextlib.contextmanager
def federated(b_config: str = "") -> Iterator[Federation]:
    """A and B federated and serving, requests succeeding both ways; ``b_config`` is added to B's CA
    configuration (TOML tables other than ``[bundle]`` and ``[federation]``)."""
    root = Path(tempfile.mkdtemp(prefix="tm-fed-", dir="/tmp"))  # short: Unix socket paths
    a = Side(Mesh(root / "a", trust_domain=A), free_port(), free_port(), free_port())
    # B's CA is stopped and started again: its ports must not be ones the traffic's connections may take.
    b_ca = Mesh(
        root / "b",
        http_port=restartable_port(),
        node_port=restartable_port(),
        attestation_port=restartable_port(),
        trust_domain=B,
    )
    b = Side(b_ca, restartable_port(), free_port(), free_port())
    web = write_web_pki(root / "web")
    a.mesh.root.mkdir()
    b.mesh.root.mkdir()
    a.mesh.write_ca_config(
        ca_config(
            f'bundle_endpoint_profile = "https_web"\nbundle_endpoint_cert_file = "{web.cert_file}"\n'
            f'bundle_endpoint_key_file = "{web.key_file}"\n',
            a.endpoint_port,
            "1s",
        )
    )
    b.mesh.write_ca_config(
        ca_config(f'bundle_endpoint_profile = "https_spiffe"\nweb_ca_file = "{web.root_file}"\n', b.endpoint_port, "1m")
        + b_config
    )
    with ExitStack() as stack:
        stack.enter_context(a.mesh.running_ca())
        stack.enter_context(b.mesh.running_ca())
        # A: B's endpoint is authenticated with B's bundle, handed over out of band.
        (root / "b.bundle.json").write_text(b.mesh.ca("bundle", "show", "--format", "spiffe"))
        a.mesh.ca(
            "federation", "create", B, "--url", f"https://127.0.0.1:{b.endpoint_port}/", "--profile", "https_spiffe",
            "--endpoint-spiffe-id", f"spiffe://{B}/trustmesh/server", "--bundle-file", str(root / "b.bundle.json"),
        )  # fmt: skip
        b.mesh.ca("federation", "create", A, "--url", f"https://localhost:{a.endpoint_port}/", "--profile", "https_web")
        a_agent = start_agent(a, (A_WEB, f"unix:gid:{GID}", [B]), (A_LONER, f"unix:gid:{LONER_GID}", []))
        b_agent = start_agent(b, (B_WEB, f"unix:gid:{GID}", [A]))
        stack.enter_context(a.mesh.running_agent(a_agent))
        stack.enter_context(b.mesh.running_agent(b_agent))
        # A allows B's web and its own trust domain; B allows A's whole (federated) trust domain by name.
        a_bootstrap = envoy_config(a, a_agent, b, ["--allow", B_WEB, "--allow-trust-domain"])
        b_bootstrap = envoy_config(b, b_agent, a, ["--allow-trust-domain", A])
        a.envoy = stack.enter_context(running_envoy(a_bootstrap, root, "a-envoy", ready_timeout=BOUND))
        b.envoy = stack.enter_context(running_envoy(b_bootstrap, root, "b-envoy", ready_timeout=BOUND))
        for side in (a, b):
            poll(lambda s=side: _status_code(s), lambda code: code == 200, f"a request from {side.name}'s web")
        yield Federation(a, b, stack, root)
    shutil.rmtree(root, ignore_errors=True)


def _status_code(side: Side) -> int | str:
    try:
        return side.get().status_code
    except httpx.HTTPError as err:
        return type(err).__name__


def validate(socket: Path, token: str, audience: str) -> str:
    """ValidateJWTSVID on the agent at ``socket``, as the test process (a web workload); the SPIFFE ID."""
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        reply = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel).ValidateJWTSVID(
            workload_pb2.ValidateJWTSVIDRequest(audience=audience, svid=token), metadata=HEADER, timeout=BOUND
        )
    return str(reply.spiffe_id)


def jwt_of(side: Side, audience: str) -> str:
    ((_, token),) = WorkloadApiClient(side.mesh.workload_socket).fetch_jwt_svids([audience])
    return token


# --- mTLS across the trust domains ---------------------------------------------------------------------


def test_requests_succeed_from_a_to_b_and_from_b_to_a_each_profile_used_once(federation: Federation) -> None:
    a, b = federation.a, federation.b
    to_b, to_a = a.get(), b.get()
    assert (to_b.status_code, to_b.headers["x-peer-spiffe-id"], to_b.text) == (200, A_WEB, f"hello from {B_WEB}\n")
    assert (to_a.status_code, to_a.headers["x-peer-spiffe-id"], to_a.text) == (200, B_WEB, f"hello from {A_WEB}\n")
    a_of_b, b_of_a = a.status(B), b.status(A)
    assert (a_of_b["profile"], a_of_b["last_error"]) == ("https_spiffe", "")
    assert (b_of_a["profile"], b_of_a["last_error"]) == ("https_web", "")
    assert a_of_b["last_success_at"] is not None
    assert b_of_a["last_success_at"] is not None


def test_the_agent_hands_each_trust_domain_its_own_bundle(federation: Federation) -> None:
    bundles = WorkloadApiClient(federation.a.mesh.workload_socket).fetch_x509_bundles()
    a_spiffe = json.loads(federation.a.mesh.ca("bundle", "show", "--format", "spiffe"))
    b_spiffe = json.loads(federation.b.mesh.ca("bundle", "show", "--format", "spiffe"))
    assert bundles == {
        f"spiffe://{A}": Bundle.parse_jwks(TrustDomain(A), a_spiffe).x509_authorities,
        f"spiffe://{B}": Bundle.parse_jwks(TrustDomain(B), b_spiffe).x509_authorities,
    }


# --- cross-domain impersonation ------------------------------------------------------------------------


def forge_with_bs_authority(b: Side, spiffe_id: str, out: Path) -> Path:
    """A certificate for ``spiffe_id`` signed with the key of B's active X.509 authority — what an
    attacker holding B's CA key (or a malicious B) can make — written as ``x509 mint --out`` writes."""
    config = load_config(b.mesh.ca_config, {})
    with b.admin() as admin:
        (active,) = [
            x
            for x in admin.get("/v1/authorities").raise_for_status().json()["authorities"]
            if x["kind"] == "x509" and x["state"] == "active"
        ]
    keys = open_key_manager(config.ca.key_manager, config.server.data_dir)
    (authority_key,) = [
        key for ref, _ in keys.list() if authority_id_for((key := keys.get(ref)).public_key()) == active["id"]
    ]
    issuer = x509.load_pem_x509_certificate(active["certificate_pem"].encode())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    leaf = x509_svid_template(
        spiffe_id=SpiffeId.parse(spiffe_id),
        public_key=leaf_key.public_key(),
        issuer=issuer,
        not_before=now - timedelta(minutes=1),
        not_after=now + timedelta(hours=1),
    ).builder.sign(authority_key, hashes.SHA256())
    out.mkdir()
    (out / "svid.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (out / "svid_key.pem").write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (out / "bundle.pem").write_bytes(issuer.public_bytes(serialization.Encoding.PEM))
    return out


def verify_failures(envoy: Envoy) -> int:
    return sum(v for k, v in envoy.counters("ssl.fail_verify_error").items() if k.startswith("listener."))


def test_a_certificate_of_bs_ca_carrying_an_a_spiffe_id_is_refused_by_as_envoy_and_our_validation(
    federation: Federation,
) -> None:
    a, b = federation.a, federation.b
    assert a.envoy is not None
    forged = forge_with_bs_authority(b, A_WEB, federation.root / "forged")
    genuine = federation.root / "genuine"
    b.mesh.ca("x509", "mint", "--spiffe-id", B_WEB, "--out", str(genuine))
    refused_before = verify_failures(a.envoy)

    assert connects(a.inbound_port, client_context(genuine))  # B's own IDs from B's CA pass
    assert not connects(a.inbound_port, client_context(forged))
    assert verify_failures(a.envoy) == refused_before + 1  # refused by the SPIFFE validator, not the SAN match

    held = WorkloadApiClient(a.mesh.workload_socket).fetch_x509_bundles()  # what A's workload trusts
    by_trust_domain = {TrustDomain(td_id.removeprefix("spiffe://")): certs for td_id, certs in held.items()}
    bundles = CallerBundles({td: Bundle(td, certs) for td, certs in by_trust_domain.items()})
    chain = tuple(x509.load_pem_x509_certificates((forged / "svid.pem").read_bytes()))
    with pytest.raises(X509SvidError):
        verify_x509_svid(chain, bundles, datetime.now(UTC))
    genuine_chain = tuple(x509.load_pem_x509_certificates((genuine / "svid.pem").read_bytes()))
    assert verify_x509_svid(genuine_chain, bundles, datetime.now(UTC))[0] == SpiffeId.parse(B_WEB)


# --- partner outage and rotation -----------------------------------------------------------------------


def test_a_keeps_bs_last_good_bundle_while_bs_ca_is_down_and_catches_up_when_it_returns(
    federation: Federation,
) -> None:
    a, b = federation.a, federation.b
    kept = a.status(B)["bundle_sequence"]
    with continuous_requests(a.outbound_port) as traffic:
        ca = b.mesh.processes["ca"]
        ca.terminate()
        ca.wait(timeout=10)
        down = poll(lambda: a.status(B), lambda s: s["last_error"] != "", "A to report B's endpoint down")
        assert down["bundle_sequence"] == kept
        during = len(traffic.results)
        poll(lambda: len(traffic.results), lambda n: n >= during + 50, "requests during the outage")
        federation.stack.enter_context(b.mesh.running_ca(log_name="ca-restarted.log"))
        b.mesh.ca("authority", "prepare", "--jwt")  # B's bundle changes once it is back
        newer = b.bundle_sequence()
        caught_up = poll(
            lambda: a.status(B), lambda s: s["last_error"] == "" and s["bundle_sequence"] == newer, "A to catch up"
        )
    assert newer > kept
    assert datetime.fromisoformat(caught_up["last_success_at"]) > datetime.fromisoformat(down["last_attempt_at"])
    assert len(traffic.results) > 100
    assert traffic.failures == []


def active_x509(side: Side) -> str:
    with side.admin() as admin:
        authorities = admin.get("/v1/authorities").raise_for_status().json()["authorities"]
    (active,) = [x["id"] for x in authorities if x["kind"] == "x509" and x["state"] == "active"]
    return str(active)


def envoy_trust_bundle(envoy: Envoy, trust_domain: str) -> list[x509.Certificate]:
    """The certificates Envoy's active ``ALL`` validation context trusts for ``trust_domain``."""
    dump = envoy.admin_json("/config_dump?resource=dynamic_active_secrets")
    for config in dump["configs"]:
        if config["name"] != "ALL":
            continue
        typed = config["secret"]["validation_context"]["custom_validator_config"]["typed_config"]
        for entry in typed["trust_domains"]:
            if entry["name"] == trust_domain:
                return x509.load_pem_x509_certificates(base64.b64decode(entry["trust_bundle"]["inline_bytes"]))
    return []


def test_b_rotates_its_ca_in_an_emergency_under_traffic_from_a_and_no_request_fails(federation: Federation) -> None:
    a, b = federation.a, federation.b
    assert a.envoy is not None
    assert b.envoy is not None
    old = active_x509(b)
    serving = b.envoy.certificate_serials()
    with continuous_requests(a.outbound_port) as traffic:
        with b.admin() as admin:
            report = admin.post("/v1/authorities/prepare", json={"kind": "x509"}).raise_for_status().json()
        prepared_at = time.monotonic()  # after the reply: B committed the preparation before it answered
        prepared = report["changes"][0]["authority_id"]
        published = b.bundle_sequence()
        # B publishes the new authority before it signs; A fetches it on B's refresh hint and its
        # agent pushes it to A's Envoy, which then trusts both of B's authorities.
        poll(lambda: a.status(B)["bundle_sequence"], lambda s: s >= published, "A to fetch B's new authority")
        poll(lambda: len(envoy_trust_bundle(a.envoy, B)), lambda n: n >= 2, "A's Envoy to trust B's new authority")
        time.sleep(max(0.0, prepared_at + 2.1 - time.monotonic()))  # two of B's refresh hints: it may sign now
        with b.admin() as admin:
            admin.post(f"/v1/authorities/{prepared}/activate", json={}).raise_for_status()
            admin.post(f"/v1/authorities/{old}/taint", json={}).raise_for_status()
        poll(b.envoy.certificate_serials, lambda s: s.isdisjoint(serving), "B's Envoy to serve an SVID of the new CA")
        done = len(traffic.results)
        poll(lambda: len(traffic.results), lambda n: n >= done + 50, "requests after the rotation")
    assert active_x509(b) == prepared
    assert len(traffic.results) > 100
    assert traffic.failures == []


def test_after_bs_rotate_now_a_fetches_bs_new_authority_by_itself_and_requests_succeed_again(
    federation: Federation,
) -> None:
    a, b = federation.a, federation.b
    assert b.envoy is not None
    serving = b.envoy.certificate_serials()
    with b.admin() as admin:
        admin.post("/v1/authorities/rotate", json={"kind": "x509"}).raise_for_status()  # no partner holds it yet
    published = b.bundle_sequence()
    # B's endpoint keeps presenting an SVID A can verify, so A's https_spiffe fetch gets the new bundle.
    caught_up = poll(lambda: a.status(B), lambda s: s["bundle_sequence"] >= published, "A to fetch B's new bundle")
    assert caught_up["last_error"] == ""
    poll(b.envoy.certificate_serials, lambda s: s.isdisjoint(serving), "B's Envoy to serve an SVID of the new CA")
    poll(lambda: _status_code(a), lambda code: code == 200, "requests from A to B to succeed again")


# --- JWT-SVIDs across the trust domains ----------------------------------------------------------------


def test_a_workload_in_a_validates_a_jwt_svid_minted_in_b(federation: Federation) -> None:
    token = jwt_of(federation.b, "a-api")
    assert validate(federation.a.mesh.workload_socket, token, "a-api") == B_WEB


def test_a_workload_in_a_not_federated_with_b_cannot_validate_bs_jwt_svids(federation: Federation) -> None:
    token = jwt_of(federation.b, "a-api")
    loner = run(
        [
            "setpriv", f"--regid={LONER_GID}", "--clear-groups", sys.executable, PYSPIFFE_CLIENT,
            "validate", str(federation.a.mesh.workload_socket), token, "a-api",
        ]
    )  # fmt: skip
    assert loner.returncode == 1, loner.stdout + loner.stderr
    assert "no bundle for trust domain b.test" in json.loads(loner.stdout)["error"]


def test_a_jwt_svid_signed_by_a_brand_new_key_of_a_validates_in_b_without_waiting_for_the_refresh_hint(
    federation: Federation,
) -> None:
    a, b = federation.a, federation.b
    scheduled = datetime.fromisoformat(b.status(A)["next_refresh_at"])  # B's next fetch of A's bundle
    with a.admin() as admin:
        rotated = admin.post("/v1/authorities/rotate", json={"kind": "jwt"}).raise_for_status().json()
    (new_key,) = [c["authority_id"] for c in rotated["changes"] if c["after"] == "active"]
    token = jwt_of(a, "b-api")  # minted by A's CA with the key it activated just now
    assert parse_jwt_svid_insecure(token)[0]["kid"] == new_key

    assert validate(b.mesh.workload_socket, token, "b-api") == A_WEB
    assert datetime.now(UTC) < scheduled
    assert b.status(A)["jwt_authorities"] >= 2  # B's CA fetched A's bundle for it, and holds it now
