"""What Python's ``ssl`` lacks for serving SVIDs: an identity loaded from memory. (The chain a peer
sent, which SPIFFE authentication verifies itself, is :func:`spiffe_core.peers.peer_certificate_chain`.)
"""

from __future__ import annotations

import os
import ssl


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
