"""``trustmesh-ca mapping add|list|show|delete|load``: legacy identity mapping rules (DESIGN §5,
:mod:`bridge.mapping`) over the admin API routes of :mod:`ca.http_mappings`.

``load FILE`` is the GitOps path: the file (TOML ``[[rule]]`` tables or a JSON list) replaces every
rule, as a whole; one bad rule refuses the file and nothing changes. It is checked here first, so a
malformed file is reported with its name before anything is sent.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bridge.mapping import parse_rules_document
from ca.cli_authorities import AdminApi
from spiffe_core.errors import InvalidArgument

ClientFactory = Callable[[argparse.Namespace], AdminApi]


def _print_json(document: object) -> None:
    print(json.dumps(document, indent=2, sort_keys=True))


def mapping_lines(mapping: Mapping[str, Any]) -> list[str]:
    match = ", ".join(f"{key}={value}" for key, value in sorted(mapping["match"].items()))
    return [
        f"{'Name':<10}: {mapping['name']}",
        f"{'Match':<10}: {match}",
        f"{'SPIFFE ID':<10}: {mapping['spiffe_id']}",
        f"{'Keeps DNS':<10}: {mapping['keep_dns']}",
        f"{'Keeps CN':<10}: {'yes' if mapping['keep_cn'] else 'no'}",
    ]


def _show(mapping: Mapping[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(mapping)
    else:
        print("\n".join(mapping_lines(mapping)))


def cmd_mapping_add(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    match = {
        key: value
        for key, value in (
            ("dns", args.dns),
            ("subject_cn", args.subject_cn),
            ("issuer", args.issuer),
            ("trust_anchor", args.trust_anchor),
        )
        if value is not None
    }
    body = {
        "name": args.name,
        "match": match,
        "spiffe_id": args.spiffe_id,
        "keep_dns": args.keep_dns,
        "keep_cn": not args.drop_cn,
    }
    with client_factory(args) as client:
        _show(client.post_json("/v1/mappings", body), args.json)
    return 0


def cmd_mapping_list(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory(args) as client:
        mappings = client.get_json("/v1/mappings")["mappings"]
    if args.json:
        _print_json(mappings)
    else:
        for mapping in mappings:
            match = ", ".join(f"{key}={value}" for key, value in sorted(mapping["match"].items()))
            print(f"{mapping['name']}  {match}  ->  {mapping['spiffe_id']}")
    return 0


def cmd_mapping_show(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory(args) as client:
        _show(client.get_json(f"/v1/mappings/{args.name}"), args.json)
    return 0


def cmd_mapping_delete(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory(args) as client:
        deleted = client.request("DELETE", f"/v1/mappings/{args.name}").json()
    print(f"deleted mapping rule {deleted['name']}")
    return 0


def cmd_mapping_load(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    path = Path(args.file)
    try:
        text = path.read_text()
    except OSError as err:
        raise InvalidArgument(f"cannot read {path} ({err.strerror}); give a TOML or JSON rules file") from err
    rules = parse_rules_document(text, str(path))
    with client_factory(args) as client:
        loaded = client.request("PUT", "/v1/mappings", json={"rules": [rule.to_dict() for rule in rules]}).json()
    print(f"loaded {len(loaded['mappings'])} mapping rule(s) from {path}; they replace every rule before them")
    return 0


def add_mapping_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], client_factory: ClientFactory
) -> None:
    """Register ``mapping …`` under ``trustmesh-ca``."""

    def bind(func: Callable[..., int]) -> Callable[[argparse.Namespace], int]:
        return functools.partial(func, client_factory=client_factory)

    mapping = commands.add_parser("mapping", help="legacy identity mapping rules (the bridge)")
    subs = mapping.add_subparsers(dest="sub", required=True)

    add = subs.add_parser("add", help="add a rule; refused if it overlaps another or is ambiguous")
    add.add_argument("--name", required=True, help="unique rule name, e.g. payments")
    add.add_argument("--spiffe-id", required=True, help="template, e.g. spiffe://example.org/legacy/{host}")
    add.add_argument("--dns", help="DNS SAN pattern, e.g. '*.payments.corp.example.com'")
    add.add_argument("--subject-cn", help="subject CN pattern")
    add.add_argument("--issuer", help="issuer DN (RFC 4514), e.g. 'CN=Example Corp Issuing CA 1'")
    add.add_argument("--trust-anchor", help="name of a [bridge] trust anchor the chain must verify to")
    add.add_argument("--keep-dns", choices=("matched", "all", "none"), default="matched", help="SANs the SVID keeps")
    add.add_argument("--drop-cn", action="store_true", help="the SVID does not keep the certificate's CN")
    add.add_argument("--json", action="store_true", help="print JSON for machines")
    add.set_defaults(func=bind(cmd_mapping_add))

    listing = subs.add_parser("list", help="list the rules")
    listing.add_argument("--json", action="store_true", help="print JSON for machines")
    listing.set_defaults(func=bind(cmd_mapping_list))

    show = subs.add_parser("show", help="print one rule")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print JSON for machines")
    show.set_defaults(func=bind(cmd_mapping_show))

    delete = subs.add_parser("delete", help="delete one rule")
    delete.add_argument("name")
    delete.set_defaults(func=bind(cmd_mapping_delete))

    load = subs.add_parser("load", help="replace every rule with a TOML/JSON file's, as a whole (GitOps)")
    load.add_argument("file")
    load.set_defaults(func=bind(cmd_mapping_load))
