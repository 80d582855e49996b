"""``trustmesh-ca``: run the CA, and talk to a running one over its local admin socket.

Every failure is one line on stderr and a non-zero exit: 2 for a usage error (argparse), 1 for
anything the CA or the input refused. Private keys are generated here, on the caller's machine, and
only a CSR goes to the CA.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.admin_client import AdminClient
from ca.config import CaConfig, default_config_toml, load_config, parse_duration
from ca.files import write_private_file, write_public_file
from ca.signing import digest_for
from spiffe_core.errors import TrustmeshError
from spiffe_core.keys import KeyType, generate_private_key
from spiffe_core.spiffe_id import SpiffeId

PROG = "trustmesh-ca"
CONFIG_ENV = "TRUSTMESH_CONFIG"


def _config(args: argparse.Namespace) -> CaConfig:
    path = args.config or os.environ.get(CONFIG_ENV)
    return load_config(Path(path) if path else None, os.environ)


def _client(args: argparse.Namespace) -> AdminClient:
    socket_path = Path(args.socket) if args.socket else _config(args).server.admin_socket
    return AdminClient(socket_path)


def cmd_run(args: argparse.Namespace) -> int:
    from ca.server import serve  # the server's imports (uvicorn, grpc) are not needed by other commands

    config = _config(args)
    logging.basicConfig(level=config.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(config))
    return 0


def cmd_config_init(_args: argparse.Namespace) -> int:
    sys.stdout.write(default_config_toml())
    return 0


def cmd_bundle_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        response = client.request("GET", "/v1/bundle", params={"format": args.format})
    sys.stdout.write(response.text if response.text.endswith("\n") else response.text + "\n")
    return 0


def cmd_x509_mint(args: argparse.Namespace) -> int:
    spiffe_id = SpiffeId.parse(args.spiffe_id)
    key = generate_private_key(KeyType.parse(args.key_type))
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, digest_for(key))
    body: dict[str, object] = {
        "csr_pem": csr.public_bytes(serialization.Encoding.PEM).decode(),
        "spiffe_id": str(spiffe_id),
        "dns_names": list(args.dns),
    }
    if args.ttl:
        body["ttl_seconds"] = int(parse_duration(args.ttl).total_seconds())
    with _client(args) as client:
        reply = client.post_json("/v1/x509-svids", body)
    out = Path(args.out)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private_file(out / "svid_key.pem", key_pem)
    write_public_file(out / "svid.pem", reply["cert_chain_pem"].encode())
    write_public_file(out / "bundle.pem", reply["bundle_pem"].encode())
    print(f"{reply['spiffe_id']} serial {reply['serial']} expires {reply['expires_at']}")
    print(f"wrote {out / 'svid.pem'}, {out / 'svid_key.pem'} (0600), {out / 'bundle.pem'}")
    return 0


def cmd_jwt_mint(args: argparse.Namespace) -> int:
    body: dict[str, object] = {"spiffe_id": str(SpiffeId.parse(args.spiffe_id)), "audience": list(args.audience)}
    if args.ttl:
        body["ttl_seconds"] = int(parse_duration(args.ttl).total_seconds())
    with _client(args) as client:
        reply = client.post_json("/v1/jwt-svids", body)
    print(reply["token"])
    return 0


def cmd_healthcheck(args: argparse.Namespace) -> int:
    with _client(args) as client:
        response = client.request("GET", "/ready")
    print(response.text.strip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="trustmesh certificate authority")
    parser.add_argument("--config", help=f"TOML config file (default: ${CONFIG_ENV}, else built-in defaults)")
    parser.add_argument("--socket", help="admin socket of a running CA (default: from the config)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("run", help="run the CA server").set_defaults(func=cmd_run)
    healthcheck = commands.add_parser("healthcheck", help="exit 0 when the running CA is ready")
    healthcheck.set_defaults(func=cmd_healthcheck)

    config = commands.add_parser("config", help="configuration helpers").add_subparsers(dest="sub", required=True)
    config.add_parser("init", help="print a commented default config").set_defaults(func=cmd_config_init)

    bundle = commands.add_parser("bundle", help="trust bundle").add_subparsers(dest="sub", required=True)
    show = bundle.add_parser("show", help="print the trust domain's bundle")
    show.add_argument("--format", choices=("pem", "spiffe"), default="pem")
    show.set_defaults(func=cmd_bundle_show)

    x509_cmd = commands.add_parser("x509", help="X509-SVIDs").add_subparsers(dest="sub", required=True)
    mint = x509_cmd.add_parser("mint", help="generate a key here and have the CA sign an X509-SVID for it")
    mint.add_argument("--spiffe-id", required=True)
    mint.add_argument("--dns", action="append", default=[], help="DNS SAN (repeatable)")
    mint.add_argument("--ttl", help="lifetime, e.g. 1h or 300 (default: x509_svid.default_ttl)")
    mint.add_argument("--key-type", default=KeyType.EC_P256.value, choices=[k.value for k in KeyType])
    mint.add_argument("--out", required=True, help="directory for svid.pem, svid_key.pem and bundle.pem")
    mint.set_defaults(func=cmd_x509_mint)

    jwt_cmd = commands.add_parser("jwt", help="JWT-SVIDs").add_subparsers(dest="sub", required=True)
    jwt_mint = jwt_cmd.add_parser("mint", help="mint a JWT-SVID and print it")
    jwt_mint.add_argument("--spiffe-id", required=True)
    jwt_mint.add_argument("--audience", action="append", required=True, help="audience (repeatable)")
    jwt_mint.add_argument("--ttl", help="lifetime, e.g. 5m (default: jwt_svid.default_ttl)")
    jwt_mint.set_defaults(func=cmd_jwt_mint)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except TrustmeshError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
