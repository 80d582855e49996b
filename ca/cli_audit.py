"""``trustmesh-ca audit list|verify|export``: the auditor's commands (issue 8), over the admin API routes
of :mod:`ca.http_audit`.

``verify`` asks the running CA, which holds the authorities a checkpoint must be signed by. With
``--datastore`` it reads the datastore named in the configuration itself, so it works with the CA
stopped (after an incident, before starting it again); it then trusts the checkpoints of the
authorities whose keys the configured key manager holds, so it needs the key-encryption key, as the CA
does, and nothing it does writes. Either way it prints one line and exits 0 when the log verifies, 1
with the first problem otherwise.

``--since`` and ``--until`` take an ISO 8601 time with a zone (``2026-11-22T12:00:00Z``) or a duration
back from now (``1h``, ``7d``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

import httpx

from ca.cli_authorities import AdminApi, aligned, print_json
from ca.config import CaConfig
from spiffe_core.durations import parse_duration
from spiffe_core.errors import InvalidArgument

# The most records one request asks for (the admin API's page limit).
PAGE = 1000
DEFAULT_LIMIT = 100
# Verifying walks the whole log; give it far longer than an ordinary call.
VERIFY_TIMEOUT_SECONDS = 600.0
_WIDEST_TARGET = 60


class AuditApi(AdminApi, Protocol):
    """What these commands need of :class:`ca.admin_client.AdminClient`."""

    def stream(self, method: str, path: str, **kwargs: Any) -> AbstractContextManager[httpx.Response]: ...


ClientFactory = Callable[[argparse.Namespace], AuditApi]
ConfigFactory = Callable[[argparse.Namespace], CaConfig]


def parse_time(text: str, now: datetime, flag: str) -> datetime:
    """``1h`` (that long before ``now``) or an ISO 8601 time with a zone; raises InvalidArgument."""
    try:
        return now - parse_duration(text)
    except InvalidArgument:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidArgument(
            f"{flag} {text!r} is neither a duration nor a time; write e.g. {flag} 1h or {flag} 2026-11-22T12:00:00Z"
        ) from None
    if moment.utcoffset() is None:
        raise InvalidArgument(f"{flag} {text!r} has no time zone; add one, e.g. {text.strip()}Z")
    return moment


def _filters(args: argparse.Namespace, now: datetime) -> dict[str, str]:
    filters = {
        "since": None if args.since is None else parse_time(args.since, now, "--since").isoformat(),
        "until": None if getattr(args, "until", None) is None else parse_time(args.until, now, "--until").isoformat(),
        "actor": getattr(args, "actor", None),
        "action": getattr(args, "action", None),
        "outcome": getattr(args, "outcome", None),
    }
    return {key: value for key, value in filters.items() if value is not None}


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def audit_table(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The rows of ``audit list``: ID, TIME, ACTOR, ACTION, TARGET, OUTCOME (with the reason of a
    refusal, and "dry run" for an officer's dry run), aligned."""
    rows = [("ID", "TIME (UTC)", "ACTOR", "ACTION", "TARGET", "OUTCOME")]
    for record in records:
        actor = record["actor"] + (f" ({record['auth_method']})" if record["auth_method"] else "")
        if record["role"]:
            actor += f" as {record['role']}"
        outcome = record["outcome"] + (f": {record['reason']}" if record["reason"] else "")
        if record["detail"].get("dry_run"):
            outcome = "dry run, " + outcome
        moment = datetime.fromisoformat(record["at"]).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        rows.append(
            (str(record["id"]), moment, actor, record["action"], _shorten(record["target"], _WIDEST_TARGET), outcome)
        )
    return aligned(rows)


def fetch_records(client: AdminApi, filters: Mapping[str, str], limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` records, oldest first: from ``since`` onwards when it is given, else the newest."""
    newest_first = "since" not in filters
    records: list[dict[str, Any]] = []
    cursor: dict[str, str] = {}
    while len(records) < limit:
        want = min(PAGE, limit - len(records))
        params = {**filters, **cursor, "limit": str(want), "newest_first": str(newest_first).lower()}
        page = client.get_json("/v1/audit", **params)["records"]
        records += page
        if len(page) < want:
            break
        cursor = {"before_id": str(page[-1]["id"])} if newest_first else {"after_id": str(page[-1]["id"])}
    return records[::-1] if newest_first else records


def cmd_audit_list(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    if args.limit < 1:
        raise InvalidArgument(f"--limit {args.limit} must be at least 1")
    filters = _filters(args, datetime.now(UTC))
    with client_factory(args) as client:
        records = fetch_records(client, filters, args.limit)
    if args.json:
        print_json(records)
    elif records:
        print("\n".join(audit_table(records)))
    else:
        print("no audit records match", file=sys.stderr)
    return 0


def verify_datastore(config: CaConfig) -> dict[str, Any]:
    """What ``GET /v1/audit/verify`` answers, found by reading the configured datastore directly."""
    # The datastore, key manager and the HTTP reply model are loaded only for this command.
    from ca.audit_checkpoints import CheckpointTrust  # noqa: PLC0415
    from ca.audit_log import AuditLog  # noqa: PLC0415
    from ca.http_audit import verify_reply  # noqa: PLC0415
    from ca.keys import open_key_manager  # noqa: PLC0415
    from ca.store import AuthorityRepository, Database  # noqa: PLC0415
    from spiffe_core.clock import SystemClock  # noqa: PLC0415

    key_manager = config.ca.key_manager.model_copy(update={"create_kek_if_missing": False})  # read, never create
    keys = open_key_manager(key_manager, config.server.data_dir)
    database = Database.open(config.datastore.url)
    try:
        with database.transaction() as session:
            records = [r for r in AuthorityRepository(session).list() if r.trust_domain == config.trust_domain]
        trust = CheckpointTrust.of_held_keys(records, keys)
        result = AuditLog(database, lambda: trust, SystemClock(), config.audit.checkpoint_interval).verify()
    finally:
        database.close()
    return verify_reply(result).model_dump(mode="json")


def cmd_audit_verify(args: argparse.Namespace, client_factory: ClientFactory, config_factory: ConfigFactory) -> int:
    if args.datastore:
        result = verify_datastore(config_factory(args))
    else:
        with client_factory(args) as client:
            result = client.request("GET", "/v1/audit/verify", timeout=VERIFY_TIMEOUT_SECONDS).json()
    if args.json:
        print_json(result)
    else:
        print(result["summary"])
        for note in result["notes"]:
            print(f"note: {note}", file=sys.stderr)
    return 0 if result["ok"] else 1


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[IO[str]]:
    """Standard output, or ``path`` created owner-only (an audit export names people and systems)."""
    if path is None:
        yield sys.stdout
        return
    fd = os.open(Path(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", encoding="utf-8") as file:
        yield file


def cmd_audit_export(args: argparse.Namespace, client_factory: ClientFactory) -> int:
    filters = _filters(args, datetime.now(UTC))
    count = 0
    with (
        client_factory(args) as client,
        client.stream("GET", "/v1/audit/export", params=filters) as response,
        _output(args.out) as out,
    ):
        for line in response.iter_lines():
            if line:
                out.write(line + "\n")
                count += 1
    if args.out is not None:
        print(f"wrote {count} audit records to {args.out}", file=sys.stderr)
    return 0


def add_audit_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    client_factory: ClientFactory,
    config_factory: ConfigFactory,
) -> None:
    """Register ``audit list``, ``audit verify`` and ``audit export`` under ``trustmesh-ca``."""

    def bind(func: Callable[..., int], **extra: Any) -> Callable[[argparse.Namespace], int]:
        return functools.partial(func, client_factory=client_factory, **extra)

    audit = commands.add_parser("audit", help="the audit log: list, verify, export")
    subs = audit.add_subparsers(dest="sub", required=True)

    listing = subs.add_parser("list", help="list audit records (the newest, or from --since on)")
    listing.add_argument("--since", help="from this time on: 1h, 7d or 2026-11-22T12:00:00Z")
    listing.add_argument("--until", help="up to this time: a duration back from now or an ISO time")
    listing.add_argument(
        "--actor", help="only this actor, exactly as listed (spiffe://…, oidc:<issuer>#<sub>, unix:uid=0)"
    )
    listing.add_argument("--action", help="only actions starting with this, e.g. authority. or x509_svid.issue")
    listing.add_argument("--outcome", choices=("ok", "denied", "failed"), help="only this outcome")
    listing.add_argument(
        "--limit", type=int, default=DEFAULT_LIMIT, help=f"at most this many (default {DEFAULT_LIMIT})"
    )
    listing.add_argument("--json", action="store_true", help="print JSON for machines")
    listing.set_defaults(func=bind(cmd_audit_list))

    verify = subs.add_parser("verify", help="check the hash chain and signed checkpoints; exit 1 naming the problem")
    verify.add_argument(
        "--datastore",
        action="store_true",
        help="read the datastore of the config directly instead of asking the CA (works with the CA stopped)",
    )
    verify.add_argument("--json", action="store_true", help="print JSON for machines")
    verify.set_defaults(func=bind(cmd_audit_verify, config_factory=config_factory))

    export = subs.add_parser("export", help="every record as JSON lines, for a SIEM")
    export.add_argument("--since", help="from this time on: 1h, 7d or 2026-11-22T12:00:00Z")
    export.add_argument("--out", help="write to this file (created 0600) instead of standard output")
    export.set_defaults(func=bind(cmd_audit_export))
