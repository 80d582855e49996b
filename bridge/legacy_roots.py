"""Legacy trust for proxies (DESIGN §5 "Legacy trust"): named sets of enterprise root certificates that
mesh proxies verify legacy (non-SPIFFE) TLS servers with, by DNS name.

The CA reads them from ``[bridge] legacy_roots`` (name -> PEM file), sends them to every agent in its
Sync state, and each agent serves a set to Envoy as the SDS validation context ``legacy/<name>``.
Both ends check a set with :func:`legacy_roots_pem`, so what reaches Envoy is always a small,
canonical PEM of CA certificates: a mistake in a file (a host certificate instead of its root, a
private key, a whole system trust store) is refused with the file's name instead of being NACKed by
every Envoy, and an edit that changes only whitespace or order pushes nothing.

Bounds: at most :data:`MAX_LEGACY_ROOT_SETS` names, each of at most :data:`MAX_LEGACY_ROOTS_BYTES`
of certificates (:func:`bridge.legacy_chain.load_certificates`), so the Sync state and every Envoy's
validation context stay small.

Pure: bytes in, bytes out.
"""

from __future__ import annotations

from collections.abc import Mapping

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bridge.legacy_chain import MAX_PRESENTED_BYTES, load_certificates
from bridge.mapping import NAME_PATTERN
from spiffe_core.errors import InvalidArgument

MAX_LEGACY_ROOT_SETS = 16
# Certificates of one set, as read (PEM): some 40 roots, far more than one enterprise has.
MAX_LEGACY_ROOTS_BYTES = MAX_PRESENTED_BYTES


def check_legacy_roots_name(name: str) -> None:
    """InvalidArgument unless ``name`` can name a set: it becomes part of the SDS name ``legacy/<name>``."""
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidArgument(
            f"legacy roots name {name[:80]!r} must be 1-64 of a-z, 0-9, '.', '_', '-' (starting with a letter or "
            "digit); Envoy asks for it as the SDS secret legacy/<name>"
        )


def legacy_roots_pem(data: bytes, what: str) -> bytes:
    """The CA certificates in ``data`` (PEM, or one DER certificate) as canonical PEM: each once, in a
    stable order. InvalidArgument naming ``what`` when ``data`` holds no certificate, more than
    :data:`MAX_LEGACY_ROOTS_BYTES`, or a certificate that is not a CA (Envoy would trust nothing
    through a leaf, and a leaf here is a misconfiguration: name the root that issued it)."""
    certs = load_certificates(data, what)
    if not certs:
        raise InvalidArgument(f"{what}: no certificate; give the PEM root certificate(s) of the enterprise CA")
    for cert in certs:
        if not _is_ca(cert):
            raise InvalidArgument(
                f"{what}: {cert.subject.rfc4514_string() or '(empty subject)'} is not a CA certificate; give the "
                "root (or issuing CA) certificate that signed the servers' certificates"
            )
    ders = sorted({cert.public_bytes(serialization.Encoding.DER) for cert in certs})
    return b"".join(x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM) for der in ders)


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
