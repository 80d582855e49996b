"""A TLS client holding a certificate outside any agent (``trustmesh-ca x509 mint --out DIR``), to check
what a real Envoy accepts on NEW connections: every call opens a fresh connection and handshake."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx


def client_context(minted: Path) -> ssl.SSLContext:
    """Client TLS for the files ``x509 mint --out`` wrote into ``minted``."""
    context = ssl.create_default_context(cafile=str(minted / "bundle.pem"))
    context.check_hostname = False  # SVIDs carry SPIFFE IDs, not host names
    context.verify_mode = ssl.CERT_NONE  # the server's chain may come from a newer authority than the file
    context.load_cert_chain(str(minted / "svid.pem"), str(minted / "svid_key.pem"))
    return context


def connects(port: int, context: ssl.SSLContext) -> bool:
    """Whether a new mTLS connection to ``port`` with ``context`` gets an HTTP answer of 200."""
    try:
        with httpx.Client(verify=context, timeout=3) as client:
            return client.get(f"https://127.0.0.1:{port}/").status_code == 200
    except httpx.HTTPError:
        return False
