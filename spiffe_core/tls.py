"""What Python's ``ssl`` lacks for SPIFFE peers: the chain a peer sent, and an identity loaded from memory.

SPIFFE authentication (X509-SVID.md §5) verifies the peer's chain against the bundle of the peer's trust
domain and then checks its SPIFFE ID; OpenSSL is left out of it (its hostname and store checks mean
nothing for SVIDs), so the chain is read after the handshake. Python shows it publicly only from 3.13
(``get_unverified_chain``) and privately before (``_sslobj.get_unverified_chain``).
"""

from __future__ import annotations

import os
import ssl

from cryptography import x509

from spiffe_core.errors import X509SvidError

_ENCODING_DER = getattr(ssl, "_ssl").ENCODING_DER  # noqa: B009 - private module, no stubs


def unverified_peer_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> list[x509.Certificate]:
    """The chain the peer sent, leaf first. Raises X509SvidError when there is none, it cannot be read,
    or this Python cannot show it (then every peer is refused rather than half-checked)."""
    get_chain = getattr(ssl_object, "get_unverified_chain", None) or getattr(
        getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None
    )
    if get_chain is None:
        raise X509SvidError("this Python's ssl module does not show the peer's certificate chain")
    chain = get_chain()
    if not chain:
        raise X509SvidError("the peer sent no certificate")
    try:
        return [
            x509.load_der_x509_certificate(cert if isinstance(cert, bytes) else cert.public_bytes(_ENCODING_DER))
            for cert in chain
        ]
    except ValueError as err:
        raise X509SvidError(f"the peer sent an unreadable certificate: {err}") from err


def load_identity(context: ssl.SSLContext, cert_chain_pem: bytes, private_key_pem: bytes) -> None:
    """Load a certificate chain and its key into ``context`` without writing the key to any disk:
    ``ssl`` reads only files, so it reads an anonymous memory file (``memfd``) that is gone once closed."""
    fd = os.memfd_create("trustmesh-tls-identity", os.MFD_CLOEXEC)
    try:
        with open(fd, "wb", closefd=False) as file:
            file.write(private_key_pem + cert_chain_pem)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
