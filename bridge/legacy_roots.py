"""Legacy trust for proxies (DESIGN §5 "Legacy trust"): named sets of enterprise root certificates that
mesh proxies verify legacy (non-SPIFFE) TLS servers with, by DNS name.

The CA reads them from ``[bridge] legacy_roots`` (name -> PEM file), sends them to every agent in its
Sync state, and each agent serves a set to Envoy as the SDS validation context ``legacy/<name>``.
Both ends check a set with :func:`legacy_roots_pem`, so what reaches Envoy is always a small,
canonical PEM of CA certificates: a mistake in a file (a host certificate instead of its root, a
private key, a whole system trust store) is refused with the file's name instead of being NACKed by
every Envoy, and an edit that changes only whitespace or order pushes nothing.

A set may also hold CRLs (PEM ``X509 CRL`` blocks next to the certificates): the CRLs of the CAs that
issue the legacy servers' certificates. Envoy's default validator then refuses a server whose
certificate its issuer's CRL lists. With CRLs in a set, Envoy checks the server's own certificate
(``only_verify_leaf_cert_crl``) and needs a current CRL of its issuer: a server whose issuing CA has no
CRL in the set, or whose CRL is past its next update, is refused too (fail closed, as Envoy does).

Bounds: at most :data:`MAX_LEGACY_ROOT_SETS` names, each of at most :data:`MAX_LEGACY_ROOTS_BYTES`
of certificates and CRLs (:func:`bridge.legacy_chain.load_certificates`), so the Sync state and every
Envoy's validation context stay small.

Pure: bytes in, bytes out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bridge.legacy_chain import MAX_PRESENTED_BYTES, load_certificates, load_crls
from bridge.mapping import NAME_PATTERN
from spiffe_core.errors import InvalidArgument

MAX_LEGACY_ROOT_SETS = 16
# Certificates of one set, as read (PEM): some 40 roots, far more than one enterprise has.
MAX_LEGACY_ROOTS_BYTES = MAX_PRESENTED_BYTES

_CRL_BLOCK = re.compile(rb"-----BEGIN X509 CRL-----.*?-----END X509 CRL-----\s*", re.DOTALL)


def check_legacy_roots_name(name: str) -> None:
    """InvalidArgument unless ``name`` can name a set: it becomes part of the SDS name ``legacy/<name>``."""
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidArgument(
            f"legacy roots name {name[:80]!r} must be 1-64 of a-z, 0-9, '.', '_', '-' (starting with a letter or "
            "digit); Envoy asks for it as the SDS secret legacy/<name>"
        )


def legacy_roots_pem(data: bytes, what: str) -> bytes:
    """The CA certificates in ``data`` (PEM, or one DER certificate) as canonical PEM: each once, in a
    stable order, then the CRLs among them (PEM) the same way. InvalidArgument naming ``what`` when
    ``data`` holds no certificate, more than :data:`MAX_LEGACY_ROOTS_BYTES`, a certificate that is not
    a CA (Envoy would trust nothing through a leaf, and a leaf here is a misconfiguration: name the root
    that issued it), or a CRL that does not parse."""
    if len(data) > MAX_LEGACY_ROOTS_BYTES:
        raise InvalidArgument(f"{what}: {len(data)} bytes of certificates and CRLs, more than {MAX_LEGACY_ROOTS_BYTES}")
    crl_blocks = b"".join(_CRL_BLOCK.findall(data))
    certs = load_certificates(_CRL_BLOCK.sub(b"", data), what)
    if not certs:
        raise InvalidArgument(f"{what}: no certificate; give the PEM root certificate(s) of the enterprise CA")
    for cert in certs:
        if not _is_ca(cert):
            raise InvalidArgument(
                f"{what}: {cert.subject.rfc4514_string() or '(empty subject)'} is not a CA certificate; give the "
                "root (or issuing CA) certificate that signed the servers' certificates"
            )
    crls = load_crls(crl_blocks, what) if crl_blocks else ()
    cert_ders = sorted({cert.public_bytes(serialization.Encoding.DER) for cert in certs})
    crl_ders = sorted({crl.public_bytes(serialization.Encoding.DER) for crl in crls})
    return b"".join(
        x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM) for der in cert_ders
    ) + (b"".join(x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM) for der in crl_ders))


def holds_crls(roots_pem: bytes) -> bool:
    """Whether a canonical set (:func:`legacy_roots_pem`) holds CRLs."""
    return b"-----BEGIN X509 CRL-----" in roots_pem


def legacy_crls(roots_pem: bytes) -> tuple[x509.CertificateRevocationList, ...]:
    """The CRLs of a canonical set (:func:`legacy_roots_pem`)."""
    blocks = b"".join(_CRL_BLOCK.findall(roots_pem))
    return load_crls(blocks, "legacy roots") if blocks else ()


def stale_crls(roots_pem: bytes, now: datetime) -> list[str]:
    """The issuers (RFC 4514) of the CRLs in a canonical set that are past their next update at ``now``
    (or name none): Envoy refuses every server those CAs issued until a fresh CRL is served."""
    return [
        crl.issuer.rfc4514_string()
        for crl in legacy_crls(roots_pem)
        if crl.next_update_utc is None or crl.next_update_utc <= now
    ]


def check_legacy_roots(roots: Mapping[str, bytes]) -> dict[str, bytes]:
    """``roots`` (name -> PEM) checked as a whole — how many sets, each name, each set — and each set
    made canonical. InvalidArgument naming the first problem."""
    if len(roots) > MAX_LEGACY_ROOT_SETS:
        raise InvalidArgument(f"{len(roots)} sets of legacy roots; at most {MAX_LEGACY_ROOT_SETS} are served")
    result: dict[str, bytes] = {}
    for name, pem in sorted(roots.items()):
        check_legacy_roots_name(name)
        result[name] = legacy_roots_pem(pem, f"legacy roots {name!r}")
    return result


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False
