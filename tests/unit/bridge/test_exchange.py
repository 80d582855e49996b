"""bridge/exchange.py: a host that signs the exchange statement with its enterprise key gets its mapped
identity; everything else is refused with x509pop's reasons, and the statement binds the CA, the CSR
and the time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from bridge.exchange import MAX_CLOCK_SKEW, MAX_REQUEST_BYTES, ExchangeReply, ExchangeRequest, ExchangeVerifier
from bridge.legacy_chain import LegacyTrust, TrustAnchor, load_certificates, load_crls
from bridge.mapping import KeepDns, MappingRule, Match
from bridge.possession import SigningKey, load_signing_key
from spiffe_core.errors import InvalidArgument, NotAuthorized
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.enterprise_pki import REFUSED_HOSTS, EnterprisePki, HostFiles

TD = TrustDomain.parse("example.org")
CA = SpiffeId.parse("spiffe://example.org/trustmesh/server")
RULES = [
    MappingRule("payments", Match(dns="*.payments.corp.example.com"), "/legacy/payments/{host}"),
    MappingRule("data", Match(dns="*.data.corp.example.com"), "/legacy/data/{host}", KeepDns.NONE, keep_cn=False),
    MappingRule("deep", Match(dns="deep01.corp.example.com"), "/legacy/deep"),
]


@pytest.fixture
def now(enterprise_pki: EnterprisePki) -> datetime:
    """The time of the exchange: after the (session-wide) enterprise PKI was issued."""
    return datetime.now(UTC)


class Ledger:
    """The statements spent, as the CA's datastore keeps them: digest -> kept until."""

    def __init__(self) -> None:
        self.spent: dict[str, datetime] = {}

    def spend(self, digest: str, until: datetime) -> bool:
        return self.spent.setdefault(digest, until) is until


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture
def verifier(enterprise_pki: EnterprisePki, ledger: Ledger) -> ExchangeVerifier:
    trust = LegacyTrust(
        [TrustAnchor("corp", load_certificates(enterprise_pki.root.read_bytes(), "root"))],
        load_crls(enterprise_pki.crl.read_bytes(), "crl"),
    )
    return ExchangeVerifier(TD, CA, lambda: trust, lambda: RULES, ledger.spend)


def csr() -> x509.CertificateSigningRequest:
    key = ec.generate_private_key(ec.SECP256R1())
    return x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())


def host_key(host: HostFiles) -> SigningKey:
    return load_signing_key(host.key.read_bytes(), str(host.key))


def request(host: HostFiles, now: datetime, *, key: SigningKey | None = None, server: SpiffeId = CA) -> ExchangeRequest:
    chain = load_certificates(host.chain.read_bytes(), str(host.chain))
    return ExchangeRequest.make(chain, key or host_key(host), csr(), server, now)


def test_an_ec_host_maps_to_its_id_keeping_the_matched_dns_sans_and_its_cn(
    verifier: ExchangeVerifier, enterprise_pki: EnterprisePki, now: datetime
) -> None:
    exchanged = verifier.verify(request(enterprise_pki.web, now), now)

    assert exchanged.verified.anchor == "corp"
    assert (exchanged.mapped.rule, str(exchanged.mapped.spiffe_id)) == (
        "payments",
        "spiffe://example.org/legacy/payments/web01",
    )
    assert exchanged.mapped.dns_names == ("web01.payments.corp.example.com",)
    assert exchanged.mapped.common_name == "web01.payments.corp.example.com"


def test_an_rsa_host_whose_rule_keeps_no_names_maps_without_them(
    verifier: ExchangeVerifier, enterprise_pki: EnterprisePki, now: datetime
) -> None:
    mapped = verifier.verify(request(enterprise_pki.db, now), now).mapped

    assert (str(mapped.spiffe_id), mapped.dns_names, mapped.common_name) == (
        "spiffe://example.org/legacy/data/db01",
        (),
        None,
    )


@pytest.mark.parametrize(("host", "reason"), REFUSED_HOSTS)
def test_refused_chains_say_which_check_failed_as_x509pop_does(
    verifier: ExchangeVerifier, enterprise_pki: EnterprisePki, host: str, reason: str, now: datetime
) -> None:
    with pytest.raises(NotAuthorized, match=f"^{reason}: "):
        verifier.verify(request(getattr(enterprise_pki, host), now), now)


def test_a_statement_signed_by_another_key_is_refused(
    verifier: ExchangeVerifier, enterprise_pki: EnterprisePki, now: datetime
) -> None:
    forged = request(enterprise_pki.web, now, key=host_key(enterprise_pki.db))

    with pytest.raises(NotAuthorized, match=r"^proof of possession failed: .*\(--key\) must be the key"):
        verifier.verify(forged, now)


def test_a_statement_for_another_ca_is_refused(
    verifier: ExchangeVerifier, enterprise_pki: EnterprisePki, now: datetime
) -> None:
    elsewhere = request(enterprise_pki.web, now, server=SpiffeId.parse("spiffe://other.org/trustmesh/server"))

    with pytest.raises(NotAuthorized, match=r"^proof of possession failed"):
        verifier.verify(elsewhere, now)


def test_a_signature_does_not_carry_over_to_another_csr(
    verifier: ExchangeVerifier, enterprise_pki: EnterprisePki, now: datetime
) -> None:
    signed = request(enterprise_pki.web, now)
    swapped = ExchangeRequest(signed.chain, csr(), signed.issued_at, signed.signature)

    with pytest.raises(NotAuthorized, match=r"^proof of possession failed"):
        verifier.verify(swapped, now)


@pytest.mark.parametrize("off", [-MAX_CLOCK_SKEW - timedelta(seconds=1), MAX_CLOCK_SKEW + timedelta(seconds=1)])
def test_a_statement_signed_outside_the_clock_window_is_refused(
    verifier: ExchangeVerifier, enterprise_pki: EnterprisePki, now: datetime, off: timedelta
) -> None:
    with pytest.raises(NotAuthorized, match=r"^clock skew: the exchange was signed 301 s away"):
        verifier.verify(request(enterprise_pki.web, now + off), now)


def test_a_statement_is_accepted_once_and_kept_until_it_would_be_too_old(
    verifier: ExchangeVerifier, enterprise_pki: EnterprisePki, now: datetime, ledger: Ledger
) -> None:
    signed = request(enterprise_pki.web, now)
    verifier.verify(signed, now)

    with pytest.raises(NotAuthorized, match=r"^this exchange statement was accepted already"):
        verifier.verify(signed, now)
    signed_at = datetime.fromtimestamp(signed.issued_at, UTC)
    assert list(ledger.spent.values()) == [signed_at + MAX_CLOCK_SKEW + timedelta(seconds=1)]


def test_a_refused_statement_is_not_spent(
    verifier: ExchangeVerifier, enterprise_pki: EnterprisePki, now: datetime, ledger: Ledger
) -> None:
    with pytest.raises(NotAuthorized):
        verifier.verify(request(enterprise_pki.web, now, key=host_key(enterprise_pki.db)), now)

    assert ledger.spent == {}


def test_a_request_survives_its_encoding(enterprise_pki: EnterprisePki, now: datetime) -> None:
    sent = request(enterprise_pki.web, now)

    assert ExchangeRequest.decode(sent.encode()) == sent


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        pytest.param(b"not json", "is not JSON with chain_pem", id="not-json"),
        pytest.param(b'{"chain_pem": "x", "csr_pem": "y", "signature": ""}', "is not JSON with", id="no-time"),
        pytest.param(
            b'{"chain_pem": "x", "csr_pem": "y", "issued_at": "now", "signature": ""}', "is not JSON", id="text-time"
        ),
        pytest.param(b" " * (MAX_REQUEST_BYTES + 1), "is larger than", id="too-large"),
    ],
)
def test_a_malformed_request_is_refused(body: bytes, problem: str) -> None:
    with pytest.raises(InvalidArgument, match=problem):
        ExchangeRequest.decode(body)


def test_a_request_whose_csr_is_not_one_is_refused(enterprise_pki: EnterprisePki, now: datetime) -> None:
    body = request(enterprise_pki.web, now).encode().replace(b"CERTIFICATE REQUEST", b"CERTIFICATE THING")

    with pytest.raises(InvalidArgument, match="csr_pem is not a PEM PKCS#10 request"):
        ExchangeRequest.decode(body)


def test_a_reply_survives_its_encoding(enterprise_pki: EnterprisePki) -> None:
    chain = load_certificates(enterprise_pki.web.chain.read_bytes(), "web")
    root = load_certificates(enterprise_pki.root.read_bytes(), "root")
    reply = ExchangeReply(
        SpiffeId.parse("spiffe://example.org/a"), "r", 0xABC, datetime(2030, 1, 1, tzinfo=UTC), chain, root
    )

    assert ExchangeReply.decode(reply.encode()) == reply
