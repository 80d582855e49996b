"""``trustmesh-agent``: run the node agent, write Envoy bootstraps for it, and fetch SVIDs from it.

Every failure is one line on stderr and a non-zero exit (2 for usage, 1 for anything refused).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sds.config import CONFIG_PATH_ENV, AgentConfig, load_agent_config
from sds.envoy_bootstrap import (
    Inbound,
    LegacyInbound,
    LegacyOutbound,
    Outbound,
    envoy_bootstrap,
    render,
)
from sds.files import write_private_file, write_public_file
from sds.version import package_version
from spiffe_core.durations import parse_duration
from spiffe_core.errors import FailedPrecondition, InvalidArgument, TrustmeshError, UpstreamUnavailable
from spiffe_core.logs import quiet_grpc_core
from spiffe_core.spiffe_id import SpiffeId, TrustDomain

if TYPE_CHECKING:
    from sds.workload_client import WorkloadApiClient

PROG = "trustmesh-agent"


def _config(args: argparse.Namespace) -> AgentConfig:
    path = args.config or os.environ.get(CONFIG_PATH_ENV)
    return load_agent_config(Path(path) if path else None, os.environ)


HEALTHCHECK_TIMEOUT_SECONDS = 5.0


def cmd_healthcheck(args: argparse.Namespace) -> int:
    """Ask the running agent's health listener (``[health] address``) whether it is ready (``--live``:
    whether it answers at all). Exit 0 printing ``ready``; 1 with the agent's one-line reason."""
    health = _config(args).health
    if not health.address:
        raise FailedPrecondition(
            "health.address is not set, so the agent serves no health endpoint; set "
            '[health] address = "127.0.0.1:8089" (or "unix:health.sock") in the config and restart the agent'
        )
    path = "/live" if args.live else "/ready"
    socket_path = health.unix_path
    transport = None if socket_path is None else httpx.HTTPTransport(uds=str(socket_path))
    base = "http://agent" if socket_path is not None else f"http://{health.address}"
    try:
        with httpx.Client(transport=transport, timeout=HEALTHCHECK_TIMEOUT_SECONDS, trust_env=False) as client:
            reply = client.get(base + path)
    except httpx.HTTPError as err:
        raise UpstreamUnavailable(
            f"cannot reach the agent's health endpoint at {health.address} ({err or type(err).__name__}); "
            "is 'trustmesh-agent run' running with this config?"
        ) from err
    answer = reply.text.strip().splitlines()[0] if reply.text.strip() else f"HTTP {reply.status_code}"
    if reply.status_code == 200:
        print(answer)
        return 0
    print(f"{PROG}: {answer}", file=sys.stderr)
    return 1


def cmd_run(args: argparse.Namespace) -> int:
    from sds.server import run_agent  # noqa: PLC0415 - the runtime (grpc servers) only for `run`

    run_agent(_config(args))
    return 0


_NO_LISTENER = (
    "envoy-bootstrap needs a listener: --inbound-port PORT --allow SPIFFE_ID --inbound-upstream HOST:PORT "
    "to terminate mTLS in front of your application, and/or --outbound-port PORT --upstream HOST:PORT "
    "--upstream-id SPIFFE_ID to call an mTLS service, and/or --legacy-port PORT --legacy-upstream HOST:PORT "
    "--legacy-roots NAME to call a legacy TLS server, and/or --legacy-inbound-port PORT to serve legacy clients"
)


def _legacy_outbound(args: argparse.Namespace) -> tuple[LegacyOutbound, ...]:
    """The --legacy-* outbound listener, if asked for."""
    given = [args.legacy_upstream, args.legacy_roots, args.legacy_server_name]
    if not args.legacy_port:
        if any(given):
            raise InvalidArgument("--legacy-upstream, --legacy-roots and --legacy-server-name need --legacy-port")
        return ()
    if not args.legacy_upstream or not args.legacy_roots:
        raise InvalidArgument(
            "--legacy-port needs --legacy-upstream HOST:PORT and --legacy-roots NAME (a [bridge] legacy_roots name "
            "on the CA)"
        )
    return (LegacyOutbound(args.legacy_port, args.legacy_upstream, args.legacy_roots, args.legacy_server_name or ""),)


def cmd_envoy_bootstrap(args: argparse.Namespace) -> int:
    if not (args.inbound_port or args.outbound_port or args.legacy_port or args.legacy_inbound_port):
        raise InvalidArgument(_NO_LISTENER)
    if args.legacy_inbound_upstream and not args.legacy_inbound_port:
        raise InvalidArgument(
            "--legacy-inbound-upstream configures the legacy inbound listener; give --legacy-inbound-port"
        )
    if not args.inbound_port and (args.allow or args.allow_trust_domain or args.inbound_upstream):
        raise InvalidArgument(
            "--allow, --allow-trust-domain and --inbound-upstream configure the inbound listener; give --inbound-port"
        )
    config = _config(args)
    spiffe_id = args.spiffe_id if args.spiffe_id == "default" else str(SpiffeId.parse(args.spiffe_id))
    # A bare --allow-trust-domain names the agent's own trust domain; with a value, that (federated) one.
    allowed_trust_domains = tuple(
        dict.fromkeys(
            (config.trust_domain if td is None else TrustDomain.parse(td)).name for td in args.allow_trust_domain
        )
    )
    inbound = (
        Inbound(
            args.inbound_port,
            tuple(str(SpiffeId.parse(p)) for p in args.allow),
            upstream=args.inbound_upstream,
            allowed_trust_domains=allowed_trust_domains,
        )
        if args.inbound_port
        else None
    )
    outbound = None
    if args.outbound_port:
        if not args.upstream or not args.upstream_id:
            raise TrustmeshError("--outbound-port needs --upstream HOST:PORT and --upstream-id SPIFFE_ID")
        outbound = Outbound(args.outbound_port, args.upstream, str(SpiffeId.parse(args.upstream_id)))
    bootstrap = envoy_bootstrap(
        node_id=args.node_id,
        spiffe_id=spiffe_id,
        trust_domain=config.trust_domain,
        sds_socket=config.sds_socket,
        admin_port=args.admin_port,
        inbound=inbound,
        outbound=outbound,
        max_connection_duration=parse_duration(args.max_connection_duration),
        legacy_outbound=_legacy_outbound(args),
        legacy_inbound=(
            LegacyInbound(args.legacy_inbound_port, args.legacy_inbound_upstream) if args.legacy_inbound_port else None
        ),
    )
    sys.stdout.write(render(bootstrap) + "\n")
    return 0


def _workload_client(args: argparse.Namespace) -> WorkloadApiClient:
    from sds.workload_client import WorkloadApiClient  # noqa: PLC0415 - grpc only after quiet_grpc_core

    return WorkloadApiClient(Path(args.socket) if args.socket else _config(args).workload_api_socket)


def _pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _print_json(document: object) -> None:
    print(json.dumps(document, indent=2, sort_keys=True))


def cmd_fetch_x509(args: argparse.Namespace) -> int:
    svids = _workload_client(args).fetch_x509_svids()
    out = Path(args.out)
    written: list[dict[str, object]] = []
    for index, svid in enumerate(svids):
        suffix = "" if index == 0 else f".{index}"
        key_pem = svid.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_private_file(out / f"svid{suffix}.key", key_pem)
        write_public_file(out / f"svid{suffix}.pem", _pem(svid.cert_chain))
        write_public_file(out / f"bundle{suffix}.pem", _pem(svid.bundle))
        written.append(
            {
                "spiffe_id": svid.spiffe_id,
                "hint": svid.hint,
                "expires_at": svid.cert_chain[0].not_valid_after_utc.isoformat(),
                "svid": str(out / f"svid{suffix}.pem"),
                "key": str(out / f"svid{suffix}.key"),
                "bundle": str(out / f"bundle{suffix}.pem"),
            }
        )
        if not args.json:
            print(f"{svid.spiffe_id}: wrote {out}/svid{suffix}.pem, svid{suffix}.key (0600) and bundle{suffix}.pem")
    if args.json:
        _print_json(written)
    return 0


def cmd_fetch_bundles(args: argparse.Namespace) -> int:
    out = Path(args.out)
    written: dict[str, dict[str, object]] = {}
    for trust_domain_id, certs in sorted(_workload_client(args).fetch_x509_bundles().items()):
        # The Workload API keys bundles by trust domain ID (spiffe://example.org); files take the name.
        trust_domain = trust_domain_id.removeprefix("spiffe://")
        write_public_file(out / f"{trust_domain}.pem", _pem(certs))
        written[trust_domain] = {"authorities": len(certs), "path": str(out / f"{trust_domain}.pem")}
        if not args.json:
            print(f"{trust_domain}: {len(certs)} authorities -> {out / f'{trust_domain}.pem'}")
    if args.json:
        _print_json(written)
    return 0


def cmd_fetch_jwt(args: argparse.Namespace) -> int:
    svids = _workload_client(args).fetch_jwt_svids(list(args.audience), args.spiffe_id or "")
    if args.json:
        _print_json([{"spiffe_id": spiffe_id, "token": token} for spiffe_id, token in svids])
        return 0
    for spiffe_id, token in svids:
        print(f"{spiffe_id} {token}" if args.with_id else token)
    return 0


def cmd_bundle_show(args: argparse.Namespace) -> int:
    """The trust bundle this agent holds, from its data directory: for legacy clients (PEM, e.g. into the
    system trust store) on a host whose workloads need no Workload API. Needs no CA and no entry."""
    from sds.persistence import AgentStore  # noqa: PLC0415 - grpc (via the node client) only after quiet_grpc_core

    config = _config(args)
    bundle = AgentStore(config.data_dir, config.trust_domain).load_bundle()
    if bundle is None:
        raise FailedPrecondition(
            f"the agent has no trust bundle in {config.data_dir} yet; run it (trustmesh-agent run) until it attests"
        )
    data = bundle.x509_authorities_pem() if args.format == "pem" else (bundle.to_json() + "\n").encode()
    if args.out is None:
        sys.stdout.write(data.decode())
        return 0
    write_public_file(Path(args.out), data)
    print(f"{bundle.trust_domain}: {len(bundle.x509_authorities)} X.509 authorities -> {args.out}")
    return 0


def name_subcommands(parser: argparse.ArgumentParser) -> None:
    """Name every subcommand group by its choices, as the usage line does, so a missing subcommand is
    reported as "the following arguments are required: {x509,bundles,jwt}" rather than by the
    group's internal ``dest``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            if action.metavar is None:
                action.metavar = "{" + ",".join(action.choices) + "}"
            for sub in action.choices.values():
                name_subcommands(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="trustmesh node agent")
    parser.add_argument("--config", help=f"TOML config file (default: ${CONFIG_PATH_ENV}, else built-in defaults)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("run", help="attest, then serve SDS and the Workload API").set_defaults(func=cmd_run)
    check = commands.add_parser(
        "healthcheck",
        help="exit 0 when the running agent is ready, else 1 with the reason (a Docker/systemd health check)",
        description="Asks the running agent's [health] listener. Ready: it holds its X509-SVID and its trust "
        "bundle, and reached the CA within health.ca_contact_window (docs/observability.md).",
    )
    check.add_argument("--live", action="store_true", help="only check that the agent answers (liveness)")
    check.set_defaults(func=cmd_healthcheck)

    envoy = commands.add_parser(
        "envoy-bootstrap",
        help="print an Envoy bootstrap that takes its certs from this agent",
        description=_NO_LISTENER.replace("envoy-bootstrap needs", "Give"),
    )
    envoy.add_argument("--spiffe-id", default="default", help="the SVID Envoy presents (default: 'default')")
    envoy.add_argument("--node-id", default="envoy")
    envoy.add_argument("--admin-port", type=int, default=9901, help="Envoy admin listener on 127.0.0.1")
    envoy.add_argument("--inbound-port", type=int, help="terminate mTLS here")
    envoy.add_argument(
        "--allow",
        action="append",
        default=[],
        help="peer SPIFFE ID allowed inbound, of this or a federated trust domain (repeatable)",
    )
    envoy.add_argument(
        "--allow-trust-domain",
        action="append",
        nargs="?",
        const=None,
        default=[],
        metavar="TRUST_DOMAIN",
        help="allow every SPIFFE ID of TRUST_DOMAIN inbound — a federated one, or without a value the agent's "
        "own (instead of, or besides, --allow; repeatable)",
    )
    envoy.add_argument(
        "--inbound-upstream",
        metavar="HOST:PORT",
        help="your application (plain HTTP); inbound requests go there with the caller's SPIFFE ID in "
        "x-forwarded-client-cert (default: Envoy answers 200 itself)",
    )
    envoy.add_argument("--outbound-port", type=int, help="plain HTTP on 127.0.0.1 here, forwarded over mTLS")
    envoy.add_argument("--upstream", help="HOST:PORT of the mTLS upstream")
    envoy.add_argument("--upstream-id", help="SPIFFE ID the upstream must present, of this or a federated trust domain")
    envoy.add_argument(
        "--legacy-port", type=int, help="plain HTTP on 127.0.0.1 here, forwarded over TLS to a legacy server"
    )
    envoy.add_argument("--legacy-upstream", metavar="HOST:PORT", help="the legacy TLS server")
    envoy.add_argument(
        "--legacy-roots",
        metavar="NAME",
        help="verify the legacy server's certificate with these enterprise roots (the CA's [bridge] legacy_roots "
        "name; SDS secret legacy/NAME)",
    )
    envoy.add_argument(
        "--legacy-server-name",
        metavar="DNS_NAME",
        help="the DNS name the legacy server's certificate must carry, also sent as SNI (default: the host of "
        "--legacy-upstream)",
    )
    envoy.add_argument(
        "--legacy-inbound-port",
        type=int,
        help="TLS with this workload's SVID for legacy clients (no client certificate asked for); they trust the "
        "mesh bundle as PEM (trustmesh-agent bundle show)",
    )
    envoy.add_argument(
        "--legacy-inbound-upstream",
        metavar="HOST:PORT",
        help="your application (plain HTTP) behind the legacy inbound listener (default: Envoy answers 200 itself)",
    )
    envoy.add_argument(
        "--max-connection-duration",
        default="5m",
        help="close each mTLS connection after this long, so revocations reach open connections (0: never)",
    )
    envoy.set_defaults(func=cmd_envoy_bootstrap)

    bundle = commands.add_parser("bundle", help="the trust bundle this agent holds").add_subparsers(
        dest="sub", required=True
    )
    show = bundle.add_parser(
        "show",
        help="print (or write, 0644) the trust domain's bundle, read from the agent's data directory",
        description="For legacy clients that trust the mesh through a PEM file. Run it as the agent's user; "
        "run it again when the bundle changes (e.g. from a timer), as authorities rotate.",
    )
    show.add_argument("--format", choices=("pem", "spiffe"), default="pem")
    show.add_argument("--out", help="write the file atomically instead of printing it")
    show.set_defaults(func=cmd_bundle_show)

    api = commands.add_parser("api", help="call the agent's Workload API as this process")
    api.add_argument("--socket", help="Workload API socket (default: workload_api_socket from the config)")
    fetch = api.add_subparsers(dest="api", required=True).add_parser("fetch").add_subparsers(dest="what", required=True)
    x509_cmd = fetch.add_parser("x509", help="write this process's X509-SVIDs, keys (0600) and bundles")
    x509_cmd.add_argument("--out", required=True)
    x509_cmd.add_argument("--json", action="store_true", help="print what was written as JSON")
    x509_cmd.set_defaults(func=cmd_fetch_x509)
    bundles = fetch.add_parser("bundles", help="write the X.509 bundles (own and federated), one PEM per trust domain")
    bundles.add_argument("--out", required=True)
    bundles.add_argument("--json", action="store_true", help="print what was written as JSON")
    bundles.set_defaults(func=cmd_fetch_bundles)
    jwt_cmd = fetch.add_parser("jwt", help="print JWT-SVIDs for an audience")
    jwt_cmd.add_argument("--audience", action="append", required=True)
    jwt_cmd.add_argument("--spiffe-id", help="only this identity (must be one this process is entitled to)")
    jwt_cmd.add_argument("--with-id", action="store_true", help="print 'SPIFFE_ID TOKEN' per line")
    jwt_cmd.add_argument("--json", action="store_true", help="print [{spiffe_id, token}] as JSON")
    jwt_cmd.set_defaults(func=cmd_fetch_jwt)
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
