"""``trustmesh-ca agent list|show|ban|unban|evict``: the commands for attested agents (DESIGN §3
"Node attestation"), over the admin API routes of :mod:`ca.http_agents`.

``ban`` cuts an agent off at once (its open Sync streams end, every later call is refused) until
``unban``; ``evict`` forgets it, so the node must attest again with a new join token. ``--json``
prints the CA's reply instead of the human form.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ca.cli_authorities import AdminApi, aligned, print_json

ClientFactory = Callable[[argparse.Namespace], AdminApi]


def agent_table(agents: Sequence[Mapping[str, Any]]) -> list[str]:
    """The rows of ``agent list``: SPIFFE ID, METHOD, VERSION, LAST SEEN, SVID EXPIRES, BANNED, aligned."""
    rows = [("SPIFFE ID", "METHOD", "VERSION", "LAST SEEN", "SVID EXPIRES", "BANNED")]
    rows += [
        (
            a["spiffe_id"],
            a["attestation_type"],
            a.get("version") or "-",
            a.get("last_seen_at") or "-",
            a["expires_at"],
            "yes" if a["banned"] else "no",
        )
        for a in agents
    ]
    return aligned(rows)


def agent_lines(agent: Mapping[str, Any]) -> list[str]:
    rows = (
        ("SPIFFE ID", agent["spiffe_id"]),
        ("Attested by", agent["attestation_type"]),
        ("SVID serial", agent["serial"]),
        ("SVID expires", agent["expires_at"]),
        ("Banned", "yes" if agent["banned"] else "no"),
        ("Version", agent.get("version") or "-"),
        ("Last seen", agent.get("last_seen_at") or "-"),
        ("First attested", agent["created_at"]),
        ("Updated", agent["updated_at"]),
    )
    lines = [f"{label:<14}: {value}" for label, value in rows]
    if agent.get("previous_serial"):
        lines.append(
            f"{'Previous SVID':<14}: {agent['previous_serial']} (accepted until {agent['previous_valid_until']})"
        )
    return lines


def cmd_agent_list(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory(args) as client:
        agents = client.get_json("/v1/agents")["agents"]
    if args.json:
        print_json(agents)
    else:
        print("\n".join(agent_table(agents)))
    return 0


def cmd_agent_show(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    with client_factory(args) as client:
        agent = client.get_json("/v1/agent", spiffe_id=args.spiffe_id)
    if args.json:
        print_json(agent)
    else:
        print("\n".join(agent_lines(agent)))
    return 0


_DONE = {
    "ban": "banned {id}: its streams are ended and every call is refused until `trustmesh-ca agent unban {id}`",
    "unban": "lifted the ban on {id}",
    "evict": "evicted {id}: it must attest again with a new join token",
}


def cmd_agent_change(args: argparse.Namespace, client_factory: ClientFactory, *, action: str) -> int:
    """``ban``, ``unban`` and ``evict``: the same body, a different route."""
    with client_factory(args) as client:
        agent = client.post_json(f"/v1/agents/{action}", {"spiffe_id": args.spiffe_id})
    if args.json:
        print_json(agent)
    else:
        print(_DONE[action].format(id=agent["spiffe_id"]))
    return 0


def add_agent_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], client_factory: ClientFactory
) -> None:
    """Register ``agent …`` under ``trustmesh-ca``."""

    def bind(func: Callable[..., int], **extra: Any) -> Callable[[argparse.Namespace], int]:
        return functools.partial(func, client_factory=client_factory, **extra)

    agent = commands.add_parser("agent", help="attested node agents: list, ban, evict")
    subs = agent.add_subparsers(dest="sub", required=True)

    listing = subs.add_parser("list", help="list the agents the CA knows")
    listing.add_argument("--json", action="store_true", help="print JSON for machines")
    listing.set_defaults(func=bind(cmd_agent_list))

    show = subs.add_parser("show", help="print one agent")
    show.add_argument("spiffe_id", help="the agent's SPIFFE ID (see `agent list`)")
    show.add_argument("--json", action="store_true", help="print JSON for machines")
    show.set_defaults(func=bind(cmd_agent_show))

    for action, what in (
        ("ban", "cut an agent off now: end its streams, refuse its calls and re-attestation"),
        ("unban", "lift an agent's ban"),
        ("evict", "forget an agent: its SVID stops working and the node must attest again (lifts a ban)"),
    ):
        sub = subs.add_parser(action, help=what)
        sub.add_argument("spiffe_id", help="the agent's SPIFFE ID (see `agent list`)")
        sub.add_argument("--json", action="store_true", help="print JSON for machines")
        sub.set_defaults(func=bind(cmd_agent_change, action=action))
