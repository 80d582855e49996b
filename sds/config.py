"""The agent's configuration: one TOML file plus ``TRUSTMESH_AGENT_<SECTION>__<KEY>`` environment overrides.

DESIGN §4 (the agent) and §6 (defaults). Top-level keys are overridden as ``TRUSTMESH_AGENT_<KEY>``
(``TRUSTMESH_AGENT_SERVER_ADDRESS``), keys of a section as ``TRUSTMESH_AGENT_<SECTION>__<KEY>``
(``TRUSTMESH_AGENT_ROTATION__JITTER``). Every value is validated at start-up; every problem is reported
as ``<dotted.key>: <problem>; <fix>``.

The join token is a secret: it is held as a ``SecretStr`` (its repr is masked), it never appears in an
error message, and it may live in a file of its own (``join_token_file``) that config management
drops next to the agent.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import re
import shlex
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from sds.x509pop_proof import X509PopProof
from spiffe_core.durations import parse_duration
from spiffe_core.errors import ConfigError, InvalidArgument
from spiffe_core.keys import KeyType
from spiffe_core.logs import LogFormat, LogLevel
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import check_dns_name

ENV_PREFIX = "TRUSTMESH_AGENT_"
# Names the config file itself; read by the agent's entry point, not an override.
CONFIG_PATH_ENV = "TRUSTMESH_AGENT_CONFIG"
# sockaddr_un.sun_path holds 108 bytes including the terminating NUL on Linux.
_MAX_SOCKET_PATH_BYTES = 107


def _as_value_error(parse: Any) -> Any:
    """Wrap a domain parser so pydantic reports its message (InvalidArgument → ValueError)."""

    def validate(value: object) -> object:
        try:
            return parse(value)
        except InvalidArgument as err:
            raise ValueError(str(err)) from None

    return validate


def _trust_domain(value: object) -> TrustDomain:
    return value if isinstance(value, TrustDomain) else TrustDomain.parse(str(value))


def _spiffe_id(value: object) -> SpiffeId:
    return value if isinstance(value, SpiffeId) else SpiffeId.parse(str(value))


def _selector(value: object) -> Selector:
    return value if isinstance(value, Selector) else Selector.parse(str(value))


def _key_type(value: object) -> KeyType:
    return value if isinstance(value, KeyType) else KeyType.parse(str(value))


Duration = Annotated[timedelta, BeforeValidator(_as_value_error(parse_duration))]
TrustDomainField = Annotated[TrustDomain, BeforeValidator(_as_value_error(_trust_domain))]
SpiffeIdField = Annotated[SpiffeId, BeforeValidator(_as_value_error(_spiffe_id))]
SelectorField = Annotated[Selector, BeforeValidator(_as_value_error(_selector))]
KeyTypeField = Annotated[KeyType, BeforeValidator(_as_value_error(_key_type))]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RotationConfig(_Section):
    """When workload and agent X509-SVIDs are replaced: at ``svid_rotation_fraction`` of their life,
    moved by up to ±``jitter`` of that point so a fleet does not renew in lockstep."""

    svid_rotation_fraction: float = Field(default=0.5, gt=0.0, lt=1.0)
    jitter: float = Field(default=0.1, ge=0.0, le=0.5)

    @model_validator(mode="after")
    def _before_expiry(self) -> RotationConfig:
        latest = self.svid_rotation_fraction * (1 + self.jitter)
        if latest >= 1.0:
            raise ValueError(
                f"svid_rotation_fraction {self.svid_rotation_fraction} with jitter {self.jitter} can put rotation "
                f"at {latest:.2f} of an SVID's life, after it expires; lower one of them so that "
                "fraction * (1 + jitter) < 1"
            )
        return self


def _account_id(kind: Literal["user", "group"]) -> Any:
    """A uid/gid given as a number or as a name the account database knows (resolved at start-up)."""

    def resolve(value: object) -> object:
        if isinstance(value, str) and not value.isdigit():
            try:
                return pwd.getpwnam(value).pw_uid if kind == "user" else grp.getgrnam(value).gr_gid
            except KeyError:
                raise ValueError(f"no {kind} named {value!r} on this host; give a known name or a number") from None
        return value

    return resolve


def _file_mode(value: object) -> object:
    """A permission mode: a TOML integer (``0o640``) or an octal string (``"0640"``)."""
    if isinstance(value, str):
        try:
            return int(value, 8)
        except ValueError:
            raise ValueError(f'{value!r} is not an octal mode; write e.g. "0640" or 0o640') from None
    return value


AccountUid = Annotated[int, BeforeValidator(_account_id("user")), Field(ge=0)]
AccountGid = Annotated[int, BeforeValidator(_account_id("group")), Field(ge=0)]
FileMode = Annotated[int, BeforeValidator(_file_mode), Field(ge=0, le=0o777)]


class CertFileTarget(_Section):
    """One directory the agent keeps an X509-SVID in for an application that reads files (cert-file mode).

    The SVID is the one with ``spiffe_id`` (among those entitled to ``selectors``, when given), or else
    the first SVID entitled to ``selectors``. After the files change, ``reload_command`` runs (no shell;
    split like a POSIX shell would) with at most ``reload_timeout`` to finish.

    The files belong to ``owner``/``group`` (the agent's user and group when not given) with
    ``key_mode``/``cert_mode``, so a workload of another user can read its own key. A ``dir`` that
    belongs to a user other than root, the agent or ``owner`` is refused unless ``allow_foreign_dir``."""

    dir: Path
    spiffe_id: SpiffeIdField | None = None
    selectors: tuple[SelectorField, ...] = ()
    reload_command: str = ""
    reload_timeout: Duration = timedelta(seconds=30)
    owner: AccountUid | None = None
    group: AccountGid | None = None
    key_mode: FileMode = 0o600
    cert_mode: FileMode = 0o644
    allow_foreign_dir: bool = False

    @field_validator("key_mode")
    @classmethod
    def _key_private(cls, value: int) -> int:
        if value & 0o007:
            raise ValueError(f"{value:04o} lets every user read the private key; use 0600 (or 0640 with group)")
        return value

    @field_validator("reload_command")
    @classmethod
    def _command(cls, value: str) -> str:
        try:
            shlex.split(value)
        except ValueError as err:
            raise ValueError(f"{value!r} cannot be split into arguments ({err}); close the quotes") from None
        return value

    @field_validator("reload_timeout")
    @classmethod
    def _timeout(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be positive; write e.g. '30s'")
        return value

    @model_validator(mode="after")
    def _chooses_an_svid(self) -> CertFileTarget:
        if self.spiffe_id is None and not self.selectors:
            raise ValueError("names no SVID; set spiffe_id, selectors, or both")
        return self

    @property
    def reload_argv(self) -> tuple[str, ...]:
        return tuple(shlex.split(self.reload_command))


class LimitsConfig(_Section):
    """Per-caller limits of the agent's two sockets (Workload API and SDS; each socket has its own
    budgets), so one local user or one proxy cannot starve the others (docs/agent.md, "Limits")."""

    max_connections: int = 1024
    max_connections_per_uid: int = 256
    sds_max_resource_names: int = 1024

    @field_validator("max_connections", "max_connections_per_uid", "sds_max_resource_names")
    @classmethod
    def _positive(cls, value: int) -> int:
        if not 1 <= value <= 1_000_000:
            raise ValueError(f"{value} is not between 1 and 1000000; remove it to get the default")
        return value

    @model_validator(mode="after")
    def _per_uid_within_total(self) -> LimitsConfig:
        if self.max_connections_per_uid > self.max_connections:
            raise ValueError(
                f"max_connections_per_uid {self.max_connections_per_uid} is above max_connections "
                f"{self.max_connections}; one uid could then hold every connection — lower it"
            )
        return self


UNIX_PREFIX = "unix:"
_LOOPBACK_NAMES = ("localhost",)


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (an IP literal, brackets allowed, or a name) is this machine's loopback."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class HealthConfig(_Section):
    """The agent's health listener: ``/live``, ``/ready`` and ``/metrics`` (docs/observability.md).

    ``address`` is ``host:port`` on the loopback interface, or ``unix:PATH`` (a 0600 socket; a relative
    path counts from ``data_dir``); empty turns the listener off. Other hosts are refused unless
    ``allow_non_loopback``: nothing there is authenticated, and ``/metrics`` names every SPIFFE ID the
    agent holds. ``/ready`` needs the CA reached within ``ca_contact_window``; ``/metrics`` shows the
    expiry of at most ``max_svid_series`` workload SVIDs (the soonest to expire)."""

    address: str = ""
    allow_non_loopback: bool = False
    ca_contact_window: Duration = timedelta(minutes=5)
    max_svid_series: int = 1000

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not value or value.startswith(UNIX_PREFIX):
            if value == UNIX_PREFIX:
                raise ValueError("'unix:' names no path; write e.g. 'unix:health.sock'")
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not host:port (port 1-65535) or unix:PATH; write e.g. '127.0.0.1:8089'")
        return value

    @field_validator("ca_contact_window")
    @classmethod
    def _window(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be positive; write e.g. '5m'")
        return value

    @field_validator("max_svid_series")
    @classmethod
    def _series(cls, value: int) -> int:
        if not 1 <= value <= 100_000:
            raise ValueError(f"{value} is not between 1 and 100000; remove it to get the default")
        return value

    @model_validator(mode="after")
    def _loopback_only(self) -> HealthConfig:
        host = self.tcp_host
        if host is not None and not self.allow_non_loopback and not is_loopback_host(host):
            raise ValueError(
                f"address {self.address!r} is not a loopback address; /metrics names every SPIFFE ID this agent "
                "holds and nothing there is authenticated — use 127.0.0.1 or unix:PATH, or set "
                "allow_non_loopback = true behind a firewall you trust"
            )
        return self

    @property
    def tcp_host(self) -> str | None:
        """The TCP host of ``address``, None for a Unix socket or when the listener is off."""
        if not self.address or self.address.startswith(UNIX_PREFIX):
            return None
        return self.address.rpartition(":")[0]

    @property
    def unix_path(self) -> Path | None:
        """The socket path of a ``unix:`` address (resolved against ``data_dir`` at load), else None."""
        return Path(self.address.removeprefix(UNIX_PREFIX)) if self.address.startswith(UNIX_PREFIX) else None


class X509PopConfig(_Section):
    """The enterprise certificate an ``attestation = "x509pop"`` agent proves possession of."""

    cert_file: Path | None = None  # the host's certificate, PEM (its chain may follow it)
    key_file: Path | None = None  # its private key, PEM, unencrypted (keep it 0600)
    chain_file: Path | None = None  # intermediates, PEM, when cert_file holds only the leaf


class AgentConfig(_Section):
    trust_domain: TrustDomainField = TrustDomain("example.org")
    server_address: str = "127.0.0.1:8081"
    attestation_address: str = "127.0.0.1:8082"
    server_name: str = "trustmesh-ca"
    trust_bundle_path: Path | None = None
    join_token: SecretStr | None = None
    join_token_file: Path | None = None
    attestation: Literal["join_token", "x509pop"] = "join_token"
    x509pop: X509PopConfig = X509PopConfig()
    data_dir: Path = Path(".trustmesh/agent")
    socket_dir: Path | None = None  # None: "<data_dir>-public", next to data_dir
    workload_api_socket: Path = Path("workload.sock")  # relative to socket_dir
    sds_socket: Path = Path("sds.sock")  # relative to socket_dir
    key_type: KeyTypeField = KeyType.EC_P256
    rotation: RotationConfig = RotationConfig()
    limits: LimitsConfig = LimitsConfig()
    health: HealthConfig = HealthConfig()
    cert_files: tuple[CertFileTarget, ...] = ()
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"

    @field_validator("server_address", "attestation_address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not re.match(r"^[^:\s]+:\d{1,5}$", value):
            raise ValueError(f"{value!r} is not host:port; write e.g. '127.0.0.1:8081'")
        return value

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, value: str) -> str:
        try:
            return check_dns_name(value)
        except InvalidArgument as err:
            raise ValueError(f"{err}; it must equal the CA's server.server_name") from None

    @field_validator("join_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty; remove it or paste the token 'trustmesh-ca token generate' printed")
        return value

    @model_validator(mode="after")
    def _one_token_source(self) -> AgentConfig:
        if self.join_token is not None and self.join_token_file is not None:
            raise ValueError("join_token and join_token_file are both set; keep only one of them")
        if self.attestation == "x509pop":
            if self.x509pop.cert_file is None or self.x509pop.key_file is None:
                raise ValueError(
                    'attestation = "x509pop" needs x509pop.cert_file and x509pop.key_file: the host\'s enterprise '
                    "certificate and its key"
                )
            if self.join_token is not None or self.join_token_file is not None:
                raise ValueError('attestation = "x509pop" uses no join token; remove join_token / join_token_file')
        return self

    def x509pop_proof(self) -> X509PopProof | None:
        """The x509pop proof when ``attestation = "x509pop"``; None for join tokens."""
        section = self.x509pop
        if self.attestation != "x509pop" or section.cert_file is None or section.key_file is None:
            return None
        return X509PopProof(section.cert_file, section.key_file, section.chain_file)

    def load_join_token(self) -> str | None:
        """The join token, read from ``join_token_file`` when that is how it is given; None when the
        configuration names none. Raises ConfigError when the file cannot be read or is empty."""
        if self.join_token is not None:
            return self.join_token.get_secret_value().strip()
        if self.join_token_file is None:
            return None
        try:
            token = self.join_token_file.read_text().strip()
        except OSError as err:
            raise ConfigError(
                f"join_token_file: cannot read {self.join_token_file} ({err.strerror}); "
                "write the token 'trustmesh-ca token generate' printed into it"
            ) from err
        if not token:
            raise ConfigError(
                f"join_token_file: {self.join_token_file} is empty; "
                "write the token 'trustmesh-ca token generate' printed into it"
            )
        return token


def _sections() -> dict[str, set[str] | None]:
    """Every top-level key (None) and every section with its keys, as environment overrides may name them."""
    known: dict[str, set[str] | None] = {}
    for name, info in AgentConfig.model_fields.items():
        annotation = info.annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        known[name] = set(annotation.model_fields) if is_section else None  # type: ignore[union-attr]
    return known


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``TRUSTMESH_AGENT_ROTATION__JITTER=0.2`` → ``{"rotation": {"jitter": "0.2"}}``."""
    known = _sections()
    overrides: dict[str, Any] = {}
    unknown: list[str] = []
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_PATH_ENV:
            continue
        section, sep, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if section == "cert_files":
            raise ConfigError(f"{name}: cert_files is a list of tables; set it in the config file, not the environment")
        if section not in known or bool(sep) != (known[section] is not None):
            unknown.append(name)
        elif sep:
            if key not in (known[section] or set()):
                unknown.append(name)
            else:
                overrides.setdefault(section, {})[key] = value
        else:
            overrides[section] = value
    if unknown:
        raise ConfigError(
            f"unknown environment variables {sorted(unknown)}; overrides are TRUSTMESH_AGENT_<KEY> or "
            "TRUSTMESH_AGENT_<SECTION>__<KEY>, e.g. TRUSTMESH_AGENT_SERVER_ADDRESS=10.0.0.5:8081"
        )
    return overrides


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        merged[key] = _merge(current, value) if isinstance(value, Mapping) and isinstance(current, dict) else value
    return merged


def _describe(err: ValidationError) -> str:
    """One line per problem, naming the key; never the input value (it may be the join token)."""
    lines = []
    for problem in err.errors():
        where = ".".join(str(p) for p in problem["loc"]) or "config"
        message = str(problem["msg"]).removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "is not a known setting; check its spelling and section (see docs/agent.md)"
        lines.append(f"{where}: {message}")
    return "invalid agent configuration:\n  " + "\n  ".join(lines)


def _absolute(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else base / path


def default_socket_dir(data_dir: Path) -> Path:
    """Where the sockets go unless configured: a directory of their own next to ``data_dir``
    (``/var/lib/trustmesh-agent`` → ``/var/lib/trustmesh-agent-public``). ``data_dir`` is 0700, so
    workloads of other users could not reach sockets inside it."""
    return data_dir.with_name(f"{data_dir.name}-public")


def _resolve_paths(config: AgentConfig, base_dir: Path) -> AgentConfig:
    data_dir = _absolute(config.data_dir, base_dir)
    socket_dir = default_socket_dir(data_dir) if config.socket_dir is None else _absolute(config.socket_dir, base_dir)
    sockets = {
        "workload_api_socket": _absolute(config.workload_api_socket, socket_dir),
        "sds_socket": _absolute(config.sds_socket, socket_dir),
    }
    for key, socket_path in sockets.items():
        if len(os.fsencode(socket_path)) > _MAX_SOCKET_PATH_BYTES:
            raise ConfigError(
                f"{key}: {socket_path} is longer than {_MAX_SOCKET_PATH_BYTES} bytes, the limit of a Unix "
                "socket path; choose a shorter data_dir or socket_dir, or an absolute socket path"
            )
    return config.model_copy(
        update={
            "data_dir": data_dir,
            "socket_dir": socket_dir,
            **sockets,
            "trust_bundle_path": None
            if config.trust_bundle_path is None
            else _absolute(config.trust_bundle_path, base_dir),
            "join_token_file": None if config.join_token_file is None else _absolute(config.join_token_file, base_dir),
            "x509pop": config.x509pop.model_copy(
                update={
                    name: _absolute(value, base_dir)
                    for name in ("cert_file", "key_file", "chain_file")
                    if (value := getattr(config.x509pop, name)) is not None
                }
            ),
            "cert_files": tuple(
                target.model_copy(update={"dir": _absolute(target.dir, base_dir)}) for target in config.cert_files
            ),
            "health": _resolved_health(config.health, data_dir),
        }
    )


def _resolved_health(health: HealthConfig, data_dir: Path) -> HealthConfig:
    path = health.unix_path
    if path is None:
        return health
    resolved = _absolute(path, data_dir)
    if len(os.fsencode(resolved)) > _MAX_SOCKET_PATH_BYTES:
        raise ConfigError(
            f"health.address: {resolved} is longer than {_MAX_SOCKET_PATH_BYTES} bytes, the limit of a Unix "
            "socket path; give a shorter or absolute path"
        )
    return health.model_copy(update={"address": f"{UNIX_PREFIX}{resolved}"})


def load_agent_config(path: Path | None, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read the TOML file (only defaults when ``path`` is None), apply environment overrides, validate
    everything and resolve relative paths against the file's directory (sockets against socket_dir).
    Raises ConfigError listing every problem."""
    env = os.environ if environ is None else environ
    document: dict[str, Any] = {}
    base_dir = Path.cwd()
    if path is not None:
        try:
            document = tomllib.loads(path.read_text())
        except OSError as err:
            raise ConfigError(f"cannot read agent config file {path}: {err.strerror}") from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"agent config file {path} is not valid TOML: {err}") from err
        base_dir = path.resolve().parent
    document = _merge(document, _env_overrides(env))
    try:
        config = AgentConfig.model_validate(document)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None
    return _resolve_paths(config, base_dir)
