"""What ``trustmesh-bridge exchange`` leaves on the host: the exchanged X509-SVID as PEM files, and on
request as PKCS#12 for applications (Java, .NET, appliances) that load a keystore.

In the output directory:

* ``svid.pem``: the SVID, leaf first, then any intermediates (never a root) — what a TLS server sends;
* ``svid_key.pem``: its private key (PKCS#8 PEM, unencrypted), 0600 from the first byte;
* ``bundle.pem``: the trust domain's X.509 roots, for the clients and peers that verify the SVID;
* ``svid.p12`` (``--p12``): key, leaf and intermediates, 0600. With a password the key and
  certificates are encrypted with PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC) and the file is MACed with
  HMAC-SHA256; without one the password is empty and nothing in the file is encrypted (it is then as
  secret as ``svid_key.pem``, and protected only by its mode).

Every file is replaced atomically, and only after the CA answered: a refused exchange writes nothing.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from bridge.exchange import ExchangeReply
from spiffe_core.files import write_atomically
from spiffe_core.keys import PrivateKey

SVID_FILE = "svid.pem"
KEY_FILE = "svid_key.pem"
BUNDLE_FILE = "bundle.pem"
P12_FILE = "svid.p12"
# PBKDF2 rounds of an encrypted PKCS#12 (the application pays them once per load).
P12_KDF_ROUNDS = 100_000
_PEM = serialization.Encoding.PEM


def pkcs12_bytes(reply: ExchangeReply, key: PrivateKey, password: bytes | None) -> bytes:
    """The SVID as PKCS#12 (module docstring); ``password`` None: the empty password, nothing encrypted."""
    encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if password is not None:
        encryption = (
            serialization.PrivateFormat.PKCS12.encryption_builder()
            .kdf_rounds(P12_KDF_ROUNDS)
            .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
            .hmac_hash(hashes.SHA256())
            .build(password)
        )
    leaf, intermediates = reply.cert_chain[0], list(reply.cert_chain[1:])
    return pkcs12.serialize_key_and_certificates(
        str(reply.spiffe_id).encode(), key, leaf, intermediates or None, encryption
    )


def write_exchanged(
    out: Path, reply: ExchangeReply, key: PrivateKey, *, p12: bool = False, p12_password: bytes | None = None
) -> list[Path]:
    """Write the files of the module docstring into ``out`` (created if missing); return their paths."""
    key_pem = key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    files = [
        (out / KEY_FILE, key_pem, 0o600),
        (out / SVID_FILE, b"".join(cert.public_bytes(_PEM) for cert in reply.cert_chain), 0o644),
        (out / BUNDLE_FILE, b"".join(cert.public_bytes(_PEM) for cert in reply.bundle), 0o644),
    ]
    if p12:
        files.append((out / P12_FILE, pkcs12_bytes(reply, key, p12_password), 0o600))
    for path, data, mode in files:
        write_atomically(path, data, mode)
    return [path for path, _, _ in files]
