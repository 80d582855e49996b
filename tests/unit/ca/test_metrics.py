"""The CA's scrape-time metrics (ca.metrics): authority and upstream expiry as absolute timestamps, with
labels bounded by what the CA holds, and attestation methods bounded by what it has enabled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from prometheus_client import CollectorRegistry

from bridge.legacy_roots import legacy_roots_pem
from ca.authority import AuthoritySet, AuthorityState, JwtKey, X509Authority
from ca.metrics import OTHER_METHOD, AuthorityCollector, LegacyCrlCollector, StreamCollector, method_label
from spiffe_core.bundle import Bundle
from spiffe_core.keys import KeyType, generate_private_key
from spiffe_core.spiffe_id import TrustDomain
from tests.support.agent_pki import SigningCa
from tests.support.enterprise_pki import EnterprisePki

TD = TrustDomain("example.org")
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def authority(ca: SigningCa, state: AuthorityState, *upstream: SigningCa) -> X509Authority:
    return X509Authority(ca.authority_id, ca.cert, ca.key, state, tuple(u.cert for u in upstream))


def registry_of(authorities: AuthoritySet) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(AuthorityCollector(lambda: authorities))
    return registry


def expiry(registry: CollectorRegistry, name: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(sample.labels.values()): sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name
    }


def test_every_authority_has_its_expiry_with_kind_and_state() -> None:
    active, prepared = SigningCa.create(TD, NOW, timedelta(days=7)), SigningCa.create(TD, NOW, timedelta(days=9))
    jwt = JwtKey("k1", generate_private_key(KeyType.EC_P256), AuthorityState.TAINTED, NOW + timedelta(days=3), NOW)
    authorities = AuthoritySet(
        TD,
        (authority(active, AuthorityState.ACTIVE), authority(prepared, AuthorityState.PREPARED)),
        (jwt,),
        Bundle(TD),
    )
    assert expiry(registry_of(authorities), "trustmesh_authority_expiry_timestamp_seconds") == {
        (active.authority_id, "x509", "active"): (NOW + timedelta(days=7)).timestamp(),
        (prepared.authority_id, "x509", "prepared"): (NOW + timedelta(days=9)).timestamp(),
        ("k1", "jwt", "tainted"): (NOW + timedelta(days=3)).timestamp(),
    }


def test_upstream_certificates_above_prepared_and_active_authorities_are_shown_once_each() -> None:
    root, intermediate = SigningCa.create(TD, NOW, timedelta(days=365)), SigningCa.create(TD, NOW, timedelta(days=90))
    old_root = SigningCa.create(TD, NOW, timedelta(days=30))
    authorities = AuthoritySet(
        TD,
        (
            authority(SigningCa.create(TD, NOW), AuthorityState.ACTIVE, intermediate, root),
            authority(SigningCa.create(TD, NOW), AuthorityState.PREPARED, intermediate, root),
            authority(SigningCa.create(TD, NOW), AuthorityState.RETIRED, old_root),
        ),
        (),
        Bundle(TD),
    )
    shown = expiry(registry_of(authorities), "trustmesh_upstream_expiry_timestamp_seconds")
    assert sorted(shown.values()) == [(NOW + timedelta(days=d)).timestamp() for d in (90, 365)]
    subject = intermediate.cert.subject.rfc4514_string()
    assert shown[(subject, format(intermediate.cert.serial_number, "x"))] == (NOW + timedelta(days=90)).timestamp()


def test_a_self_signed_ca_has_no_upstream_series() -> None:
    authorities = AuthoritySet(TD, (authority(SigningCa.create(TD, NOW), AuthorityState.ACTIVE),), (), Bundle(TD))
    assert expiry(registry_of(authorities), "trustmesh_upstream_expiry_timestamp_seconds") == {}


def test_streams_and_agents_are_read_at_scrape_time() -> None:
    counts = {"streams": 3, "agents": 2}
    registry = CollectorRegistry()
    registry.register(StreamCollector(lambda: counts["streams"], lambda: counts["agents"]))
    assert registry.get_sample_value("trustmesh_sync_streams") == 3
    counts["streams"] = 0
    assert registry.get_sample_value("trustmesh_sync_streams") == 0
    assert registry.get_sample_value("trustmesh_connected_agents") == 2


def test_an_attestation_method_the_ca_has_not_enabled_is_labelled_other() -> None:
    assert method_label("join_token", {"join_token", "x509pop"}) == "join_token"
    assert method_label("x" * 500, {"join_token"}) == OTHER_METHOD


def test_each_legacy_crl_shows_when_it_is_due_by_set_and_issuer(enterprise_pki: EnterprisePki) -> None:
    corp = legacy_roots_pem(enterprise_pki.root.read_bytes() + enterprise_pki.crl.read_bytes(), "corp.pem")
    crl = x509.load_pem_x509_crl(enterprise_pki.crl.read_bytes())
    assert crl.next_update_utc is not None
    registry = CollectorRegistry()
    plain = legacy_roots_pem(enterprise_pki.root.read_bytes(), "plain.pem")
    registry.register(LegacyCrlCollector(lambda: {"corp": corp, "plain": plain}))
    assert expiry(registry, "trustmesh_legacy_crl_next_update_timestamp_seconds") == {
        ("corp", "CN=Example Corp Issuing CA 1"): crl.next_update_utc.timestamp()
    }
