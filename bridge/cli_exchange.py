"""``trustmesh-bridge exchange``: trade the host's enterprise certificate for an X509-SVID of its mapped
SPIFFE ID, without an agent (docs/bridge.md "Agentless exchange"; the protocol is :mod:`bridge.exchange`).

Everything local is read and checked before the CA is called (the bundle, the certificate, that the
key is the certificate's, the PKCS#12 password file), so a typo costs no round trip and no audit
record. The SVID's key is generated here and never leaves the host. Files are written only once the
CA answered (:mod:`bridge.exchange_files`). Run it again before the SVID expires, e.g. from a systemd
timer, and reload the application afterwards.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from bridge.exchange import ExchangeRequest
from bridge.exchange_client import ExchangeServer, exchange
from bridge.exchange_files import KEY_FILE, P12_FILE, write_exchanged
from bridge.legacy_chain import load_certificates, read_pki_file
from bridge.possession import load_signing_key
from spiffe_core.bundle import Bundle
from spiffe_core.errors import InvalidArgument, X509SvidError
from spiffe_core.keys import KeyType, generate_private_key
from spiffe_core.spiffe_id import TrustDomain
from spiffe_core.x509_svid import validate_signing_cert

MAX_PASSWORD_FILE_BYTES = 1024


def trust_domain_of(roots: Sequence[x509.Certificate], path: str) -> TrustDomain:
    """The trust domain the bundle's roots name in their URI SAN (the CA's self-signed roots do);
    InvalidArgument asking for ``--trust-domain`` when they name none or several."""
    named: set[TrustDomain] = set()
    for root in roots:
        try:
            trust_domain = validate_signing_cert(root)
        except X509SvidError:
            continue
        if trust_domain is not None:
            named.add(trust_domain)
    if len(named) != 1:
        found = ", ".join(sorted(td.name for td in named)) or "none"
        raise InvalidArgument(
            f"--bundle {path}: its roots name {'no trust domain' if not named else 'several: ' + found}; pass "
            "--trust-domain with the CA's trust domain"
        )
    return named.pop()


def read_password_file(path: Path) -> bytes:
    """The PKCS#12 password: the file's content without one trailing newline; never empty."""
    data = read_pki_file(path, "--p12-password-file")
    if len(data) > MAX_PASSWORD_FILE_BYTES:
        raise InvalidArgument(f"--p12-password-file {path} is larger than {MAX_PASSWORD_FILE_BYTES} bytes")
    password = data.removesuffix(b"\n").removesuffix(b"\r")
    if not password:
        raise InvalidArgument(
            f"--p12-password-file {path} is empty; put the password in it, or leave the option out for an "
            "unencrypted svid.p12 with an empty password"
        )
    return password


def cmd_exchange(args: argparse.Namespace) -> int:
    roots = load_certificates(read_pki_file(Path(args.bundle), "--bundle"), args.bundle)
    trust_domain = TrustDomain.parse(args.trust_domain) if args.trust_domain else trust_domain_of(roots, args.bundle)
    chain = load_certificates(read_pki_file(Path(args.cert), "--cert"), args.cert)
    key = load_signing_key(read_pki_file(Path(args.key), "--key"), f"--key {args.key}")
    if key.public_key() != chain[0].public_key():
        raise InvalidArgument(f"--key {args.key} is not the key of the certificate in --cert {args.cert}")
    password = None if args.p12_password_file is None else read_password_file(Path(args.p12_password_file))
    if password is not None and not args.p12:
        raise InvalidArgument("--p12-password-file is for --p12; add --p12 or leave the password file out")
    svid_key = generate_private_key(KeyType.parse(args.key_type))
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(svid_key, hashes.SHA256())
    server = ExchangeServer(args.server, Bundle(trust_domain, roots))
    reply = exchange(server, ExchangeRequest.make(chain, key, csr, server.spiffe_id, datetime.now(UTC)))
    written = write_exchanged(Path(args.out), reply, svid_key, p12=args.p12, p12_password=password)
    leaf = reply.cert_chain[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    print(f"SPIFFE ID: {reply.spiffe_id} (rule {reply.rule!r})")
    print(f"DNS SANs: {', '.join(san.get_values_for_type(x509.DNSName)) or '(none)'}")
    print(f"subject: {leaf.subject.rfc4514_string()}")
    print(f"valid until: {reply.expires_at.isoformat()} (serial {reply.serial:x}); exchange again before then")
    print(f"wrote: {', '.join(str(path) for path in written)}")
    if args.p12 and password is None:
        print(
            f"note: {P12_FILE} has an empty password and is not encrypted; it is as secret as {KEY_FILE} "
            "(0600). Pass --p12-password-file to encrypt it.",
            file=sys.stderr,
        )
    return 0


def add_exchange_command(commands: Any) -> None:
    """Register ``exchange`` under ``trustmesh-bridge`` (``commands``: its subparsers)."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "exchange",
        help="trade this host's enterprise certificate for an X509-SVID (no agent needed)",
        description="Present the enterprise certificate to the CA's agentless exchange and write the X509-SVID "
        "of its mapped SPIFFE ID, which keeps the DNS SANs and CN the mapping rule says.",
    )
    parser.add_argument("--server", required=True, help="the CA's exchange listener, HOST:PORT")
    parser.add_argument("--bundle", required=True, help="PEM roots of the trust domain (trustmesh-ca bundle show)")
    parser.add_argument("--cert", required=True, help="the enterprise certificate, PEM, leaf first then its chain")
    parser.add_argument("--key", required=True, help="its private key, unencrypted PEM; never sent")
    parser.add_argument("--out", required=True, help="directory for svid.pem, svid_key.pem, bundle.pem (and svid.p12)")
    parser.add_argument("--trust-domain", help="the CA's trust domain (default: the one the bundle's roots name)")
    parser.add_argument(
        "--key-type",
        default=KeyType.EC_P256.value,
        help=f"the SVID's key: {', '.join(k.value for k in KeyType)} (default ec-p256; RSA for very old clients)",
    )
    parser.add_argument("--p12", action="store_true", help="also write svid.p12 (PKCS#12)")
    parser.add_argument("--p12-password-file", help="encrypt svid.p12 with the password in this file")
    parser.set_defaults(func=cmd_exchange)
