"""bridge/x509pop.py: a host holding its enterprise cert's key gets its mapped agent ID; a refused
chain says which check failed; a nonce works once, until it expires, for the chain it was issued for,
and only if this CA's key sealed it (bridge/x509pop_challenge.py)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from bridge.legacy_chain import LegacyTrust, TrustAnchor, load_certificates, load_crls
from bridge.mapping import MappingRule, Match
from bridge.possession import SigningKey, load_signing_key
from bridge.x509pop import (
    CHALLENGE_TTL,
    EXPIRED,
    OTHER_CHAIN,
    USED,
    X509PopAttestor,
    encode_response,
    sign_challenge,
)
from bridge.x509pop_challenge import FORGED, RANDOM_BYTES
from spiffe_core.errors import InvalidArgument, NotAuthorized
from spiffe_core.spiffe_id import TrustDomain
from tests.support.enterprise_pki import REFUSED_HOSTS, EnterprisePki, HostFiles
from tests.support.x509pop import MemoryChallengeLedger

TD = TrustDomain.parse("example.org")
RULES = [
    MappingRule("payments", Match(dns="*.payments.corp.example.com"), "/legacy/payments/{host}"),
    MappingRule("data", Match(dns="*.data.corp.example.com", trust_anchor="corp"), "/legacy/data/{host}"),
    MappingRule("deep", Match(dns="deep01.corp.example.com"), "/legacy/deep"),
]


@pytest.fixture
def now(enterprise_pki: EnterprisePki) -> datetime:
    """The time of the attempt: after the (session-wide) enterprise PKI was issued."""
    return datetime.now(UTC)


def enterprise_trust(enterprise_pki: EnterprisePki) -> LegacyTrust:
    return LegacyTrust(
        [TrustAnchor("corp", load_certificates(enterprise_pki.root.read_bytes(), "root"))],
        load_crls(enterprise_pki.crl.read_bytes(), "crl"),
    )


@pytest.fixture
def attestor(enterprise_pki: EnterprisePki) -> X509PopAttestor:
    trust = enterprise_trust(enterprise_pki)
    return X509PopAttestor(TD, lambda: trust, lambda: RULES, MemoryChallengeLedger())


def host_key(host: HostFiles) -> SigningKey:
    return load_signing_key(host.key.read_bytes(), str(host.key))


def answer(nonce: bytes, host: HostFiles, key: SigningKey | None = None) -> bytes:
    """Step 2's payload for ``nonce``: signed with ``key`` (default the host's), with the host's chain."""
    return encode_response(nonce, sign_challenge(key or host_key(host), nonce), host.chain.read_bytes())


def prove(attestor: X509PopAttestor, host: HostFiles, now: datetime) -> str:
    nonce = attestor.challenge(host.chain.read_bytes(), now)
    return str(attestor.attest(answer(nonce, host), now))


def test_ec_and_rsa_hosts_get_their_mapped_agent_ids(
    attestor: X509PopAttestor, enterprise_pki: EnterprisePki, now: datetime
) -> None:
    web, db = prove(attestor, enterprise_pki.web, now), prove(attestor, enterprise_pki.db, now)
    assert web == "spiffe://example.org/trustmesh/agent/x509pop/legacy/payments/web01"
    assert db == "spiffe://example.org/trustmesh/agent/x509pop/legacy/data/db01"


@pytest.mark.parametrize(
    ("host", "reason"),
    REFUSED_HOSTS,
)
def test_refused_chains_say_which_check_failed(
    attestor: X509PopAttestor, enterprise_pki: EnterprisePki, host: str, reason: str, now: datetime
) -> None:
    with pytest.raises(NotAuthorized, match=f"^{reason}: "):
        attestor.challenge(getattr(enterprise_pki, host).chain.read_bytes(), now)


def test_a_signature_by_another_key_is_refused_and_spends_nothing(
    attestor: X509PopAttestor, enterprise_pki: EnterprisePki, now: datetime
) -> None:
    web = enterprise_pki.web
    nonce = attestor.challenge(web.chain.read_bytes(), now)
    with pytest.raises(NotAuthorized, match="proof of possession failed"):
        attestor.attest(answer(nonce, web, key=host_key(enterprise_pki.revoked)), now)

    assert str(attestor.attest(answer(nonce, web), now)).endswith("/legacy/payments/web01")


def test_a_replayed_answer_is_refused_as_used(
    attestor: X509PopAttestor, enterprise_pki: EnterprisePki, now: datetime
) -> None:
    nonce = attestor.challenge(enterprise_pki.web.chain.read_bytes(), now)
    response = answer(nonce, enterprise_pki.web)
    attestor.attest(response, now)

    with pytest.raises(NotAuthorized) as replayed:
        attestor.attest(response, now)
    assert str(replayed.value) == USED


def test_a_nonce_is_refused_once_it_expired(
    attestor: X509PopAttestor, enterprise_pki: EnterprisePki, now: datetime
) -> None:
    nonce = attestor.challenge(enterprise_pki.web.chain.read_bytes(), now)

    with pytest.raises(NotAuthorized) as late:
        attestor.attest(answer(nonce, enterprise_pki.web), now + CHALLENGE_TTL + timedelta(seconds=1))
    assert str(late.value) == EXPIRED


def test_a_nonce_issued_for_one_chain_is_refused_with_another(
    attestor: X509PopAttestor, enterprise_pki: EnterprisePki, now: datetime
) -> None:
    nonce = attestor.challenge(enterprise_pki.web.chain.read_bytes(), now)  # both hosts are trusted and mapped

    with pytest.raises(NotAuthorized) as swapped:
        attestor.attest(answer(nonce, enterprise_pki.db), now)
    assert str(swapped.value) == OTHER_CHAIN


def test_a_nonce_whose_mac_does_not_match_is_refused_as_forged(
    attestor: X509PopAttestor, enterprise_pki: EnterprisePki, now: datetime
) -> None:
    nonce = attestor.challenge(enterprise_pki.web.chain.read_bytes(), now)
    expiry_at = 1 + RANDOM_BYTES + 7  # the lowest byte of the expiry: another deadline
    altered = nonce[:expiry_at] + bytes([nonce[expiry_at] ^ 0xFF]) + nonce[expiry_at + 1 :]

    with pytest.raises(NotAuthorized) as forged:
        attestor.attest(answer(altered, enterprise_pki.web), now)  # signed by the host's key: only the MAC is off
    assert str(forged.value) == FORGED


def test_a_nonce_sealed_by_another_cas_key_is_refused_as_forged(
    attestor: X509PopAttestor, enterprise_pki: EnterprisePki, now: datetime
) -> None:
    trust = enterprise_trust(enterprise_pki)
    other_ca = X509PopAttestor(TD, lambda: trust, lambda: RULES, MemoryChallengeLedger())
    nonce = other_ca.challenge(enterprise_pki.web.chain.read_bytes(), now)

    with pytest.raises(NotAuthorized) as forged:
        attestor.attest(answer(nonce, enterprise_pki.web), now)
    assert str(forged.value) == FORGED


def test_an_answer_without_the_chain_says_the_agent_is_older_than_its_ca(
    attestor: X509PopAttestor, enterprise_pki: EnterprisePki, now: datetime
) -> None:
    nonce = attestor.challenge(enterprise_pki.web.chain.read_bytes(), now)
    signature = sign_challenge(host_key(enterprise_pki.web), nonce)
    old_style = json.dumps(
        {"nonce": base64.b64encode(nonce).decode(), "signature": base64.b64encode(signature).decode()}
    )

    with pytest.raises(InvalidArgument, match=r"no certificate chain .*upgrade the agent"):
        attestor.attest(old_style.encode(), now)


def test_a_host_no_rule_maps_is_refused_before_a_nonce_is_issued(enterprise_pki: EnterprisePki, now: datetime) -> None:
    trust = LegacyTrust([TrustAnchor("corp", load_certificates(enterprise_pki.root.read_bytes(), "root"))])
    bare = X509PopAttestor(TD, lambda: trust, list, MemoryChallengeLedger())
    with pytest.raises(NotAuthorized, match="no mapping rule matches"):
        bare.challenge(enterprise_pki.web.chain.read_bytes(), now)
