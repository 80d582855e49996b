"""SDS resource names → Envoy secrets (DESIGN §4): entitlement, one SPIFFE validator entry per trust
domain, CRLs in the own trust domain's bundle, enterprise roots as ``legacy/<name>``, unknown names absent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_spiffe_validator_config_pb2

from sds.secrets import (
    ALL,
    DEFAULT,
    ROOTCA,
    SECRET_TYPE_URL,
    SPIFFE_VALIDATOR,
    SdsResource,
    SnapshotMemo,
    build_secrets,
)
from spiffe_core.selectors import Selector
from tests.support.sds_snapshots import TestCa, snapshot

CALLER = frozenset({Selector("unix", "uid:1000"), Selector("unix", "path:/usr/bin/envoy")})


@pytest.fixture(scope="module")
def ca() -> TestCa:
    return TestCa.create("example.org")


@pytest.fixture(scope="module")
def peer_ca() -> TestCa:
    return TestCa.create("peer.example")


@pytest.fixture(scope="module")
def other_ca() -> TestCa:
    return TestCa.create("other.example")


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _trust_domains(resource: SdsResource) -> list[tuple[str, bytes]]:
    """(name, trust bundle PEM) of each SPIFFE validator entry, in order."""
    context = resource.secret.validation_context
    assert context.custom_validator_config.name == SPIFFE_VALIDATOR
    config = tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig()
    assert context.custom_validator_config.typed_config.Unpack(config)
    return [(td.name, td.trust_bundle.inline_bytes) for td in config.trust_domains]


def test_default_is_the_first_entitled_svid_with_chain_and_key(ca: TestCa) -> None:
    other = ca.svid("/not-mine", ["unix:uid:0"])
    first, second = ca.svid("/web"), ca.svid("/api")
    result = build_secrets(snapshot(ca, [other, first, second]), CALLER, [DEFAULT])

    cert = result[DEFAULT].secret.tls_certificate
    assert result[DEFAULT].secret.name == DEFAULT
    assert cert.certificate_chain.inline_bytes == _pem(first.cert_chain[0])
    key = serialization.load_pem_private_key(cert.private_key.inline_bytes, password=None)
    assert key.public_key() == first.private_key.public_key()


def test_spiffe_id_name_gives_that_svid(ca: TestCa) -> None:
    web, api = ca.svid("/web"), ca.svid("/api")
    result = build_secrets(snapshot(ca, [web, api]), CALLER, ["spiffe://example.org/api"])

    assert result["spiffe://example.org/api"].secret.name == "spiffe://example.org/api"
    assert result["spiffe://example.org/api"].secret.tls_certificate.certificate_chain.inline_bytes == _pem(
        api.cert_chain[0]
    )


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(DEFAULT, id="default"),
        pytest.param("spiffe://example.org/db", id="spiffe-id"),
    ],
)
def test_svid_of_an_entry_whose_selectors_do_not_all_match_is_absent(ca: TestCa, name: str) -> None:
    db = ca.svid("/db", ["unix:uid:1000", "unix:user:postgres"])

    assert build_secrets(snapshot(ca, [db]), CALLER, [name]) == {}


def test_rootca_has_one_spiffe_validator_entry_for_the_own_trust_domain(ca: TestCa, peer_ca: TestCa) -> None:
    web = ca.svid("/web", federates_with=["peer.example"])
    result = build_secrets(snapshot(ca, [web], federated={"peer.example": peer_ca.bundle()}), CALLER, [ROOTCA])

    assert _trust_domains(result[ROOTCA]) == [("example.org", _pem(ca.cert))]


def test_rootca_is_given_to_a_caller_entitled_to_no_svid(ca: TestCa) -> None:
    result = build_secrets(snapshot(ca, [ca.svid("/web", ["unix:uid:0"])]), CALLER, [ROOTCA])

    assert _trust_domains(result[ROOTCA]) == [("example.org", _pem(ca.cert))]


def test_all_has_own_and_federated_trust_domains_each_in_its_own_entry(
    ca: TestCa, peer_ca: TestCa, other_ca: TestCa
) -> None:
    web = ca.svid("/web", federates_with=["peer.example", "other.example"])
    snap = snapshot(ca, [web], federated={"peer.example": peer_ca.bundle(), "other.example": other_ca.bundle()})

    result = build_secrets(snap, CALLER, [ALL])

    assert _trust_domains(result[ALL]) == [
        ("example.org", _pem(ca.cert)),
        ("other.example", _pem(other_ca.cert)),
        ("peer.example", _pem(peer_ca.cert)),
    ]


def test_all_leaves_out_federated_bundles_only_other_entries_federate_with(ca: TestCa, peer_ca: TestCa) -> None:
    mine = ca.svid("/web")
    theirs = ca.svid("/batch", ["unix:uid:0"], federates_with=["peer.example"])
    snap = snapshot(ca, [mine, theirs], federated={"peer.example": peer_ca.bundle()})

    result = build_secrets(snap, CALLER, [ALL])

    assert [name for name, _ in _trust_domains(result[ALL])] == ["example.org"]


def test_trust_domain_name_gives_only_that_bundle(ca: TestCa, peer_ca: TestCa) -> None:
    web = ca.svid("/web", federates_with=["peer.example"])
    snap = snapshot(ca, [web], federated={"peer.example": peer_ca.bundle()})

    result = build_secrets(snap, CALLER, ["spiffe://peer.example", "spiffe://example.org"])

    assert _trust_domains(result["spiffe://peer.example"]) == [("peer.example", _pem(peer_ca.cert))]
    assert _trust_domains(result["spiffe://example.org"]) == [("example.org", _pem(ca.cert))]


def test_trust_domain_the_caller_does_not_federate_with_is_absent(ca: TestCa, peer_ca: TestCa) -> None:
    web = ca.svid("/web")
    snap = snapshot(ca, [web], federated={"peer.example": peer_ca.bundle()})

    assert build_secrets(snap, CALLER, ["spiffe://peer.example"]) == {}


def test_crls_are_appended_to_the_own_trust_domain_bundle_only(ca: TestCa, peer_ca: TestCa) -> None:
    web = ca.svid("/web", federates_with=["peer.example"])
    crl = ca.crl_der([web.cert_chain[0].serial_number])
    snap = snapshot(ca, [web], federated={"peer.example": peer_ca.bundle()}, crls=[crl])

    entries = dict(_trust_domains(build_secrets(snap, CALLER, [ALL])[ALL]))

    crl_pem = x509.load_der_x509_crl(crl).public_bytes(serialization.Encoding.PEM)
    assert entries["example.org"] == _pem(ca.cert) + crl_pem
    assert entries["peer.example"] == _pem(peer_ca.cert)


def test_validation_context_sets_no_crl_field_the_spiffe_validator_would_ignore(ca: TestCa) -> None:
    snap = snapshot(ca, [ca.svid("/web")], crls=[ca.crl_der()])

    context = build_secrets(snap, CALLER, [ROOTCA])[ROOTCA].secret.validation_context

    assert not context.HasField("crl")


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("nonsense", id="unknown-word"),
        pytest.param("rootca", id="wrong-case"),
        pytest.param("spiffe://example.org/unknown", id="unknown-spiffe-id"),
        pytest.param("spiffe://Example.org/web", id="malformed-spiffe-id"),
        pytest.param("spiffe://nowhere.example", id="unknown-trust-domain"),
        pytest.param("", id="empty"),
    ],
)
def test_unknown_names_are_absent(ca: TestCa, name: str) -> None:
    assert build_secrets(snapshot(ca, [ca.svid("/web")]), CALLER, [name]) == {}


def test_legacy_name_gives_those_enterprise_roots_as_trusted_ca_for_the_default_validator(ca: TestCa) -> None:
    roots = _pem(TestCa.create("corp.example").cert)
    result = build_secrets(snapshot(ca, legacy_roots={"corp": roots}), CALLER, ["legacy/corp"])

    context = result["legacy/corp"].secret.validation_context
    assert result["legacy/corp"].secret.name == "legacy/corp"
    assert context.trusted_ca.inline_bytes == roots
    assert not context.HasField("custom_validator_config")  # no SPIFFE validator: these servers have no SVID


def test_a_legacy_set_with_crls_has_envoy_check_each_servers_certificate_against_its_issuers_crl(ca: TestCa) -> None:
    corp = TestCa.create("corp.example")
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(corp.cert.subject)
        .last_update(datetime.now(UTC))
        .next_update(datetime.now(UTC) + timedelta(days=1))
        .sign(corp.key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    with_crl, without = _pem(corp.cert) + crl, _pem(corp.cert)
    result = build_secrets(snapshot(ca, legacy_roots={"a": with_crl, "b": without}), CALLER, ["legacy/a", "legacy/b"])

    checked, unchecked = (result[n].secret.validation_context for n in ("legacy/a", "legacy/b"))
    assert (checked.trusted_ca.inline_bytes, checked.only_verify_leaf_cert_crl) == (with_crl, True)
    assert (unchecked.trusted_ca.inline_bytes, unchecked.only_verify_leaf_cert_crl) == (without, False)


def test_legacy_roots_are_given_to_a_caller_entitled_to_no_svid(ca: TestCa) -> None:
    roots = _pem(TestCa.create("corp.example").cert)
    snap = snapshot(ca, [ca.svid("/web", ["unix:uid:0"])], legacy_roots={"corp": roots})

    assert list(build_secrets(snap, CALLER, ["legacy/corp"])) == ["legacy/corp"]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("legacy/partner", id="unknown-set"),
        pytest.param("legacy/", id="no-name"),
        pytest.param("legacy/Corp", id="wrong-case"),
        pytest.param("legacy/corp/x", id="path"),
        pytest.param("corp", id="bare-name"),
    ],
)
def test_legacy_names_the_ca_serves_no_roots_under_are_absent(ca: TestCa, name: str) -> None:
    snap = snapshot(ca, legacy_roots={"corp": _pem(TestCa.create("corp.example").cert)})

    assert build_secrets(snap, CALLER, [name]) == {}


def test_rootca_is_absent_before_the_first_bundle_arrives(ca: TestCa) -> None:
    assert build_secrets(snapshot(ca, [ca.svid("/web")], with_bundle=False), CALLER, [ROOTCA, ALL]) == {}


def test_repeated_names_give_one_resource(ca: TestCa) -> None:
    result = build_secrets(snapshot(ca, [ca.svid("/web")]), CALLER, [DEFAULT, ROOTCA, DEFAULT])

    assert list(result) == [DEFAULT, ROOTCA]


def test_version_follows_content_not_snapshot_version(ca: TestCa) -> None:
    web = ca.svid("/web")
    first = build_secrets(snapshot(ca, [web], version=1), CALLER, [DEFAULT, ROOTCA])
    same = build_secrets(snapshot(ca, [web], version=2), CALLER, [DEFAULT, ROOTCA])
    rotated = build_secrets(snapshot(ca, [ca.svid("/web")], version=3), CALLER, [DEFAULT, ROOTCA])

    assert same == first
    assert rotated[DEFAULT].version != first[DEFAULT].version
    assert rotated[ROOTCA] == first[ROOTCA]


def test_resource_packs_as_an_envoy_secret(ca: TestCa) -> None:
    resource = build_secrets(snapshot(ca, [ca.svid("/web")]), CALLER, [DEFAULT])[DEFAULT]

    packed: Any = resource.to_any()
    decoded = secret_pb2.Secret()
    decoded.ParseFromString(packed.value)
    assert packed.type_url == SECRET_TYPE_URL
    assert decoded == resource.secret


def test_repr_shows_no_key_material(ca: TestCa) -> None:
    web = ca.svid("/web")
    resource = build_secrets(snapshot(ca, [web]), CALLER, [DEFAULT])[DEFAULT]

    assert repr(resource) == f"SdsResource(name='default', version='{resource.version}')"


# --- shared between streams -------------------------------------------------------------------------


def test_streams_asking_the_same_of_one_snapshot_share_one_build(ca: TestCa) -> None:
    shared, snap = SnapshotMemo(build_secrets), snapshot(ca, [ca.svid("/web")])
    first = shared.get(snap, CALLER, [DEFAULT, ROOTCA])
    assert shared.get(snap, CALLER, (DEFAULT, ROOTCA)) is first
    assert first == build_secrets(snap, CALLER, [DEFAULT, ROOTCA])


def test_other_selectors_or_names_are_built_for_themselves(ca: TestCa) -> None:
    shared, snap = SnapshotMemo(build_secrets), snapshot(ca, [ca.svid("/web"), ca.svid("/db", ["unix:uid:0"])])
    root = frozenset({Selector("unix", "uid:0")})
    mine, theirs = shared.get(snap, CALLER, [DEFAULT]), shared.get(snap, root, [DEFAULT])
    assert mine[DEFAULT].version != theirs[DEFAULT].version
    assert list(shared.get(snap, CALLER, [ROOTCA])) == [ROOTCA]


def test_a_new_snapshot_is_built_again(ca: TestCa) -> None:
    shared, web = SnapshotMemo(build_secrets), ca.svid("/web")
    before = shared.get(snapshot(ca, [web], version=1), CALLER, [DEFAULT])
    after = shared.get(snapshot(ca, [web, ca.svid("/api")], version=2), CALLER, [DEFAULT])
    assert after is not before


def test_subscriptions_beyond_the_bound_are_built_but_not_kept(ca: TestCa) -> None:
    shared, snap = SnapshotMemo(build_secrets, max_subscriptions=1), snapshot(ca, [ca.svid("/web")])
    kept = shared.get(snap, CALLER, [DEFAULT])
    assert shared.get(snap, CALLER, [ROOTCA]) is not shared.get(snap, CALLER, [ROOTCA])
    assert shared.get(snap, CALLER, [DEFAULT]) is kept
