"""X509-SVID batches signed by an authority whose key is in Vault transit (docs/vault.md "Costs"): one
transit sign request per batch (Vault's ``batch_input``), every signature checked, every SVID as valid
as one signed in the process — against the in-test Vault-API server, with openssl as a second judge."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca.authority import AuthoritySet, AuthorityState, JwtKey, X509Authority, authority_id_for, build_bundle
from ca.issuance import IssuedX509Svid, TtlPolicy, X509SvidRequest, sign_x509_svids, sign_x509_svids_each
from ca.keys import vault_transit
from ca.keys.vault_transit import VaultTransitKeyManager
from ca.service import CaService
from ca.signing import digest_for
from ca.upstream import CaSubject, SelfSignedUpstream
from ca.vault import VaultClient
from spiffe_core.errors import FailedPrecondition, InvalidArgument, UpstreamUnavailable
from spiffe_core.keys import KeyType, generate_private_key
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import validate_x509_svid_leaf, verify_x509_svid
from tests.integration.ca.test_node_api import (
    NODE_1,
    RPC_TIMEOUT,
    attested_agent,
    channel,
    csr_for,
    running_node_api,
    sign_for,
)
from tests.support.processes import run
from tests.support.vault_server import FakeVault, token_config
from wire import node_pb2, node_pb2_grpc

TD = TrustDomain("example.org")
POLICY = TtlPolicy(default=timedelta(hours=1), maximum=timedelta(hours=24))
SIGN = ("POST", "transit/sign/trustmesh-x509-1")


@pytest.fixture
def vault() -> Iterator[FakeVault]:
    with FakeVault().running() as server:
        yield server


def key_manager(vault: FakeVault, tmp_path: Path) -> VaultTransitKeyManager:
    client = VaultClient(token_config(vault, tmp_path), "vault-transit key manager", "ca.key_manager.transit_mount")
    return VaultTransitKeyManager(client, "transit", "trustmesh-")


def vault_authorities(vault: FakeVault, tmp_path: Path, key_type: KeyType = KeyType.EC_P256) -> AuthoritySet:
    """An active self-signed X.509 authority whose key is transit key ``trustmesh-x509-1``."""
    key = key_manager(vault, tmp_path).generate("x509-1", key_type)
    now = datetime.now(UTC)
    authority_id = authority_id_for(key.public_key())
    cert, chain = SelfSignedUpstream().mint_x509_ca(
        private_key=key,
        trust_domain=TD,
        subject=CaSubject().name_for(TD, authority_id),
        not_before=now - timedelta(minutes=1),
        not_after=now + timedelta(days=1),
    )
    authority = X509Authority(authority_id, cert, key, AuthorityState.ACTIVE, chain)
    jwt_key = JwtKey("kid", generate_private_key(KeyType.EC_P256), AuthorityState.ACTIVE, now + timedelta(days=1), now)
    bundle = build_bundle(TD, (authority,), (jwt_key,), sequence=1, refresh_hint=300)
    return AuthoritySet(TD, (authority,), (jwt_key,), bundle)


def csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    request = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, digest_for(key))
    return request.public_bytes(serialization.Encoding.DER)


def requests(count: int) -> list[X509SvidRequest]:
    return [
        X509SvidRequest(csr(), SpiffeId.parse(f"spiffe://example.org/workload-{n}"), (f"w{n}.example.org",))
        for n in range(count)
    ]


def openssl_verifies(authorities: AuthoritySet, issued: list[IssuedX509Svid], directory: Path) -> list[str]:
    """The lines ``openssl verify`` prints for every leaf, checked against the bundle's authorities."""
    bundle = directory / "bundle.pem"
    bundle.write_bytes(authorities.bundle.x509_authorities_pem())
    leaves = []
    for n, svid in enumerate(issued):
        leaves.append(directory / f"leaf-{n}.pem")
        leaves[-1].write_bytes(svid.leaf.public_bytes(serialization.Encoding.PEM))
    verified = run(["openssl", "verify", "-CAfile", str(bundle), *map(str, leaves)])
    assert verified.returncode == 0, verified.stdout + verified.stderr
    return verified.stdout.splitlines()


@pytest.mark.parametrize(
    "key_type",
    [
        pytest.param(KeyType.EC_P256, id="ec-p256"),
        pytest.param(KeyType.EC_P384, id="ec-p384"),
        pytest.param(KeyType.RSA_2048, id="rsa-2048"),
    ],
)
def test_a_batch_costs_one_vault_sign_request_and_every_svid_follows_the_rules_and_verifies(
    vault: FakeVault, tmp_path: Path, key_type: KeyType
) -> None:
    authorities = vault_authorities(vault, tmp_path, key_type)
    batch = requests(20)
    signs_before = vault.count(*SIGN)
    now = datetime.now(UTC)

    issued = sign_x509_svids(batch, authorities, POLICY, now)

    assert vault.count(*SIGN) - signs_before == 1
    assert [svid.spiffe_id for svid in issued] == [request.spiffe_id for request in batch]
    for svid in issued:
        assert validate_x509_svid_leaf(svid.leaf) == svid.spiffe_id
        assert verify_x509_svid(svid.cert_chain, authorities.bundle, now)[0] == svid.spiffe_id
        assert svid.leaf.serial_number == svid.serial
        assert type(svid.leaf.signature_hash_algorithm) is type(digest_for(authorities.active_x509().private_key))
    lines = openssl_verifies(authorities, issued, tmp_path)
    assert len(lines) == 20
    assert all(line.endswith(": OK") for line in lines)


def test_a_refused_request_gets_its_error_and_the_others_are_signed_in_one_request(
    vault: FakeVault, tmp_path: Path
) -> None:
    authorities = vault_authorities(vault, tmp_path)
    good_1, good_2 = requests(2)
    broken = X509SvidRequest(b"broken", SpiffeId.parse("spiffe://example.org/broken"))
    signs_before = vault.count(*SIGN)
    now = datetime.now(UTC)

    first, refused, second = sign_x509_svids_each([good_1, broken, good_2], authorities, POLICY, now)

    assert vault.count(*SIGN) - signs_before == 1
    assert isinstance(refused, InvalidArgument)
    assert str(refused).startswith("CSR is not a PKCS#10 certificate request")
    assert isinstance(first, IssuedX509Svid)
    assert isinstance(second, IssuedX509Svid)
    assert verify_x509_svid(first.cert_chain, authorities.bundle, now)[0] == good_1.spiffe_id
    assert verify_x509_svid(second.cert_chain, authorities.bundle, now)[0] == good_2.spiffe_id


def test_a_batch_of_only_refused_requests_asks_vault_nothing(vault: FakeVault, tmp_path: Path) -> None:
    authorities = vault_authorities(vault, tmp_path)
    signs_before = vault.count(*SIGN)

    (refused,) = sign_x509_svids_each(
        [X509SvidRequest(b"broken", SpiffeId.parse("spiffe://example.org/broken"))],
        authorities,
        POLICY,
        datetime.now(UTC),
    )

    assert isinstance(refused, InvalidArgument)
    assert vault.count(*SIGN) == signs_before


def test_a_batch_over_the_request_bound_is_split_into_bounded_requests(
    vault: FakeVault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vault_transit, "MAX_BATCH_ITEMS", 4)
    authorities = vault_authorities(vault, tmp_path)
    signs_before = vault.count(*SIGN)
    now = datetime.now(UTC)

    issued = sign_x509_svids(requests(10), authorities, POLICY, now)

    assert vault.count(*SIGN) - signs_before == 3  # 4 + 4 + 2
    assert all(verify_x509_svid(svid.cert_chain, authorities.bundle, now) for svid in issued)


def test_an_item_vault_refuses_fails_the_batch_with_vaults_reason(vault: FakeVault, tmp_path: Path) -> None:
    authorities = vault_authorities(vault, tmp_path)
    vault.refuse_batch_items = {2: "failed to sign:\n  key is disabled"}

    with pytest.raises(FailedPrecondition) as caught:
        sign_x509_svids(requests(5), authorities, POLICY, datetime.now(UTC))

    assert str(caught.value) == (
        f"vault-transit key manager: Vault at {vault.address} refused to sign batch item #2 of 5 on "
        "transit/sign/trustmesh-x509-1: failed to sign: key is disabled; refusing the whole batch"
    )


def test_a_batch_signature_that_does_not_verify_is_refused(vault: FakeVault, tmp_path: Path) -> None:
    authorities = vault_authorities(vault, tmp_path)
    vault.transit["trustmesh-x509-1"].private_key = ec.generate_private_key(ec.SECP256R1())  # replaced in Vault

    with pytest.raises(FailedPrecondition) as caught:
        sign_x509_svids(requests(3), authorities, POLICY, datetime.now(UTC))

    assert str(caught.value) == (
        f"vault-transit key manager: Vault at {vault.address} returned a signature of transit/sign/trustmesh-x509-1 "
        "that does not verify with that key's public key; refusing it (was the key rotated or replaced in Vault?)"
    )


def test_a_sealed_vault_fails_the_batch_with_the_sealed_error(vault: FakeVault, tmp_path: Path) -> None:
    authorities = vault_authorities(vault, tmp_path)
    vault.sealed = True

    with pytest.raises(UpstreamUnavailable) as caught:
        sign_x509_svids_each(requests(3), authorities, POLICY, datetime.now(UTC))

    assert str(caught.value) == (
        f"vault-transit key manager: Vault at {vault.address} is sealed; unseal it ('vault operator unseal')"
    )


async def test_the_node_api_signs_a_batch_in_one_vault_request_and_keeps_its_per_item_errors(
    vault: FakeVault, tmp_path: Path
) -> None:
    async with running_node_api(tmp_path, key_manager=key_manager(vault, tmp_path)) as ca:
        agent = await attested_agent(ca)
        entries = [ca.entry(SpiffeId.parse(f"spiffe://example.org/workload-{n}"), NODE_1) for n in range(3)]
        sign_path = next(path for method, path in vault.requests if path.startswith("transit/sign/trustmesh-x509-"))
        request = node_pb2.SignX509SvidsRequest(
            requests=[
                node_pb2.X509SvidRequest(entry_id=entries[0].id, csr=csr_for(generate_private_key(KeyType.EC_P256))),
                node_pb2.X509SvidRequest(entry_id=entries[1].id, csr=b"broken"),
                node_pb2.X509SvidRequest(entry_id=entries[2].id, csr=csr_for(generate_private_key(KeyType.EC_P256))),
            ]
        )
        signs_before = vault.count("POST", sign_path)
        async with channel(ca, ca.node_api_port, agent) as ch:
            response = await node_pb2_grpc.NodeStub(ch).SignX509Svids(request, timeout=RPC_TIMEOUT)
        bundle = ca.bundle()

    assert vault.count("POST", sign_path) - signs_before == 1
    first, broken, third = response.svids
    assert broken.error.startswith("CSR is not a PKCS#10 certificate request")
    assert list(broken.cert_chain) == []
    for item, entry in ((first, entries[0]), (third, entries[2])):
        chain = [x509.load_der_x509_certificate(der) for der in item.cert_chain]
        assert (item.entry_id, item.error) == (entry.id, "")
        assert verify_x509_svid(chain, bundle, datetime.now(UTC))[0] == entry.spec.spiffe_id


async def test_the_node_api_signs_a_lone_svid_of_a_vault_held_authority_on_a_worker_not_the_event_loop(
    vault: FakeVault, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Vault answers over the network, so the event loop never signs with a transit key itself."""
    answered_now: list[object] = []
    mint_now = CaService.mint_x509_svids_now

    def spy(service: CaService, *args: Any) -> list[IssuedX509Svid] | None:
        answered_now.append(mint_now(service, *args))
        return answered_now[-1]  # type: ignore[return-value]

    monkeypatch.setattr(CaService, "mint_x509_svids_now", spy)
    async with running_node_api(tmp_path, key_manager=key_manager(vault, tmp_path)) as ca:
        agent = await attested_agent(ca)
        entry = ca.entry(SpiffeId.parse("spiffe://example.org/workload"), NODE_1)
        first, second = [await sign_for(ca, agent, entry.id) for _ in range(2)]
    assert (first.error, second.error) == ("", "")
    assert answered_now == [None]  # asked once the agent's entries were held, and it gave way
