"""``trustmesh-ca federation create|list|show|refresh|delete``: the operator's commands for federation
relationships (DESIGN §3 "Federation"; docs/federation.md), over the admin API routes of
:mod:`ca.federation.http`. ``--json`` prints the CA's reply instead of the human form."""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ca.cli_authorities import AdminApi
from spiffe_core.spiffe_id import TrustDomain

ClientFactory = Callable[[argparse.Namespace], AdminApi]
_BASE = "/v1/federation/relationships"


def _or_dash(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def relationship_table(relationships: Sequence[Mapping[str, Any]]) -> list[str]:
    """The rows of ``federation list``: trust domain, profile, sequence, last success, next refresh, error."""
    rows = [("TRUST DOMAIN", "PROFILE", "SEQUENCE", "LAST SUCCESS", "NEXT REFRESH", "LAST ERROR")]
    rows += [
        (
            r["trust_domain"],
            r["profile"],
            _or_dash(r["bundle_sequence"]),
            _or_dash(r["last_success_at"]),
            _or_dash(r["next_refresh_at"]),
            _or_dash(r["last_error"]),
        )
        for r in relationships
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def relationship_lines(relationship: Mapping[str, Any]) -> list[str]:
    rows = (
        ("Trust domain", relationship["trust_domain"]),
        ("Endpoint URL", relationship["bundle_endpoint_url"]),
        ("Profile", relationship["profile"]),
        ("Endpoint ID", _or_dash(relationship["endpoint_spiffe_id"])),
        ("Created", relationship["created_at"]),
        ("Bundle sequence", _or_dash(relationship["bundle_sequence"])),
        ("Authorities", f"{relationship['x509_authorities']} X.509, {relationship['jwt_authorities']} JWT"),
        ("Last attempt", _or_dash(relationship["last_attempt_at"])),
        ("Last success", _or_dash(relationship["last_success_at"])),
        ("Next refresh", _or_dash(relationship["next_refresh_at"])),
        ("Last error", _or_dash(relationship["last_error"])),
    )
    return [f"{label:<16}: {value}" for label, value in rows]


def _path(trust_domain: str, suffix: str = "") -> str:
    """The relationship's URL path; a malformed trust domain is refused here (InvalidArgument, with
    the fix), before anything is sent, and can never change the path it is put into."""
    return f"{_BASE}/{TrustDomain.parse(trust_domain).name}{suffix}"


def _print(document: Any, as_json: bool, human: Callable[[Any], list[str]]) -> None:
    print(json.dumps(document, indent=2, sort_keys=True) if as_json else "\n".join(human(document)))


def cmd_create(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    body: dict[str, Any] = {
        "trust_domain": TrustDomain.parse(args.trust_domain).name,
        "bundle_endpoint_url": args.url,
        "profile": args.profile,
        "endpoint_spiffe_id": args.endpoint_spiffe_id,
        "bootstrap_bundle": None if args.bundle_file is None else Path(args.bundle_file).read_text(encoding="utf-8"),
    }
    with client_factory(args) as client:
        created = client.post_json(_BASE, body)
    _print(created, args.json, relationship_lines)
    return 0


def cmd_list(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory(args) as client:
        relationships = client.get_json(_BASE)["relationships"]
    _print(relationships, args.json, relationship_table)
    return 0


def cmd_show(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory(args) as client:
        relationship = client.get_json(_path(args.trust_domain))
    _print(relationship, args.json, relationship_lines)
    return 0


def cmd_refresh(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory(args) as client:
        relationship = client.post_json(_path(args.trust_domain, "/refresh"), {})
    if args.json:
        _print(relationship, True, relationship_lines)
    else:
        print(f"asked for a fetch of {relationship['trust_domain']}'s bundle; `federation show` reports the outcome")
    return 0


def cmd_delete(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory(args) as client:
        response = client.request("DELETE", _path(args.trust_domain))
        removed = response.json()
    if args.json:
        _print(removed, True, relationship_lines)
    else:
        print(f"deleted the relationship with {removed['trust_domain']}; its bundle leaves every workload now")
    return 0


def add_federation_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], client_factory: ClientFactory
) -> None:
    """Register ``federation …`` under ``trustmesh-ca``."""

    def bind(func: Callable[..., int]) -> Callable[[argparse.Namespace], int]:
        return functools.partial(func, client_factory=client_factory)

    federation = commands.add_parser("federation", help="relationships with other trust domains")
    subs = federation.add_subparsers(dest="sub", required=True)

    create = subs.add_parser("create", help="federate with a trust domain (its endpoint need not be up)")
    create.add_argument("trust_domain", help="the partner's trust domain, e.g. b.example")
    create.add_argument("--url", required=True, help="its bundle endpoint, e.g. https://ca.b.example:8443/")
    create.add_argument("--profile", choices=("https_spiffe", "https_web"), required=True)
    create.add_argument("--endpoint-spiffe-id", help="https_spiffe: the endpoint's SPIFFE ID")
    create.add_argument("--bundle-file", help="the partner's current bundle (SPIFFE JSON); required for https_spiffe")
    listing = subs.add_parser("list", help="list relationships with their status")
    show = subs.add_parser("show", help="print one relationship and its status")
    refresh = subs.add_parser("refresh", help="fetch a partner's bundle now")
    delete = subs.add_parser("delete", help="end a relationship; its bundle leaves every workload")
    for sub in (show, refresh, delete):
        sub.add_argument("trust_domain", help="the partner's trust domain")
    for sub, func in (
        (create, cmd_create),
        (listing, cmd_list),
        (show, cmd_show),
        (refresh, cmd_refresh),
        (delete, cmd_delete),
    ):
        sub.add_argument("--json", action="store_true", help="print JSON for machines")
        sub.set_defaults(func=bind(func))
