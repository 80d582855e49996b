"""What ``trustmesh-bridge enroll`` hands to config management for one brownfield host (docs/vm-onboarding.md).

An :class:`Enrollment` says how the host's agent finds and proves itself to the CA, and where things go
on the host. From it come the agent's configuration (the TOML ``trustmesh-agent`` loads) and a
hardened systemd unit. Both are plain text, rendered here without I/O, so they can be checked
without a CA.

Secrets never sit in a file the agent's user owns: the join token (installed by config management)
and the enterprise key (already on the host) stay root's 0600 files, and the unit hands the agent a
copy through systemd
credentials (``LoadCredential=``), readable only by the service under ``$CREDENTIALS_DIRECTORY``. The
agent configuration names the files where they are on the host, so the agent also starts without
systemd (by hand as root, or in a test); the unit points the agent at the credential copies with the
agent's own environment overrides (``TRUSTMESH_AGENT_…``).
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from spiffe_core.errors import InvalidArgument
from spiffe_core.spiffe_id import TrustDomain

UNIT_NAME = "trustmesh-agent.service"
CONFIG_FILE = "agent.toml"
BUNDLE_FILE = "bundle.pem"
TOKEN_FILE = "join-token"  # noqa: S105 - a file name, not a secret

# What a path may hold to go into a unit file unquoted and a TOML string unescaped: no white space,
# quotes, backslashes, '%' (a systemd specifier), '$' or control characters.
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._@+=,:/-]*")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_ADDRESS = re.compile(r"[A-Za-z0-9.-]+:(\d{1,5})")
# Where systemd makes a service's own directories (StateDirectory= under /var/lib, RuntimeDirectory= under /run).
_STATE_ROOT = PurePosixPath("/var/lib")
_RUNTIME_ROOT = PurePosixPath("/run")


class Method(enum.StrEnum):
    """How the host's agent proves itself at first contact (its node attestation)."""

    X509POP = "x509pop"  # the host's enterprise certificate and key
    JOIN_TOKEN = "join-token"  # a one-time token  # noqa: S105 - a method name

    @property
    def agent_setting(self) -> str:
        """The value of the agent's ``attestation`` setting."""
        return "x509pop" if self is Method.X509POP else "join_token"


def install_path(option: str, value: str) -> PurePosixPath:
    """An absolute path on the host, fit for a unit file and a TOML string. Raises InvalidArgument."""
    if not _SAFE_PATH.fullmatch(value) or ".." in PurePosixPath(value).parts:
        raise InvalidArgument(
            f"{option} {value!r}: give an absolute path of letters, digits and . _ - + @ = , : / only "
            "(it goes into the systemd unit as it is)"
        )
    return PurePosixPath(value)


def service_user(value: str) -> str:
    """A system user name (as useradd takes it). Raises InvalidArgument."""
    if not _USER.fullmatch(value):
        raise InvalidArgument(
            f"--user {value!r} is not a user name: lowercase letters, digits, '_' and '-', at most 32"
        )
    return value


def ca_address(option: str, value: str) -> str:
    """``host:port`` of one of the CA's listeners. Raises InvalidArgument."""
    found = _ADDRESS.fullmatch(value)
    if found is None or not 0 < int(found.group(1)) < 65536:
        raise InvalidArgument(f"{option} {value!r} is not host:port; write e.g. ca.corp.example.com:8081")
    return value


@dataclass(frozen=True, slots=True)
class InstallPaths:
    """Where the agent's pieces live on the host."""

    config_dir: PurePosixPath  # agent.toml, bundle.pem, join-token (root's)
    state_dir: PurePosixPath  # the agent's data_dir: its SVID, key and state (0700, the agent's)
    runtime_dir: PurePosixPath  # the agent's sockets: the Workload API and SDS (0755)
    agent_bin: PurePosixPath  # the trustmesh-agent executable

    @property
    def config_file(self) -> PurePosixPath:
        return self.config_dir / CONFIG_FILE

    @property
    def bundle_file(self) -> PurePosixPath:
        return self.config_dir / BUNDLE_FILE

    @property
    def token_file(self) -> PurePosixPath:
        return self.config_dir / TOKEN_FILE


@dataclass(frozen=True, slots=True)
class HostCertificate:
    """The host's enterprise certificate and key (x509pop), as paths on the host."""

    cert_file: PurePosixPath
    key_file: PurePosixPath
    chain_file: PurePosixPath | None = None

    def files(self) -> list[tuple[str, str, PurePosixPath]]:
        """(agent setting, credential name, path on the host) of each file the agent reads."""
        named = [("cert_file", "x509pop-cert.pem", self.cert_file), ("key_file", "x509pop-key.pem", self.key_file)]
        if self.chain_file is not None:
            named.append(("chain_file", "x509pop-chain.pem", self.chain_file))
        return named


@dataclass(frozen=True, slots=True)
class Enrollment:
    host: str
    trust_domain: TrustDomain
    server_address: str  # the CA's node API
    attestation_address: str  # the CA's attestation listener
    server_name: str  # the CA's server.server_name
    method: Method
    paths: InstallPaths
    user: str  # the system user the agent runs as
    certificate: HostCertificate | None = None  # x509pop only

    def __post_init__(self) -> None:
        if (self.method is Method.X509POP) != (self.certificate is not None):
            raise InvalidArgument("x509pop enrollment needs the host's certificate and key, and only it does")


def _toml(value: str) -> str:
    # A JSON string of these characters is a TOML basic string.
    return json.dumps(value, ensure_ascii=False)


def render_agent_config(enrollment: Enrollment) -> str:
    """The agent's TOML configuration (docs/agent.md), with the paths it has on the host."""
    paths = enrollment.paths
    lines = [
        f"# trustmesh agent of {enrollment.host} ({enrollment.method}), written by trustmesh-bridge enroll.",
        "# Install as " + str(paths.config_file) + "; see docs/vm-onboarding.md and docs/agent.md.",
        f"trust_domain = {_toml(enrollment.trust_domain.name)}",
        f"server_address = {_toml(enrollment.server_address)}",
        f"attestation_address = {_toml(enrollment.attestation_address)}",
        f"server_name = {_toml(enrollment.server_name)}",
        f"trust_bundle_path = {_toml(str(paths.bundle_file))}",
        f"attestation = {_toml(enrollment.method.agent_setting)}",
    ]
    if enrollment.method is Method.JOIN_TOKEN:
        lines.append(f"join_token_file = {_toml(str(paths.token_file))}")
    lines += [f"data_dir = {_toml(str(paths.state_dir))}", f"socket_dir = {_toml(str(paths.runtime_dir))}"]
    if enrollment.certificate is not None:
        lines.append("")
        lines.append("[x509pop]")
        lines += [f"{setting} = {_toml(str(path))}" for setting, _, path in enrollment.certificate.files()]
    return "\n".join(lines) + "\n"


def _directory(kind: str, path: PurePosixPath, root: PurePosixPath) -> list[str]:
    """systemd's own directory setting for ``path`` when it lies under ``root``, which also creates it
    with the service's owner; otherwise only the permission to write an existing one."""
    if path.is_relative_to(root) and path != root:
        mode = "0700" if kind == "State" else "0755"
        return [f"{kind}Directory={path.relative_to(root)}", f"{kind}DirectoryMode={mode}"]
    return [f"ReadWritePaths={path}"]


def _credentials(enrollment: Enrollment) -> list[str]:
    """LoadCredential= for each secret, and the agent setting pointed at its copy (``%d``: the
    service's credentials directory)."""
    secrets: list[tuple[str, str, PurePosixPath]] = []
    if enrollment.method is Method.JOIN_TOKEN:
        secrets.append(("JOIN_TOKEN_FILE", TOKEN_FILE, enrollment.paths.token_file))
    if enrollment.certificate is not None:
        secrets += [
            (f"X509POP__{setting.upper()}", name, path) for setting, name, path in enrollment.certificate.files()
        ]
    lines = [f"LoadCredential={name}:{path}" for _, name, path in secrets]
    lines += [f"Environment=TRUSTMESH_AGENT_{setting}=%d/{name}" for setting, name, _ in secrets]
    return lines


def render_systemd_unit(enrollment: Enrollment) -> str:
    """``trustmesh-agent.service``: the agent as a dedicated user with no capabilities, a read-only
    system, no home directories, its own /tmp and devices, and a system call allow list. The agent
    needs only its state directory (written), its socket directory (written, searchable by the
    workloads) and the network to the CA. docs/vm-onboarding.md says why each setting is there, and
    why some hardening settings are not (they would break workload attestation)."""
    paths = enrollment.paths
    lines = [
        f"# trustmesh agent of {enrollment.host} ({enrollment.method}), written by trustmesh-bridge enroll.",
        f"# Install as /etc/systemd/system/{UNIT_NAME}; see docs/vm-onboarding.md.",
        "[Unit]",
        "Description=trustmesh node agent (SPIFFE Workload API and Envoy SDS)",
        "Wants=network-online.target",
        "After=network-online.target",
        "# The agent itself retries while the CA is unreachable; it exits on what a restart cannot fix (a used",
        "# token, a revoked certificate, a bad setting), so restarts stop after 5 failures in 10 minutes.",
        "StartLimitIntervalSec=10min",
        "StartLimitBurst=5",
        "",
        "[Service]",
        "Type=exec",
        f"ExecStart={paths.agent_bin} --config {paths.config_file} run",
        f"User={enrollment.user}",
        f"Group={enrollment.user}",
        "Restart=on-failure",
        "RestartSec=10s",
        "TimeoutStopSec=30s",
        "# Secrets stay root's 0600 files; the agent reads the copies systemd hands to this service alone.",
        *_credentials(enrollment),
        *_directory("State", paths.state_dir, _STATE_ROOT),
        *_directory("Runtime", paths.runtime_dir, _RUNTIME_ROOT),
        "UMask=0077",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "PrivateMounts=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "RemoveIPC=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallErrorNumber=EPERM",
        "# Not set, on purpose: ProtectProc=invisible and PrivateUsers=yes would hide the workloads the agent",
        "# attests (their /proc entries, their uids).",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"
