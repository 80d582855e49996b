"""Sets of enterprise roots for proxies (bridge/legacy_roots.py): canonical PEM of CA certificates only,
bounded in count and size, named as SDS ``legacy/<name>`` allows."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bridge.legacy_roots import (
    MAX_LEGACY_ROOT_SETS,
    MAX_LEGACY_ROOTS_BYTES,
    check_legacy_roots,
    check_legacy_roots_name,
    holds_crls,
    legacy_roots_pem,
)
from spiffe_core.errors import InvalidArgument
from tests.support.enterprise_pki import EnterprisePki


def test_roots_become_canonical_pem_each_once_in_a_stable_order(enterprise_pki: EnterprisePki) -> None:
    root, rogue = enterprise_pki.root.read_bytes(), enterprise_pki.untrusted_root.read_bytes()

    one_way = legacy_roots_pem(b"# corp roots\n" + root + b"\n\n" + rogue + root, "roots.pem")
    other_way = legacy_roots_pem(rogue + root, "roots.pem")

    assert one_way == other_way
    assert len(x509.load_pem_x509_certificates(one_way)) == 2


def test_crls_in_a_set_follow_its_certificates_each_once_in_a_stable_order(enterprise_pki: EnterprisePki) -> None:
    root, crl = enterprise_pki.root.read_bytes(), enterprise_pki.crl.read_bytes()

    one_way = legacy_roots_pem(crl + root + crl, "corp.pem")
    other_way = legacy_roots_pem(root + b"\n" + crl, "corp.pem")

    assert one_way == other_way == legacy_roots_pem(root, "corp.pem") + crl
    assert holds_crls(one_way)
    assert not holds_crls(legacy_roots_pem(root, "corp.pem"))


def test_a_crl_that_does_not_parse_is_refused(enterprise_pki: EnterprisePki) -> None:
    broken = b"-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n"

    with pytest.raises(InvalidArgument, match=r"^corp\.pem: not a PEM or DER CRL"):
        legacy_roots_pem(enterprise_pki.root.read_bytes() + broken, "corp.pem")


def test_a_der_root_is_accepted_as_pem(enterprise_pki: EnterprisePki) -> None:
    cert = x509.load_pem_x509_certificate(enterprise_pki.root.read_bytes())

    assert legacy_roots_pem(cert.public_bytes(serialization.Encoding.DER), "root.der") == cert.public_bytes(
        serialization.Encoding.PEM
    )


def test_a_host_certificate_is_refused_naming_it(enterprise_pki: EnterprisePki) -> None:
    with pytest.raises(InvalidArgument) as refused:
        legacy_roots_pem(enterprise_pki.root.read_bytes() + enterprise_pki.web.cert.read_bytes(), "corp.pem")

    assert str(refused.value) == (
        "corp.pem: CN=web01.payments.corp.example.com,O=Example Corp is not a CA certificate; give the root (or "
        "issuing CA) certificate that signed the servers' certificates"
    )


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", id="broken-pem"),
        pytest.param(b"\x30\x03\x02\x01\x01", id="broken-der"),
    ],
)
def test_what_holds_no_certificate_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidArgument, match=r"^corp\.pem: "):
        legacy_roots_pem(data, "corp.pem")


def test_more_than_the_size_bound_is_refused(enterprise_pki: EnterprisePki) -> None:
    root = enterprise_pki.root.read_bytes()
    many = root * (MAX_LEGACY_ROOTS_BYTES // len(root) + 1)

    with pytest.raises(InvalidArgument, match="bytes of certificates and CRLs, more than"):
        legacy_roots_pem(many, "system-bundle.pem")


@pytest.mark.parametrize("name", ["Corp", "corp/x", "", "-corp", "c" * 65, "legacy/corp"])
def test_names_that_cannot_follow_legacy_slash_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument, match="must be 1-64 of a-z, 0-9"):
        check_legacy_roots_name(name)


def test_sets_are_checked_as_a_whole_and_made_canonical(enterprise_pki: EnterprisePki) -> None:
    root = enterprise_pki.root.read_bytes()

    assert check_legacy_roots({"corp": b"\n" + root}) == {"corp": legacy_roots_pem(root, "corp")}


def test_more_sets_than_the_bound_are_refused(enterprise_pki: EnterprisePki) -> None:
    root = enterprise_pki.root.read_bytes()

    with pytest.raises(InvalidArgument, match=f"at most {MAX_LEGACY_ROOT_SETS} are served"):
        check_legacy_roots({f"corp{i}": root for i in range(MAX_LEGACY_ROOT_SETS + 1)})
