"""A trust domain made of real processes for end-to-end tests: ``trustmesh-ca run`` and
``trustmesh-agent run`` on loopback ports and Unix sockets in a temporary directory, driven through
their CLIs exactly as an operator would."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from sds.config import default_socket_dir
from tests.support.processes import background, command, free_port, run, wait_until

TRUST_DOMAIN = "example.org"
# How often a CA's first start is tried on fresh ports when one was taken meanwhile.
_CA_PORT_ATTEMPTS = 3


@dataclass
class Mesh:
    root: Path
    http_port: int = field(default_factory=free_port)
    node_port: int = field(default_factory=free_port)
    attestation_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # The agent's sockets go to root/<this>. None: the agent's default, <agent_dir>-public, whose
    # private proxy sockets are too long for a Unix socket under pytest's tmp_path (use a short root).
    socket_dir_name: str | None = "run"
    trust_domain: str = TRUST_DOMAIN
    _ca_extra: str = field(default="", repr=False)  # what write_ca_config was given, for new ports
    _ca_started: bool = field(default=False, repr=False)

    @property
    def ca_config(self) -> Path:
        return self.root / "ca.toml"

    @property
    def agent_dir(self) -> Path:
        return self.root / "agent"

    @property
    def socket_dir(self) -> Path:
        if self.socket_dir_name is None:
            return default_socket_dir(self.agent_dir)
        return self.root / self.socket_dir_name

    @property
    def sds_socket(self) -> Path:
        return self.socket_dir / "sds.sock"

    @property
    def workload_socket(self) -> Path:
        return self.socket_dir / "workload.sock"

    def write_ca_config(self, extra: str = "") -> None:
        self._ca_extra = extra
        self.ca_config.write_text(
            f'trust_domain = "{self.trust_domain}"\n{extra}\n[server]\ndata_dir = "{self.root / "ca"}"\n'
            f'http_address = "127.0.0.1:{self.http_port}"\nnode_api_address = "127.0.0.1:{self.node_port}"\n'
            f'attestation_address = "127.0.0.1:{self.attestation_port}"\n'
        )

    def ca(self, *args: str) -> str:
        result = run([command("trustmesh-ca"), "--config", str(self.ca_config), *args])
        assert result.returncode == 0, f"trustmesh-ca {' '.join(args)}: {result.stderr}"
        return result.stdout

    def ca_ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.http_port}/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    @contextlib.contextmanager
    def running_ca(self, log_name: str = "ca.log") -> Iterator[subprocess.Popen[bytes]]:
        """The CA, once it answers ``/ready`` and holds its admin socket. Its ports come from
        :func:`free_port`, which another process of the test run may take before the CA binds them: at
        its first start, a CA that exits for a port in use is started again on new ports."""
        if not self.ca_config.exists():
            self.write_ca_config()
        for attempt in range(1, _CA_PORT_ATTEMPTS + 1):
            argv = [command("trustmesh-ca"), "--config", str(self.ca_config), "run"]
            with background(argv, self.root / log_name) as proc:
                self.processes["ca"] = proc
                retry = not self._ca_started and attempt < _CA_PORT_ATTEMPTS
                if self._ca_became_ready(proc, log_name, retry):
                    self._ca_started = True
                    yield proc
                    return
            self.http_port, self.node_port, self.attestation_port = free_port(), free_port(), free_port()
            self.write_ca_config(self._ca_extra)

    def _ca_became_ready(self, proc: subprocess.Popen[bytes], log_name: str, retry_ports: bool) -> bool:
        """True once the CA is ready; False when it exited because one of its ports was in use and
        ``retry_ports``. Any other exit fails the test with the CA's log."""

        def settled() -> bool:
            return proc.poll() is not None or (self.ca_ready() and (self.root / "ca" / "admin.sock").exists())

        wait_until(settled, 60, "the CA to become ready")
        if proc.poll() is None:
            return True
        log = self.log(log_name)
        if retry_ports and " is in use; " in log:
            return False
        raise AssertionError(f"ca exited with {proc.returncode}:\n{log}")

    def join_token(self, node_name: str = "e2e") -> tuple[str, str]:
        reply = json.loads(self.ca("token", "generate", "--node-name", node_name, "--ttl", "10m", "--json"))
        return reply["token"], reply["spiffe_id"]

    def write_agent_config(
        self, token: str, path: Path | None = None, data_dir: Path | None = None, socket_dir: Path | None = None
    ) -> Path:
        (self.root / "bundle.pem").write_text(self.ca("bundle", "show", "--format", "pem"))
        config = path or self.root / "agent.toml"
        sockets = socket_dir or (None if self.socket_dir_name is None else self.socket_dir)
        config.write_text(
            f'trust_domain = "{self.trust_domain}"\nserver_address = "127.0.0.1:{self.node_port}"\n'
            f'attestation_address = "127.0.0.1:{self.attestation_port}"\n'
            f'trust_bundle_path = "{self.root / "bundle.pem"}"\njoin_token = "{token}"\n'
            f'data_dir = "{data_dir or self.agent_dir}"\n' + ("" if sockets is None else f'socket_dir = "{sockets}"\n')
        )
        config.chmod(0o600)
        return config

    @contextlib.contextmanager
    def running_agent(self, config: Path, log_name: str = "agent.log") -> Iterator[subprocess.Popen[bytes]]:
        argv = [command("trustmesh-agent"), "--config", str(config), "run"]
        with background(argv, self.root / log_name) as proc:
            self.processes["agent"] = proc
            wait_until(lambda: self._alive("agent") and self.sds_socket.exists(), 20, "the agent's SDS socket")
            yield proc

    def create_entry(
        self,
        spiffe_id: str,
        parent_id: str,
        *selectors: str,
        x509_ttl: str | None = None,
        federates_with: Sequence[str] = (),
    ) -> str:
        args = ["entry", "create", "--spiffe-id", spiffe_id, "--parent-id", parent_id, "--json"]
        for selector in selectors:
            args += ["--selector", selector]
        for trust_domain in federates_with:
            args += ["--federates-with", trust_domain]
        if x509_ttl:
            args += ["--x509-ttl", x509_ttl]
        return str(json.loads(self.ca(*args))["id"])

    def log(self, name: str) -> str:
        path = self.root / name
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def _alive(self, name: str) -> bool:
        proc = self.processes[name]
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.log(f'{name}.log')}")
        return True
