"""Who is at the other end of a connection: a Unix socket peer's kernel credentials, a TLS peer's chain.

Both the agent (its Workload API, its TLS to the CA) and the CA (its admin API on a Unix socket and
over HTTPS) ask these questions of plain sockets and ``ssl`` objects; the answers live here so
neither package imports the other.
"""

from __future__ import annotations

import socket
import ssl
import struct
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from spiffe_core.errors import X509SvidError

_PEERCRED = struct.Struct("3i")
_ENCODING_DER = getattr(ssl, "_ssl").ENCODING_DER  # noqa: B009 - private module, no stubs


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """What the kernel reports about the process at the other end of a Unix socket (``SO_PEERCRED``)."""

    pid: int
    uid: int
    gid: int


def read_peer_credentials(sock: socket.socket | Any) -> PeerCredentials:
    """The pid, uid and gid the kernel recorded for the process that connected ``sock`` (a socket, or
    asyncio's ``TransportSocket`` wrapper of one)."""
    pid, uid, gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return PeerCredentials(pid, uid, gid)


def peer_certificate_chain(ssl_object: Any) -> tuple[x509.Certificate, ...]:
    """The chain the TLS peer sent, leaf first, exactly as sent (not as OpenSSL completed it).

    ``ssl_object`` is an ``ssl.SSLObject``/``ssl.SSLSocket`` or the ``_ssl`` object inside one (what
    httpcore reports as ``ssl_object``). Python shows the sent chain publicly only from 3.13
    (``get_unverified_chain``); before, the same method exists on the private ``_sslobj``. On the server
    side CPython puts the client's leaf first, as OpenSSL itself does not. Returns ``()`` when the peer
    sent no certificate; raises X509SvidError when a certificate cannot be read or this Python cannot
    show the chain at all (then every peer is refused rather than half-checked)."""
    get_chain = getattr(ssl_object, "get_unverified_chain", None) or getattr(
        getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None
    )
    if get_chain is None:
        raise X509SvidError("this Python's ssl module does not show the peer's certificate chain")
    # Python 3.11's server side reports a client that sent nothing as [None].
    chain = [cert for cert in get_chain() or () if cert is not None]
    try:
        return tuple(
            x509.load_der_x509_certificate(cert if isinstance(cert, bytes) else cert.public_bytes(_ENCODING_DER))
            for cert in chain
        )
    except ValueError as err:
        raise X509SvidError(f"the peer sent an unreadable certificate: {err}") from err
