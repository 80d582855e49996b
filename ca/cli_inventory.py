"""``trustmesh-ca inventory svids|tokens|agents|entries|authorities|summary``: what the CA issued and to
whom (issue 11 item 1; docs/inventory.md), over the admin API routes of :mod:`ca.http_inventory`.

Every command prints an aligned table for people and, with ``--json``, the API's documents for machines.
``svids`` and ``tokens`` fetch page after page (1000 at a time) up to ``--limit`` and say how many more
match; ``--expiring-within`` takes a duration (``24h``, ``7d``). Times are printed in UTC.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from ca.cli_agents import cmd_agent_list
from ca.cli_authorities import AdminApi, aligned, print_json
from spiffe_core.durations import parse_duration
from spiffe_core.errors import InvalidArgument

ClientFactory = Callable[[argparse.Namespace], AdminApi]

# The most items one request asks for (the admin API's page limit).
PAGE = 1000
DEFAULT_LIMIT = 100


def when(value: str | None) -> str:
    """An API timestamp as ``YYYY-MM-DD HH:MM:SS`` in UTC; "-" for none."""
    if value is None:
        return "-"
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def fetch_pages(
    client: AdminApi, path: str, key: str, params: Mapping[str, str], limit: int
) -> tuple[list[dict[str, Any]], int]:
    """Up to ``limit`` items of a paged inventory listing, following ``next_cursor``; and how many match."""
    if limit < 1:
        raise InvalidArgument(f"--limit {limit} must be at least 1")
    items: list[dict[str, Any]] = []
    cursor: dict[str, str] = {}
    total = 0
    while len(items) < limit:
        page = client.get_json(path, **params, **cursor, limit=str(min(PAGE, limit - len(items))))
        items += page[key]
        total = page["total"]
        if page["next_cursor"] is None:
            break
        cursor = {"cursor": page["next_cursor"]}
    return items, total


def _window(text: str | None) -> dict[str, str]:
    if text is None:
        return {}
    return {"expiring_within_seconds": str(int(parse_duration(text).total_seconds()))}


def _shown_of(shown: int, total: int, what: str) -> str:
    if shown < total:
        return f"{shown} of {total} {what} shown; raise --limit to see more"
    return f"{total} {what}"


def svid_state(svid: Mapping[str, Any], now: datetime) -> str:
    if svid["revoked"]:
        return "revoked"
    return "expired" if datetime.fromisoformat(svid["not_after"]) <= now else "live"


def svid_table(svids: Sequence[Mapping[str, Any]], now: datetime) -> list[str]:
    """The rows of ``inventory svids``: SERIAL, SPIFFE ID, AGENT, EXPIRES (UTC), STATE, OWNER."""
    rows = [("SERIAL", "SPIFFE ID", "AGENT", "EXPIRES (UTC)", "STATE", "OWNER")]
    rows += [
        (
            s["serial"],
            s["spiffe_id"],
            s["agent_id"] or "(minted)",
            when(s["not_after"]),
            svid_state(s, now),
            ", ".join(s["owners"]) or "-",
        )
        for s in svids
    ]
    return aligned(rows)


def cmd_inventory_svids(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    params = {
        name: value
        for name, value in (
            ("spiffe_id", args.spiffe_id),
            ("agent_id", args.agent),
            ("authority_id", args.authority),
            ("revoked", None if args.revoked is None else str(args.revoked).lower()),
            ("include_expired", "true" if args.include_expired else None),
        )
        if value is not None
    } | _window(args.expiring_within)
    with client_factory(args) as client:
        svids, total = fetch_pages(client, "/v1/inventory/svids", "svids", params, args.limit)
    if args.json:
        print_json({"svids": svids, "total": total})
        return 0
    if svids:
        print("\n".join(svid_table(svids, datetime.now(UTC))))
    print(_shown_of(len(svids), total, "X509-SVIDs"), file=sys.stderr)
    return 0


def token_table(tokens: Sequence[Mapping[str, Any]]) -> list[str]:
    """The rows of ``inventory tokens``: ID, AGENT ID, STATE, CREATED, EXPIRES (UTC)."""
    rows = [("ID", "AGENT ID", "STATE", "CREATED (UTC)", "EXPIRES (UTC)")]
    rows += [
        (t["id"], t["agent_spiffe_id"] or "-", t["state"], when(t["created_at"]), when(t["expires_at"])) for t in tokens
    ]
    return aligned(rows)


def cmd_inventory_tokens(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    params = ({"unused": "true"} if args.unused else {}) | _window(args.expiring_within)
    with client_factory(args) as client:
        tokens, total = fetch_pages(client, "/v1/inventory/join-tokens", "join_tokens", params, args.limit)
    if args.json:
        print_json({"join_tokens": tokens, "total": total})
        return 0
    if tokens:
        print("\n".join(token_table(tokens)))
    print(_shown_of(len(tokens), total, "join tokens"), file=sys.stderr)
    return 0


def entry_table(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """The rows of ``inventory entries``: SPIFFE ID, PARENT ID, OWNER, ENTRY ID."""
    rows = [("SPIFFE ID", "PARENT ID", "OWNER", "ENTRY ID")]
    rows += [(e["spiffe_id"], e["parent_id"], e.get("owner") or "-", e["id"]) for e in entries]
    return aligned(rows)


def cmd_inventory_entries(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory(args) as client:
        entries = client.get_json("/v1/entries")["entries"]
    if args.without_owner:
        entries = [entry for entry in entries if not entry.get("owner")]
    if args.json:
        print_json(entries)
    elif entries:
        print("\n".join(entry_table(entries)))
    return 0


def timeline_lines(events: Sequence[Mapping[str, Any]]) -> list[str]:
    """``inventory authorities``: one aligned line per lifecycle moment, oldest first."""
    rows = [("TIME (UTC)", "KIND", "AUTHORITY", "EVENT")]
    rows += [(when(e["at"]), e["kind"], e["authority_id"], e["event"]) for e in events]
    return aligned(rows)


def cmd_inventory_authorities(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory(args) as client:
        events = client.get_json("/v1/inventory/authority-timeline")["events"]
    if args.json:
        print_json(events)
    else:
        print("\n".join(timeline_lines(events)))
    return 0


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    rows = (
        ("X509-SVIDs live", f"{summary['svids_live']} ({summary['svids_expiring_soon']} expiring within 24h)"),
        ("Revoked, unexpired", str(summary["svids_revoked_live"])),
        ("Agents", f"{summary['agents']} ({summary['agents_banned']} banned, {summary['agents_expired']} expired)"),
        ("Unused join tokens", str(summary["join_tokens_unused"])),
        ("Entries", f"{summary['entries']} ({summary['entries_without_owner']} without an owner)"),
        ("Authorities", ", ".join(f"{n} {which}" for which, n in sorted(summary["authorities"].items())) or "-"),
    )
    return [f"{label:<19}: {value}" for label, value in rows]


def cmd_inventory_summary(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory(args) as client:
        summary = client.get_json("/v1/inventory/summary")
    if args.json:
        print_json(summary)
    else:
        print("\n".join(summary_lines(summary)))
    return 0


def add_inventory_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], client_factory: ClientFactory
) -> None:
    """Register ``inventory …`` under ``trustmesh-ca``."""

    def bind(func: Callable[..., int]) -> Callable[[argparse.Namespace], int]:
        return functools.partial(func, client_factory=client_factory)

    inventory = commands.add_parser("inventory", help="what the CA issued and to whom: SVIDs, agents, tokens, …")
    subs = inventory.add_subparsers(dest="sub", required=True)

    svids = subs.add_parser("svids", help="issued X509-SVIDs, soonest expiry first")
    svids.add_argument("--spiffe-id", help="only this SPIFFE ID")
    svids.add_argument("--agent", help="only those issued through this agent (its SPIFFE ID)")
    svids.add_argument("--authority", help="only those signed by this authority ID")
    svids.add_argument("--expiring-within", help="only live ones expiring within this, e.g. 24h or 7d")
    revoked = svids.add_mutually_exclusive_group()
    revoked.add_argument("--revoked", action="store_true", default=None, help="only revoked ones")
    revoked.add_argument("--unrevoked", dest="revoked", action="store_false", help="only unrevoked ones")
    svids.add_argument("--include-expired", action="store_true", help="also expired ones (kept for the retention)")
    svids.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help=f"at most this many (default {DEFAULT_LIMIT})")
    svids.add_argument("--json", action="store_true", help="print JSON for machines")
    svids.set_defaults(func=bind(cmd_inventory_svids))

    tokens = subs.add_parser("tokens", help="join tokens by ID (never the token itself)")
    tokens.add_argument("--unused", action="store_true", help="only unused, unexpired tokens")
    tokens.add_argument("--expiring-within", help="only unused ones expiring within this, e.g. 1h")
    tokens.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help=f"at most this many (default {DEFAULT_LIMIT})")
    tokens.add_argument("--json", action="store_true", help="print JSON for machines")
    tokens.set_defaults(func=bind(cmd_inventory_tokens))

    agents = subs.add_parser("agents", help="attested agents: version, last seen, method, SVID expiry, banned")
    agents.add_argument("--json", action="store_true", help="print JSON for machines")
    agents.set_defaults(func=bind(cmd_agent_list))

    entries = subs.add_parser("entries", help="registration entries and their owners (who to call)")
    entries.add_argument("--without-owner", action="store_true", help="only entries that name nobody")
    entries.add_argument("--json", action="store_true", help="print JSON for machines")
    entries.set_defaults(func=bind(cmd_inventory_entries))

    authorities = subs.add_parser("authorities", help="every authority's timeline: prepared, activated, …")
    authorities.add_argument("--json", action="store_true", help="print JSON for machines")
    authorities.set_defaults(func=bind(cmd_inventory_authorities))

    summary = subs.add_parser("summary", help="the counts: live SVIDs, agents, tokens, entries, authorities")
    summary.add_argument("--json", action="store_true", help="print JSON for machines")
    summary.set_defaults(func=bind(cmd_inventory_summary))
