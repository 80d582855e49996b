"""``trustmesh-bridge``: the legacy identity bridge's tools for operators (DESIGN §5, docs/bridge.md).

``exchange`` trades a host's enterprise certificate for an X509-SVID (:mod:`bridge.cli_exchange`).

``map explain CERT --rules FILE --trust-domain TD`` says which mapping rule a certificate matches and
the SPIFFE ID it gets, or, per rule, why none does. It runs offline against a GitOps rules file (the
one ``trustmesh-ca mapping load`` applies), so a rule change can be checked before it is loaded. With
``--anchor NAME=FILE`` (and ``--crl FILE``) the chain in CERT is verified as the CA verifies it, so
rules that name a trust anchor can match.

Exit status: 0 when the certificate maps to an ID (or the exchange wrote the SVID), 1 when it does
not or on error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bridge.cli_exchange import add_exchange_command
from bridge.legacy_chain import ChainLimits, load_certificates, load_legacy_trust, read_pki_file
from bridge.mapping import LegacyIdentity, check_rule_set, explain, parse_rules_document
from spiffe_core.errors import InvalidArgument, NotAuthorized, TrustmeshError
from spiffe_core.spiffe_id import TrustDomain

PROG = "trustmesh-bridge"


def _read(path: str, what: str) -> bytes:
    return read_pki_file(Path(path), what)


def _anchor(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise InvalidArgument(f"--anchor {text!r}: give NAME=FILE, e.g. corp=/etc/pki/corp-root.pem")
    return name, Path(path)


def cmd_map_explain(args: argparse.Namespace) -> int:
    trust_domain = TrustDomain.parse(args.trust_domain)
    rules = parse_rules_document(_read(args.rules, "rules file").decode(), args.rules)
    check_rule_set(rules, trust_domain)
    chain = load_certificates(_read(args.cert, "certificate"), args.cert)
    anchor: str | None = None
    if args.anchor:
        anchors = dict(_anchor(text) for text in args.anchor)
        trust = load_legacy_trust(anchors, [Path(path) for path in args.crl], ChainLimits())
        try:
            anchor = trust.verify(chain, datetime.now(UTC)).anchor
            print(f"chain: verified to trust anchor {anchor!r}")
        except NotAuthorized as err:
            print(f"chain: refused — {err}")
    explanation = explain(LegacyIdentity.from_certificate(chain[0], anchor), rules, trust_domain)
    print("\n".join(explanation.lines()))
    return 0 if explanation.mapped is not None else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="trustmesh legacy identity bridge")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{map,exchange}")
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
