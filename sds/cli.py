"""``trustmesh-agent``: run the node agent, write Envoy bootstraps for it, and fetch SVIDs from it.

Every failure is one line on stderr and a non-zero exit (2 for usage, 1 for anything refused).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sds.config import CONFIG_PATH_ENV, AgentConfig, load_agent_config
from sds.envoy_bootstrap import Inbound, Outbound, envoy_bootstrap, render
from spiffe_core.errors import TrustmeshError
from spiffe_core.spiffe_id import SpiffeId

PROG = "trustmesh-agent"


def _config(args: argparse.Namespace) -> AgentConfig:
    path = args.config or os.environ.get(CONFIG_PATH_ENV)
    return load_agent_config(Path(path) if path else None, os.environ)


def cmd_run(args: argparse.Namespace) -> int:
    from sds.server import run_agent  # noqa: PLC0415 - the runtime (grpc servers) only for `run`

    run_agent(_config(args))
    return 0


def cmd_envoy_bootstrap(args: argparse.Namespace) -> int:
    config = _config(args)
    spiffe_id = args.spiffe_id if args.spiffe_id == "default" else str(SpiffeId.parse(args.spiffe_id))
    inbound = (
        Inbound(args.inbound_port, tuple(str(SpiffeId.parse(p)) for p in args.allow)) if args.inbound_port else None
    )
    outbound = None
    if args.outbound_port:
        if not args.upstream or not args.upstream_id:
            raise TrustmeshError("--outbound-port needs --upstream HOST:PORT and --upstream-id SPIFFE_ID")
        outbound = Outbound(args.outbound_port, args.upstream, str(SpiffeId.parse(args.upstream_id)))
    bootstrap = envoy_bootstrap(
        node_id=args.node_id,
        spiffe_id=spiffe_id,
        sds_socket=config.sds_socket,
        admin_port=args.admin_port,
        inbound=inbound,
        outbound=outbound,
    )
    sys.stdout.write(render(bootstrap) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="trustmesh node agent")
    parser.add_argument("--config", help=f"TOML config file (default: ${CONFIG_PATH_ENV}, else built-in defaults)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("run", help="attest, then serve SDS and the Workload API").set_defaults(func=cmd_run)

    envoy = commands.add_parser("envoy-bootstrap", help="print an Envoy bootstrap that takes its certs from this agent")
    envoy.add_argument("--spiffe-id", default="default", help="the SVID Envoy presents (default: 'default')")
    envoy.add_argument("--node-id", default="envoy")
    envoy.add_argument("--admin-port", type=int, default=9901, help="Envoy admin listener on 127.0.0.1")
    envoy.add_argument("--inbound-port", type=int, help="terminate mTLS here")
    envoy.add_argument("--allow", action="append", default=[], help="peer SPIFFE ID allowed inbound (repeatable)")
    envoy.add_argument("--outbound-port", type=int, help="plain HTTP on 127.0.0.1 here, forwarded over mTLS")
    envoy.add_argument("--upstream", help="HOST:PORT of the mTLS upstream")
    envoy.add_argument("--upstream-id", help="SPIFFE ID the upstream must present")
    envoy.set_defaults(func=cmd_envoy_bootstrap)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except TrustmeshError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
