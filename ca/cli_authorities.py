"""``trustmesh-ca authority …``, ``trustmesh-ca revoke`` and ``trustmesh-ca crl show``: the security
officer's commands (DESIGN §3 "Authorities", "Leaf revocation"), over the admin API routes of
:mod:`ca.http_authorities`.

Every change takes ``--dry-run`` (the CA runs the same checks and counts, and writes nothing) and
prints what it changed, or would change: state changes, the X509-SVIDs agents must replace, the
agents affected and what the bundle publishes afterwards. ``--json`` prints the CA's reply instead.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, Self

import httpx

from ca.crl import REASONS
from spiffe_core.errors import NotFound

# How many agent IDs a human report names before "and N more".
AGENTS_SHOWN = 5


class AdminApi(Protocol):
    """What these commands need of :class:`ca.admin_client.AdminClient`."""

    def __enter__(self) -> Self: ...
    def __exit__(self, *_exc: object) -> None: ...
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response: ...
    def get_json(self, path: str, **params: str) -> Any: ...
    def post_json(self, path: str, body: dict[str, Any]) -> Any: ...


ClientFactory = Callable[[argparse.Namespace], AdminApi]


def print_json(document: object) -> None:
    print(json.dumps(document, indent=2, sort_keys=True))


def aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """``rows`` (the first one the header) as lines of left-aligned columns two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


def _state(value: str | None, missing: str) -> str:
    return missing if value is None else value


def report_lines(report: Mapping[str, Any]) -> list[str]:
    """A change report (the reply of every change route) as the lines a human reads."""
    lines = ["DRY RUN: nothing was changed"] if report["dry_run"] else []
    lines += [
        f"authority {c['authority_id']}: {_state(c['before'], 'new')} -> {_state(c['after'], 'removed')}"
        for c in report["changes"]
    ]
    if report["revoked_serials"]:
        lines.append(f"X509-SVIDs revoked: {len(report['revoked_serials'])} ({', '.join(report['revoked_serials'])})")
    lines.append(f"X509-SVIDs to re-issue: {report['svids_affected']}")
    agents: Sequence[str] = report["agents_affected"]
    named = ", ".join(agents[:AGENTS_SHOWN])
    if len(agents) > AGENTS_SHOWN:
        named += f", and {len(agents) - AGENTS_SHOWN} more"
    lines.append(f"agents affected: {len(agents)}" + (f" ({named})" if agents else ""))
    lines.append(f"bundle after: x509 [{', '.join(report['bundle_x509'])}], jwt [{', '.join(report['bundle_jwt'])}]")
    lines += [f"note: {note}" for note in report["notes"]]
    return lines


def _show_report(report: Mapping[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(report)
    else:
        print("\n".join(report_lines(report)))


def authority_table(authorities: Sequence[Mapping[str, Any]]) -> list[str]:
    """The rows of ``authority list``: ID, KIND, STATE, NOT AFTER, LIVE SVIDS, in aligned columns."""
    rows = [("ID", "KIND", "STATE", "NOT AFTER", "LIVE SVIDS")]
    rows += [(a["id"], a["kind"], a["state"], a["not_after"], str(a["live_svids"])) for a in authorities]
    return aligned(rows)


def _authority_lines(authority: Mapping[str, Any]) -> list[str]:
    def when(key: str) -> str:
        value = authority[key]
        return "-" if value is None else str(value)

    rows = (
        ("Authority ID", authority["id"]),
        ("Kind", authority["kind"]),
        ("State", authority["state"]),
        ("Key type", authority["key_type"]),
        ("Not before", when("not_before")),
        ("Not after", when("not_after")),
        ("Created", when("created_at")),
        ("Activated", when("activated_at")),
        ("Retired", when("retired_at")),
        ("Tainted", when("tainted_at")),
        ("Revoked", when("revoked_at")),
        ("Live SVIDs", str(authority["live_svids"])),
        ("Signed until", when("signed_until")),
        ("Upstream", authority.get("upstream") or "-"),
    )
    lines = [f"{label:<12}: {value}" for label, value in rows]
    if authority.get("certificate_pem"):
        lines.append(authority["certificate_pem"].rstrip("\n"))
    return lines


def cmd_authority_list(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory(args) as client:
        authorities = client.get_json("/v1/authorities")["authorities"]
    if args.json:
        print_json(authorities)
    else:
        print("\n".join(authority_table(authorities)))
    return 0


def cmd_authority_show(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory(args) as client:
        authority = client.get_json(f"/v1/authorities/{args.authority_id}")
    if args.json:
        print_json(authority)
    else:
        print("\n".join(_authority_lines(authority)))
    return 0


def _kind(args: argparse.Namespace) -> str:
    return "jwt" if args.jwt else "x509"


def cmd_authority_prepare(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory(args) as client:
        report = client.post_json("/v1/authorities/prepare", {"kind": _kind(args), "dry_run": args.dry_run})
    _show_report(report, args.json)
    return 0


def cmd_authority_activate(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    body = {"dry_run": args.dry_run, "force": args.force}
    with client_factory(args) as client:
        report = client.post_json(f"/v1/authorities/{args.authority_id}/activate", body)
    _show_report(report, args.json)
    return 0


def cmd_authority_change(args: argparse.Namespace, client_factory: ClientFactory, *, action: str) -> int:
    """``authority taint`` and ``authority revoke``: the same body, a different route."""
    with client_factory(args) as client:
        report = client.post_json(f"/v1/authorities/{args.authority_id}/{action}", {"dry_run": args.dry_run})
    _show_report(report, args.json)
    return 0


ROTATE_NEEDS_NOW = (
    "scheduled rotation happens by itself (prepare, then activate after a refresh hint); "
    "`authority rotate --now` is the emergency rotation that activates a new authority at once and "
    "taints the active one. Add --now to do that"
)


def cmd_authority_rotate(
    args: argparse.Namespace, client_factory: ClientFactory, *, parser: argparse.ArgumentParser
) -> int:
    if not args.now:
        parser.error(ROTATE_NEEDS_NOW)
    with client_factory(args) as client:
        report = client.post_json("/v1/authorities/rotate", {"kind": _kind(args), "dry_run": args.dry_run})
    _show_report(report, args.json)
    return 0


def cmd_revoke(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    body = {"serial": args.serial, "spiffe_id": args.spiffe_id, "reason": args.reason, "dry_run": args.dry_run}
    with client_factory(args) as client:
        report = client.post_json("/v1/revocations", body)
    _show_report(report, args.json)
    return 0


def cmd_crl_show(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory(args) as client:
        crls = client.get_json("/v1/crls")["crls"]
    if args.authority is not None:
        crls = [c for c in crls if c["authority_id"] == args.authority]
        if not crls:
            raise NotFound(
                f"no CRL is published for authority {args.authority!r}; "
                "`trustmesh-ca crl show` lists the published ones"
            )
    if args.json:
        print_json(crls)
    else:
        sys.stdout.write("".join(c["pem"] for c in crls))
    return 0


def _with_flags(parser: argparse.ArgumentParser, *, dry_run: bool = True) -> argparse.ArgumentParser:
    if dry_run:
        parser.add_argument("--dry-run", action="store_true", help="run the checks and counts only; change nothing")
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    return parser


def add_authority_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], client_factory: ClientFactory
) -> None:
    """Register ``authority …``, ``revoke`` and ``crl show`` under ``trustmesh-ca``."""

    def bind(func: Callable[..., int], **extra: Any) -> Callable[[argparse.Namespace], int]:
        return functools.partial(func, client_factory=client_factory, **extra)

    authority = commands.add_parser("authority", help="X.509 and JWT authorities: list, rotate, taint, revoke")
    subs = authority.add_subparsers(dest="sub", required=True)

    listing = _with_flags(subs.add_parser("list", help="list the trust domain's authorities"), dry_run=False)
    listing.set_defaults(func=bind(cmd_authority_list))

    show = _with_flags(subs.add_parser("show", help="print one authority"), dry_run=False)
    show.add_argument("authority_id")
    show.set_defaults(func=bind(cmd_authority_show))

    prepare = _with_flags(subs.add_parser("prepare", help="mint the next authority and publish it in the bundle"))
    prepare.add_argument("--jwt", action="store_true", help="a JWT key instead of an X.509 CA")
    prepare.set_defaults(func=bind(cmd_authority_prepare))

    activate = _with_flags(subs.add_parser("activate", help="make a prepared authority sign; retire the active one"))
    activate.add_argument("authority_id")
    activate.add_argument(
        "--force", action="store_true", help="even if it has been in the bundle for less than a refresh hint"
    )
    activate.set_defaults(func=bind(cmd_authority_activate))

    for action, what in (
        ("taint", "mark an authority suspect: agents replace what it signed at once"),
        ("revoke", "remove an authority from the bundle: nothing it signed verifies any more"),
    ):
        sub = _with_flags(subs.add_parser(action, help=what))
        sub.add_argument("authority_id")
        sub.set_defaults(func=bind(cmd_authority_change, action=action))

    rotate = _with_flags(subs.add_parser("rotate", help="emergency rotation (with --now)"))
    rotate.add_argument("--now", action="store_true", help="activate a new authority at once and taint the active one")
    rotate.add_argument("--jwt", action="store_true", help="rotate the JWT key instead of the X.509 CA")
    rotate.set_defaults(func=bind(cmd_authority_rotate, parser=rotate))

    revoke = _with_flags(commands.add_parser("revoke", help="revoke X509-SVIDs (published in the CRLs at once)"))
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--serial", help="serial number in hex of one X509-SVID")
    which.add_argument("--spiffe-id", help="every live X509-SVID of this SPIFFE ID")
    revoke.add_argument("--reason", choices=list(REASONS), help="RFC 5280 reason (default: none given)")
    revoke.set_defaults(func=bind(cmd_revoke))

    crl = commands.add_parser("crl", help="certificate revocation lists").add_subparsers(dest="sub", required=True)
    crl_show = _with_flags(crl.add_parser("show", help="print the published CRLs (PEM)"), dry_run=False)
    crl_show.add_argument("--authority", help="only the CRL signed by this authority ID")
    crl_show.set_defaults(func=bind(cmd_crl_show))
