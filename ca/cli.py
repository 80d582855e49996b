"""``trustmesh-ca``: run the CA, and talk to a running one over its local admin socket or, with
``--server``, to a remote one over HTTPS (docs/admin-api.md "Remote CLI").

Every failure is one line on stderr and a non-zero exit: 2 for a usage error (argparse), 1 for
anything the CA or the input refused. Private keys are generated here, on the caller's machine, and
only a CSR goes to the CA.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.metadata
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.admin_client import AdminClient, RemoteTarget, read_token_file
from ca.cli_agents import add_agent_commands
from ca.cli_analyze import add_analyze_command
from ca.cli_audit import add_audit_commands
from ca.cli_authorities import add_authority_commands
from ca.cli_federation import add_federation_commands
from ca.cli_inventory import add_inventory_commands
from ca.cli_mappings import add_mapping_commands
from ca.config import CLIENT_ENV, CaConfig, default_config_toml, load_config
from ca.files import write_private_file, write_public_file
from ca.reserved_ids import server_id
from ca.signing import digest_for
from spiffe_core.durations import parse_duration
from spiffe_core.errors import InvalidArgument, TrustmeshError
from spiffe_core.keys import KeyType, generate_private_key
from spiffe_core.logs import configure_logging, quiet_grpc_core
from spiffe_core.spiffe_id import SpiffeId, TrustDomain

PROG = "trustmesh-ca"
CONFIG_ENV = "TRUSTMESH_CONFIG"


def _config(args: argparse.Namespace, *, ttl_checks: bool = True) -> CaConfig:
    path = args.config or os.environ.get(CONFIG_ENV)
    return load_config(Path(path) if path else None, os.environ, ttl_checks=ttl_checks)


def _remote_option(args: argparse.Namespace, name: str) -> str | None:
    """A remote-CLI option: the flag, else its environment variable (config.CLIENT_ENV)."""
    value: str | None = getattr(args, name) or os.environ.get(CLIENT_ENV[name]) or None
    return value


def _read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise InvalidArgument(f"cannot read the {what} {path}: {err.strerror}") from err


def _remote_target(args: argparse.Namespace, server: str, *, ttl_checks: bool = True) -> RemoteTarget:
    """How to reach and trust the CA at ``server`` and who to be there, from the flags and environment."""
    token_file, cert, key = (_remote_option(args, name) for name in ("token_file", "cert", "key"))
    bundle, server_name = _remote_option(args, "bundle"), _remote_option(args, "server_name")
    if (cert is None) != (key is None):
        raise InvalidArgument("--cert and --key go together: the admin X509-SVID and its private key")
    trust_domain = TrustDomain.parse(args.trust_domain) if args.trust_domain else None
    expected = None
    if server_name is None:
        expected = server_id(trust_domain or _config(args, ttl_checks=ttl_checks).trust_domain)
    return RemoteTarget(
        url=server,
        bundle_pem=None if bundle is None else _read_file(bundle, "bundle"),
        server_id=expected,
        server_name=server_name,
        token=None if token_file is None else read_token_file(Path(token_file)),
        cert_file=None if cert is None else Path(cert),
        key_file=None if key is None else Path(key),
    )


def _client(args: argparse.Namespace, *, ttl_checks: bool = True) -> AdminClient:
    """The admin API of the CA the command talks to: ``--server`` (HTTPS), else the local socket.
    ``ttl_checks=False`` finds it in a configuration whose TTL arithmetic is off (for ``analyze``)."""
    server = _remote_option(args, "server")
    if server is not None:
        if args.socket:
            raise InvalidArgument("--socket and --server name two CAs; give one")
        return AdminClient.remote(_remote_target(args, server, ttl_checks=ttl_checks))
    given = [f"--{name.replace('_', '-')}" for name in ("token_file", "cert", "key", "bundle") if getattr(args, name)]
    if given:
        raise InvalidArgument(
            f"{', '.join(given)} given without --server; these options are for a remote CA over HTTPS "
            "(without --server the CLI uses the local admin socket)"
        )
    socket_path = Path(args.socket) if args.socket else _config(args, ttl_checks=ttl_checks).server.admin_socket
    return AdminClient.local(socket_path)


def cmd_run(args: argparse.Namespace) -> int:
    from ca.server import serve  # noqa: PLC0415 - the server's imports (uvicorn, grpc) only for `run`

    config = _config(args)
    configure_logging(config.server.log_level, config.server.log_format)
    asyncio.run(serve(config, new_root=args.new_trust_domain_root))
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
    if args.json:
        _print_json({key: reply[key] for key in ("spiffe_id", "serial", "expires_at")})
        return 0
    print(f"{reply['spiffe_id']} serial {reply['serial']} expires {reply['expires_at']}")
    print(f"wrote {out / 'svid.pem'}, {out / 'svid_key.pem'} (0600), {out / 'bundle.pem'}")
    return 0


def cmd_jwt_mint(args: argparse.Namespace) -> int:
    body: dict[str, object] = {"spiffe_id": str(SpiffeId.parse(args.spiffe_id)), "audience": list(args.audience)}
    if args.ttl:
        body["ttl_seconds"] = int(parse_duration(args.ttl).total_seconds())
    with _client(args) as client:
        reply = client.post_json("/v1/jwt-svids", body)
    if args.json:
        _print_json({"spiffe_id": body["spiffe_id"], "token": reply["token"], "expires_at": reply["expires_at"]})
        return 0
    print(reply["token"])
    return 0


def _ttl_seconds(text: str | None) -> int | None:
    return None if text is None else int(parse_duration(text).total_seconds())


def _print_json(document: object) -> None:
    print(json.dumps(document, indent=2, sort_keys=True))


def _entry_lines(entry: Mapping[str, Any]) -> list[str]:
    def listed(values: Sequence[str]) -> str:
        return ", ".join(values) or "-"

    def ttl(seconds: int | None) -> str:
        return "CA default" if seconds is None else f"{seconds}s"

    rows = (
        ("Entry ID", entry["id"]),
        ("SPIFFE ID", entry["spiffe_id"]),
        ("Parent ID", entry["parent_id"]),
        ("Revision", str(entry["revision"])),
        ("Selectors", listed(entry["selectors"])),
        ("DNS names", listed(entry["dns_names"])),
        ("X509-SVID TTL", ttl(entry["x509_svid_ttl_seconds"])),
        ("JWT-SVID TTL", ttl(entry["jwt_svid_ttl_seconds"])),
        ("Federates with", listed(entry["federates_with"])),
        ("Admin", "yes" if entry["admin"] else "no"),
        ("Hint", entry["hint"] or "-"),
        ("Owner", entry.get("owner") or "-"),
    )
    return [f"{label:<15}: {value}" for label, value in rows]


def _show_entry(entry: Mapping[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(entry)
    else:
        print("\n".join(_entry_lines(entry)))


def _entry_body(args: argparse.Namespace, current: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The entry document to send: the flags given, over ``current`` when updating."""
    body: dict[str, Any] = (
        {
            key: current[key]
            for key in (
                "spiffe_id",
                "parent_id",
                "selectors",
                "dns_names",
                "x509_svid_ttl_seconds",
                "jwt_svid_ttl_seconds",
                "federates_with",
                "admin",
                "hint",
                "owner",
            )
            if key in current
        }
        if current is not None
        else {"dns_names": [], "federates_with": [], "admin": False, "hint": ""}
    )
    given = {
        "spiffe_id": args.spiffe_id,
        "parent_id": args.parent_id,
        "selectors": args.selector,
        "dns_names": [] if getattr(args, "clear_dns", False) and args.dns is None else args.dns,
        "x509_svid_ttl_seconds": _ttl_seconds(args.x509_ttl),
        "jwt_svid_ttl_seconds": _ttl_seconds(args.jwt_ttl),
        "federates_with": args.federates_with,
        "admin": args.admin,
        "hint": args.hint,
        "owner": args.owner,
    }
    body.update({key: value for key, value in given.items() if value is not None})
    return body


def cmd_entry_create(args: argparse.Namespace) -> int:
    with _client(args) as client:
        entry = client.post_json("/v1/entries", _entry_body(args))
    _show_entry(entry, args.json)
    return 0


def cmd_entry_list(args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("parent_id", args.parent_id), ("spiffe_id", args.spiffe_id)) if v is not None}
    with _client(args) as client:
        entries = client.get_json("/v1/entries", **params)["entries"]
    if args.json:
        _print_json(entries)
        return 0
    for entry in entries:
        print("\n".join(_entry_lines(entry)), end="\n\n")
    print(f"{len(entries)} registration entr{'y' if len(entries) == 1 else 'ies'}")
    return 0


def cmd_entry_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        entry = client.get_json(f"/v1/entries/{args.entry_id}")
    _show_entry(entry, args.json)
    return 0


def cmd_entry_update(args: argparse.Namespace) -> int:
    """Change the given fields only; the update is refused if someone changed the entry in between.
    An update that changes nothing leaves the entry (and its revision) as it is."""
    if args.clear_dns and args.dns:
        raise InvalidArgument("--clear-dns removes every DNS name and --dns sets them; give one of the two")
    with _client(args) as client:
        current = client.get_json(f"/v1/entries/{args.entry_id}")
        body = {**_entry_body(args, current), "revision": current["revision"]}
        entry = client.request("PUT", f"/v1/entries/{args.entry_id}", json=body).json()
    _show_entry(entry, args.json)
    return 0


def cmd_entry_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        entry = client.request("DELETE", f"/v1/entries/{args.entry_id}").json()
    if args.json:
        _print_json(entry)
    else:
        print(f"deleted registration entry {entry['id']} ({entry['spiffe_id']})")
    return 0


def cmd_token_generate(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"ttl_seconds": _ttl_seconds(args.ttl)}
    if args.node_name is not None:
        body["node_name"] = args.node_name
    if args.replace:
        body["replace"] = True
    with _client(args) as client:
        reply = client.post_json("/v1/join-tokens", body)
    if args.json:
        _print_json(reply)
        return 0
    print(f"Token     : {reply['token']}")
    print(f"SPIFFE ID : {reply['spiffe_id']}")
    print(f"Expires   : {reply['expires_at']}")
    print("The token is shown only now and works once; hand it to the node's agent.", file=sys.stderr)
    return 0


def _add_entry_fields(parser: argparse.ArgumentParser, *, creating: bool) -> None:
    parser.add_argument("--spiffe-id", required=creating, help="the workload's SPIFFE ID")
    parser.add_argument("--parent-id", required=creating, help="the agent (or workload) it runs under")
    parser.add_argument(
        "--selector", action="append", required=creating, help="type:value, all must match (repeatable)"
    )
    parser.add_argument("--dns", action="append", help="DNS SAN (repeatable)" + ("" if creating else "; replaces all"))
    if not creating:
        parser.add_argument("--clear-dns", action="store_true", help="remove every DNS SAN")
    parser.add_argument("--x509-ttl", help="X509-SVID lifetime, e.g. 1h (default: the CA's)")
    parser.add_argument("--jwt-ttl", help="JWT-SVID lifetime, e.g. 5m (default: the CA's)")
    parser.add_argument("--federates-with", action="append", help="trust domain name (repeatable)")
    if creating:
        parser.add_argument("--admin", action="store_true", default=None, help="the workload may use the admin API")
    else:
        parser.add_argument("--admin", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument(
        "--hint", help="free text that tells apart SVIDs of one workload" + ("" if creating else " ('' clears it)")
    )
    parser.add_argument(
        "--owner",
        help="who to call about this workload: a team, an address or a pager alias"
        + ("" if creating else " ('' clears it)"),
    )
    parser.add_argument("--json", action="store_true", help="print JSON for machines")


def _add_entry_commands(commands: Any) -> None:
    entry = commands.add_parser("entry", help="registration entries").add_subparsers(dest="sub", required=True)
    create = entry.add_parser("create", help="create a registration entry")
    _add_entry_fields(create, creating=True)
    create.set_defaults(func=cmd_entry_create)

    listing = entry.add_parser("list", help="list registration entries")
    listing.add_argument("--parent-id", help="only entries under this parent")
    listing.add_argument("--spiffe-id", help="only entries for this SPIFFE ID")
    listing.add_argument("--json", action="store_true", help="print JSON for machines")
    listing.set_defaults(func=cmd_entry_list)

    for name, func, what in (("show", cmd_entry_show, "print"), ("delete", cmd_entry_delete, "delete")):
        sub = entry.add_parser(name, help=f"{what} one registration entry")
        sub.add_argument("entry_id")
        sub.add_argument("--json", action="store_true", help="print JSON for machines")
        sub.set_defaults(func=func)

    update = entry.add_parser("update", help="change the given fields of a registration entry")
    update.add_argument("entry_id")
    _add_entry_fields(update, creating=False)
    update.set_defaults(func=cmd_entry_update)

    token = commands.add_parser("token", help="join tokens").add_subparsers(dest="sub", required=True)
    generate = token.add_parser("generate", help="generate a one-time join token for a new node")
    generate.add_argument("--ttl", default="1h", help="how long the token stays usable (default 1h)")
    generate.add_argument("--node-name", help="agent ID's last path segment (default: a random UUID)")
    generate.add_argument(
        "--replace",
        action="store_true",
        help="even if an agent with this ID is attested: the new node replaces it when it attests",
    )
    generate.add_argument("--json", action="store_true", help="print JSON for machines")
    generate.set_defaults(func=cmd_token_generate)


def cmd_healthcheck(args: argparse.Namespace) -> int:
    with _client(args) as client:
        response = client.request("GET", "/ready")
    if args.json:
        _print_json({"ready": True, "status": response.text.strip()})
        return 0
    print(response.text.strip())
    return 0


def package_version() -> str:
    """The installed trustmesh distribution's version (``--version``)."""
    try:
        return importlib.metadata.version("trustmesh")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (trustmesh is not installed; run scripts/bootstrap)"


def name_subcommands(parser: argparse.ArgumentParser) -> None:
    """Name every subcommand group by its choices, as the usage line does, so a missing subcommand is
    reported as "the following arguments are required: {create,list,...}" rather than by the group's
    internal ``dest``. Walks the whole tree, including groups other modules registered."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            if action.metavar is None:
                action.metavar = "{" + ",".join(action.choices) + "}"
            for sub in action.choices.values():
                name_subcommands(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="trustmesh certificate authority")
    parser.add_argument("--config", help=f"TOML config file (default: ${CONFIG_ENV}, else built-in defaults)")
    parser.add_argument("--socket", help="admin socket of a running CA (default: from the config)")
    remote = parser.add_argument_group("remote CA", "talk to a CA's admin API over HTTPS (docs/admin-api.md)")
    remote.add_argument("--server", help=f"https://host:port of the CA's admin API (${CLIENT_ENV['server']})")
    remote.add_argument(
        "--token-file", help=f"file holding a bearer token from the IdP (${CLIENT_ENV['token_file']}); never argv"
    )
    remote.add_argument("--cert", help=f"admin X509-SVID (PEM chain) for mTLS (${CLIENT_ENV['cert']})")
    remote.add_argument("--key", help=f"its private key (PEM) (${CLIENT_ENV['key']})")
    remote.add_argument("--bundle", help=f"PEM roots that the CA's certificate chains to (${CLIENT_ENV['bundle']})")
    remote.add_argument(
        "--trust-domain", help="the CA's trust domain: it must present spiffe://<td>/trustmesh/server (default: config)"
    )
    remote.add_argument(
        "--server-name",
        help=f"check a configured web certificate by this host name instead of the CA's SPIFFE ID "
        f"(${CLIENT_ENV['server_name']})",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run_cmd = commands.add_parser("run", help="run the CA server")
    run_cmd.add_argument(
        "--new-trust-domain-root",
        action="store_true",
        help="start a new root although the key directory holds keys and the datastore no authorities "
        "(a lost datastore is otherwise refused); agents and workloads must then get the new bundle",
    )
    run_cmd.set_defaults(func=cmd_run)
    healthcheck = commands.add_parser("healthcheck", help="exit 0 when the running CA is ready")
    healthcheck.add_argument("--json", action="store_true", help="print JSON for machines")
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
    mint.add_argument("--json", action="store_true", help="print the SPIFFE ID, serial and expiry as JSON")
    mint.set_defaults(func=cmd_x509_mint)

    jwt_cmd = commands.add_parser("jwt", help="JWT-SVIDs").add_subparsers(dest="sub", required=True)
    jwt_mint = jwt_cmd.add_parser("mint", help="mint a JWT-SVID and print it")
    jwt_mint.add_argument("--spiffe-id", required=True)
    jwt_mint.add_argument("--audience", action="append", required=True, help="audience (repeatable)")
    jwt_mint.add_argument("--ttl", help="lifetime, e.g. 5m (default: jwt_svid.default_ttl)")
    jwt_mint.add_argument("--json", action="store_true", help="print the SPIFFE ID, token and expiry as JSON")
    jwt_mint.set_defaults(func=cmd_jwt_mint)

    _add_entry_commands(commands)
    add_authority_commands(commands, _client)
    add_agent_commands(commands, _client)
    add_federation_commands(commands, _client)
    add_mapping_commands(commands, _client)
    add_audit_commands(commands, _client, _config)
    add_inventory_commands(commands, _client)
    add_analyze_command(
        commands, functools.partial(_client, ttl_checks=False), functools.partial(_config, ttl_checks=False)
    )
    name_subcommands(parser)
    return parser


def _os_problem(err: OSError) -> str:
    where = f": {err.filename}" if err.filename else ""
    return f"{err.strerror or err}{where}"


def main(argv: Sequence[str] | None = None) -> int:
    quiet_grpc_core(os.environ)
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a reader that went away shows up here, not as a traceback at exit
        return code
    except TrustmeshError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `… | head`: the reader closed the pipe; send what is still buffered nowhere.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"{PROG}: error: standard output was closed before all of it was written", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"{PROG}: error: {_os_problem(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
