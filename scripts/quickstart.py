"""The quickstart: a trust domain on one machine — CA, node agent, and two Envoys doing mTLS.

    scripts/quickstart            # bring everything up and keep it running (Ctrl-C stops it)
    scripts/quickstart --check    # bring it up, prove one mTLS request works, tear it down

What it does, in the order an operator would:
  1. `trustmesh-ca run` on SQLite with a self-signed root (state in .trustmesh/quickstart/ca);
  2. `trustmesh-ca token generate` for this node, and two registration entries parented to it
     (spiffe://example.org/frontend and /backend, selected by this user's uid);
  3. `trustmesh-agent run` with that token (SDS and Workload API sockets in .trustmesh/quickstart/agent);
  4. two Envoys whose bootstraps come from `trustmesh-agent envoy-bootstrap`: "frontend" takes plain
     HTTP on 127.0.0.1:10000 and calls "backend" (127.0.0.1:10443) over mTLS; each accepts only the
     other's SPIFFE ID;
  5. a request through frontend, showing the identity backend saw.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
TRUST_DOMAIN = "example.org"
FRONTEND = f"spiffe://{TRUST_DOMAIN}/frontend"
BACKEND = f"spiffe://{TRUST_DOMAIN}/backend"


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def ca_config(self) -> Path:
        return self.root / "ca.toml"


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, procs: list[subprocess.Popen[bytes]], logs: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise SystemExit(f"quickstart: {proc.args[0]} exited early; see the logs in {logs}")
        if condition():
            return
        time.sleep(0.1)
    raise SystemExit(f"quickstart: timed out waiting for {what}; see the logs in {logs}")


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def port_in_use(port: int) -> bool:
    """Whether something already accepts connections on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def cli(layout: Layout, *args: str) -> str:
    result = subprocess.run(
        [str(BIN / "trustmesh-ca"), "--config", str(layout.ca_config), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"quickstart: trustmesh-ca {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


@contextlib.contextmanager
def started(
    layout: Layout, name: str, argv: list[str], procs: list[subprocess.Popen[bytes]]
) -> Iterator[subprocess.Popen[bytes]]:
    log = (layout.logs / f"{name}.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    procs.append(proc)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def request_through_frontend(port: int) -> tuple[int, str, str]:
    reply = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
    return reply.status_code, reply.headers.get("x-peer-spiffe-id", ""), reply.text.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="make one mTLS request, then stop everything")
    parser.add_argument("--dir", default=".trustmesh/quickstart", help="state and logs")
    parser.add_argument("--port-base", type=int, default=10000, help="frontend listens here, the rest above it")
    args = parser.parse_args()

    root = Path(args.dir).resolve()
    layout = Layout(root)
    layout.logs.mkdir(parents=True, exist_ok=True)
    base = args.port_base
    ports = {
        "frontend": base,
        "backend": base + 443,
        "ca_http": base + 80,
        "node": base + 81,
        "attest": base + 82,
        "frontend_admin": base + 901,
        "backend_admin": base + 902,
    }
    ca_dir, agent_dir = root / "ca", root / "agent"
    layout.ca_config.write_text(
        f'trust_domain = "{TRUST_DOMAIN}"\n[server]\ndata_dir = "{ca_dir}"\n'
        f'http_address = "127.0.0.1:{ports["ca_http"]}"\nnode_api_address = "127.0.0.1:{ports["node"]}"\n'
        f'attestation_address = "127.0.0.1:{ports["attest"]}"\n'
    )
    # A CA (or Envoy) left from another run would answer in place of the ones started here, and the
    # quickstart would report a CA it did not start: refuse instead.
    busy = [f"{name} 127.0.0.1:{port}" for name, port in ports.items() if port_in_use(port)]
    if busy:
        print(
            f"quickstart: ports already in use ({', '.join(busy)}) — a quickstart from another run may still be "
            "running; stop it, or pick other ports with --port-base",
            file=sys.stderr,
        )
        return 1
    procs: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            started(layout, "ca", [str(BIN / "trustmesh-ca"), "--config", str(layout.ca_config), "run"], procs)
        )
        wait_until(lambda: http_ok(f"http://127.0.0.1:{ports['ca_http']}/ready"), 30, "the CA", procs, layout.logs)
        print(f"[1/5] CA ready: trust domain {TRUST_DOMAIN}, health http://127.0.0.1:{ports['ca_http']}/ready")

        (root / "bundle.pem").write_text(cli(layout, "bundle", "show", "--format", "pem"))
        token = json.loads(cli(layout, "token", "generate", "--node-name", "quickstart", "--ttl", "10m", "--json"))
        agent_id = token["spiffe_id"]
        existing = {e["spiffe_id"] for e in json.loads(cli(layout, "entry", "list", "--parent-id", agent_id, "--json"))}
        for workload in (FRONTEND, BACKEND):
            if workload not in existing:
                cli(
                    layout,
                    "entry",
                    "create",
                    "--spiffe-id",
                    workload,
                    "--parent-id",
                    agent_id,
                    "--selector",
                    f"unix:uid:{os.getuid()}",
                )
        print(f"[2/5] join token for {agent_id}; entries {FRONTEND} and {BACKEND} (selector unix:uid:{os.getuid()})")

        agent_config = root / "agent.toml"
        agent_config.write_text(
            f'trust_domain = "{TRUST_DOMAIN}"\nserver_address = "127.0.0.1:{ports["node"]}"\n'
            f'attestation_address = "127.0.0.1:{ports["attest"]}"\ntrust_bundle_path = "{root / "bundle.pem"}"\n'
            f'join_token = "{token["token"]}"\ndata_dir = "{agent_dir}"\n'
        )
        agent_config.chmod(0o600)  # it holds the join token
        agent = [str(BIN / "trustmesh-agent"), "--config", str(agent_config)]
        stack.enter_context(started(layout, "agent", [*agent, "run"], procs))
        wait_until((agent_dir / "sds.sock").exists, 30, "the agent's SDS socket", procs, layout.logs)
        print(f"[3/5] agent attested; SDS at {agent_dir / 'sds.sock'}, Workload API at {agent_dir / 'workload.sock'}")

        envoy = shutil.which("envoy", path=str(BIN)) or "envoy"
        for name, spiffe_id, extra in (
            ("backend", BACKEND, ["--inbound-port", str(ports["backend"]), "--allow", FRONTEND]),
            (
                "frontend",
                FRONTEND,
                [
                    "--outbound-port",
                    str(ports["frontend"]),
                    "--upstream",
                    f"127.0.0.1:{ports['backend']}",
                    "--upstream-id",
                    BACKEND,
                ],
            ),
        ):
            bootstrap = subprocess.run(
                [
                    *agent,
                    "envoy-bootstrap",
                    "--spiffe-id",
                    spiffe_id,
                    "--node-id",
                    name,
                    "--admin-port",
                    str(ports[f"{name}_admin"]),
                    *extra,
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            (root / f"envoy-{name}.json").write_text(bootstrap)
            stack.enter_context(
                started(
                    layout,
                    f"envoy-{name}",
                    [
                        envoy,
                        "-c",
                        str(root / f"envoy-{name}.json"),
                        "--base-id",
                        str(ports[f"{name}_admin"]),
                        "-l",
                        "warning",
                    ],
                    procs,
                )
            )
        wait_until(
            lambda: http_ok(f"http://127.0.0.1:{ports['frontend']}/"), 30, "mTLS through the Envoys", procs, layout.logs
        )
        print(
            f"[4/5] Envoys up: frontend http://127.0.0.1:{ports['frontend']}/ "
            f"-> backend 127.0.0.1:{ports['backend']} (mTLS)"
        )

        status, peer, body = request_through_frontend(ports["frontend"])
        print(f"[5/5] GET via frontend: {status} {body!r}; backend saw peer {peer}")
        if status != 200 or peer != FRONTEND:
            print("quickstart: FAILED — backend did not see the frontend's SPIFFE ID", file=sys.stderr)
            return 1
        if args.check:
            return 0
        print(f"\nRunning. Try: curl -si http://127.0.0.1:{ports['frontend']}/   Logs: {layout.logs}   Ctrl-C stops.")
        with contextlib.suppress(KeyboardInterrupt):
            while all(p.poll() is None for p in procs):
                time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
