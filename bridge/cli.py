"""``trustmesh-bridge``: the legacy identity bridge's tools for operators (DESIGN §5, docs/bridge.md).

``exchange`` trades a host's enterprise certificate for an X509-SVID (:mod:`bridge.cli_exchange`).

``map explain CERT --rules FILE --trust-domain TD`` says which mapping rule a certificate matches and
the SPIFFE ID it gets, or, per rule, why none does. It runs offline against a GitOps rules file (the
one ``trustmesh-ca mapping load`` applies), so a rule change can be checked before it is loaded. With
``--anchor NAME=FILE`` (and ``--crl FILE``) the chain in CERT is verified as the CA verifies it, so
rules that name a trust anchor can match.

``enroll --host NAME --method x509pop|join-token --out DIR …`` writes what config management installs
on a brownfield host: the agent's configuration, its trust bundle, a one-time join token and a
hardened systemd unit (bridge/cli_enroll.py, docs/vm-onboarding.md).

Exit status: 0 when the certificate maps to an ID (``map explain``), the files are written
(``enroll``) or the exchange wrote the SVID (``exchange``), 1 when it does not or on error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bridge.cert_explain import explain_certificate
from bridge.cli_enroll import add_enroll_command
from bridge.cli_exchange import add_exchange_command
from bridge.legacy_chain import load_certificates, read_pki_file
from spiffe_core.errors import TrustmeshError
from spiffe_core.spiffe_id import TrustDomain

PROG = "trustmesh-bridge"


def cmd_map_explain(args: argparse.Namespace) -> int:
    chain = load_certificates(read_pki_file(Path(args.cert), "certificate"), args.cert)
    report = explain_certificate(
        chain, Path(args.rules), TrustDomain.parse(args.trust_domain), args.anchor, [Path(p) for p in args.crl]
    )
    print("\n".join(report.lines()))
    return 0 if report.explanation.mapped is not None else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="trustmesh legacy identity bridge")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{map,enroll,exchange}")
    mapping = commands.add_parser("map", help="identity mapping rules").add_subparsers(
        dest="sub", required=True, metavar="{explain}"
    )
    explain_cmd = mapping.add_parser("explain", help="which rule maps a certificate, and to which SPIFFE ID")
    explain_cmd.add_argument("cert", help="PEM certificate (leaf first, then its chain)")
    explain_cmd.add_argument("--rules", required=True, help="rules file, TOML [[rule]] tables or a JSON list")
    explain_cmd.add_argument("--trust-domain", required=True, help="the CA's trust domain, e.g. example.org")
    explain_cmd.add_argument("--anchor", action="append", default=[], help="NAME=FILE: verify the chain to it")
    explain_cmd.add_argument("--crl", action="append", default=[], help="enterprise CRL file (with --anchor)")
    explain_cmd.set_defaults(func=cmd_map_explain)
    add_enroll_command(commands)
    add_exchange_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except TrustmeshError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
