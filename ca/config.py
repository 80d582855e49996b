"""The CA's configuration: one TOML file plus ``TRUSTMESH_<SECTION>__<KEY>`` environment overrides.

Every value is validated at start-up and every problem is reported as ``<dotted.key>: <problem>;
<fix>``. The TTL arithmetic is checked too (DESIGN §3): a CA is activated at 5/6 of its predecessor's
life, so an SVID signed just before that must still fit in the 1/6 that is left; a configuration
whose maximum SVID TTL does not fit is refused with the numbers to change.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, field_validator, model_validator

from spiffe_core.durations import format_duration as _fmt
from spiffe_core.durations import parse_duration
from spiffe_core.errors import ConfigError, InvalidArgument
from spiffe_core.keys import KeyType
from spiffe_core.spiffe_id import TrustDomain

ENV_PREFIX = "TRUSTMESH_"


def _duration(value: object) -> timedelta:
    try:
        return parse_duration(value)
    except InvalidArgument as err:
        raise ValueError(str(err)) from None


def _key_type(value: object) -> KeyType:
    try:
        return KeyType.parse(str(value))
    except InvalidArgument as err:
        raise ValueError(str(err)) from None


Duration = Annotated[timedelta, BeforeValidator(_duration)]
KeyTypeField = Annotated[KeyType, BeforeValidator(_key_type)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Section):
    data_dir: Path = Path(".trustmesh/ca")
    admin_socket: Path = Path("admin.sock")  # relative to data_dir
    http_address: str = "127.0.0.1:8080"
    node_api_address: str = "127.0.0.1:8081"
    attestation_address: str = "127.0.0.1:8082"
    server_name: str = "trustmesh-ca"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("http_address", "node_api_address", "attestation_address")
    @classmethod
    def _address(cls, value: str) -> str:
        if value and not re.match(r"^[^:\s]+:\d{1,5}$", value):
            raise ValueError(f"{value!r} is not host:port; write e.g. '127.0.0.1:8081'")
        return value


class DatastoreConfig(_Section):
    url: str = ""


class SubjectConfig(_Section):
    organization: str = "trustmesh"
    common_name: str = ""


class UpstreamConfig(_Section):
    kind: Literal["self-signed", "disk"] = "self-signed"
    cert_file: Path | None = None
    key_file: Path | None = None
    bundle_file: Path | None = None

    @model_validator(mode="after")
    def _files(self) -> UpstreamConfig:
        if self.kind == "disk" and (self.cert_file is None or self.key_file is None):
            raise ValueError("kind 'disk' needs cert_file and key_file (the upstream CA's certificate and key)")
        return self


class KeyManagerConfig(_Section):
    kind: Literal["disk", "memory"] = "disk"
    kek_file: Path | None = None
    kek_env: str = ""


class CaSection(_Section):
    key_type: KeyTypeField = KeyType.EC_P256
    ttl: Duration = timedelta(days=7)
    subject: SubjectConfig = SubjectConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    key_manager: KeyManagerConfig = KeyManagerConfig()


class X509SvidConfig(_Section):
    default_ttl: Duration = timedelta(hours=1)
    max_ttl: Duration = timedelta(hours=24)


class JwtSvidConfig(_Section):
    key_type: KeyTypeField = KeyType.EC_P256
    default_ttl: Duration = timedelta(minutes=5)
    max_ttl: Duration = timedelta(hours=1)


class AgentSvidConfig(_Section):
    ttl: Duration = timedelta(hours=1)


class BundleConfig(_Section):
    refresh_hint: Duration = timedelta(minutes=5)


class CaConfig(_Section):
    trust_domain: TrustDomain = TrustDomain("example.org")
    server: ServerConfig = ServerConfig()
    datastore: DatastoreConfig = DatastoreConfig()
    ca: CaSection = CaSection()
    x509_svid: X509SvidConfig = X509SvidConfig()
    jwt_svid: JwtSvidConfig = JwtSvidConfig()
    agent_svid: AgentSvidConfig = AgentSvidConfig()
    bundle: BundleConfig = BundleConfig()

    @field_validator("trust_domain", mode="before")
    @classmethod
    def _trust_domain(cls, value: object) -> TrustDomain:
        if isinstance(value, TrustDomain):
            return value
        try:
            return TrustDomain.parse(str(value))
        except InvalidArgument as err:
            raise ValueError(str(err)) from None


def check_ttl_arithmetic(config: CaConfig) -> None:
    """Refuse TTLs that rotation cannot honour; the message says which numbers to change."""
    problems: list[str] = []
    ca_ttl = config.ca.ttl
    headroom = ca_ttl / 6
    for section, svid in (("x509_svid", config.x509_svid), ("jwt_svid", config.jwt_svid)):
        for name in ("default_ttl", "max_ttl"):
            if getattr(svid, name) <= timedelta(0):
                problems.append(f"{section}.{name}: must be positive")
        if svid.default_ttl > svid.max_ttl:
            problems.append(
                f"{section}.default_ttl ({_fmt(svid.default_ttl)}) is above {section}.max_ttl ({_fmt(svid.max_ttl)}); "
                "lower default_ttl or raise max_ttl"
            )
        if svid.max_ttl > headroom:
            problems.append(
                f"ca.ttl ({_fmt(ca_ttl)}) cannot cover {section}.max_ttl ({_fmt(svid.max_ttl)}) with rotation "
                f"headroom: a CA is activated at 5/6 of its life, so max_ttl must be at most ca.ttl/6 "
                f"({_fmt(headroom)}); raise ca.ttl to at least {_fmt(svid.max_ttl * 6)} or lower "
                f"{section}.max_ttl to at most {_fmt(headroom)}"
            )
    if config.agent_svid.ttl > headroom:
        problems.append(
            f"agent_svid.ttl ({_fmt(config.agent_svid.ttl)}) is over ca.ttl/6 ({_fmt(headroom)}); "
            f"lower it or raise ca.ttl to at least {_fmt(config.agent_svid.ttl * 6)}"
        )
    if config.agent_svid.ttl > config.x509_svid.max_ttl:
        # Agent SVIDs are X509-SVIDs and go through the same TTL policy; refuse now, not at attestation.
        problems.append(
            f"agent_svid.ttl ({_fmt(config.agent_svid.ttl)}) is over x509_svid.max_ttl "
            f"({_fmt(config.x509_svid.max_ttl)}); lower agent_svid.ttl or raise x509_svid.max_ttl"
        )
    if config.bundle.refresh_hint >= config.x509_svid.default_ttl:
        problems.append(
            f"bundle.refresh_hint ({_fmt(config.bundle.refresh_hint)}) must be shorter than x509_svid.default_ttl "
            f"({_fmt(config.x509_svid.default_ttl)}) so relying parties learn new roots before SVIDs use them"
        )
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def _env_overrides(environ: Mapping[str, str], known: dict[str, Any]) -> dict[str, Any]:
    """``TRUSTMESH_CA__TTL=14d`` → ``{"ca": {"ttl": "14d"}}``; unknown TRUSTMESH_ variables are errors."""
    overrides: dict[str, Any] = {}
    unknown: list[str] = []
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in ("TRUSTMESH_CONFIG",) or name.startswith("TRUSTMESH_AGENT_"):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        node: Any = known
        for part in path:
            if not isinstance(node, dict) or part not in node:
                unknown.append(name)
                break
            node = node[part]
        else:
            target = overrides
            for part in path[:-1]:
                target = target.setdefault(part, {})
            target[path[-1]] = value
    if unknown:
        raise ConfigError(
            f"unknown environment variables {sorted(unknown)}; overrides are TRUSTMESH_<SECTION>__<KEY>, "
            "e.g. TRUSTMESH_CA__TTL=14d"
        )
    return overrides


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = (
            _merge(merged[key], value) if isinstance(value, Mapping) and isinstance(merged.get(key), dict) else value
        )
    return merged


def _resolve_paths(config: CaConfig, base_dir: Path) -> CaConfig:
    server = config.server
    data_dir = server.data_dir if server.data_dir.is_absolute() else (base_dir / server.data_dir)
    admin_socket = server.admin_socket if server.admin_socket.is_absolute() else data_dir / server.admin_socket
    url = config.datastore.url or f"sqlite:///{data_dir / 'datastore.sqlite3'}"
    key_manager = config.ca.key_manager
    kek_file = key_manager.kek_file or (None if key_manager.kek_env else data_dir / "kek")
    if kek_file is not None and not kek_file.is_absolute():
        kek_file = base_dir / kek_file
    return config.model_copy(
        update={
            "server": server.model_copy(update={"data_dir": data_dir, "admin_socket": admin_socket}),
            "datastore": config.datastore.model_copy(update={"url": url}),
            "ca": config.ca.model_copy(update={"key_manager": key_manager.model_copy(update={"kek_file": kek_file})}),
        }
    )


def _describe(err: ValidationError) -> str:
    lines = []
    for problem in err.errors():
        where = ".".join(str(p) for p in problem["loc"]) or "config"
        message = str(problem["msg"]).removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "is not a known setting; check its spelling and section (see docs/configuration.md)"
        lines.append(f"{where}: {message}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> CaConfig:
    """Read the TOML file (or only defaults when ``path`` is None), apply environment overrides,
    validate everything, resolve relative paths against the file's directory, check TTL arithmetic."""
    env = os.environ if environ is None else environ
    document: dict[str, Any] = {}
    base_dir = Path.cwd()
    if path is not None:
        try:
            document = tomllib.loads(path.read_text())
        except OSError as err:
            raise ConfigError(f"cannot read config file {path}: {err.strerror}") from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {path} is not valid TOML: {err}") from err
        base_dir = path.resolve().parent
    known = CaConfig().model_dump(mode="python")
    document = _merge(document, _env_overrides(env, known))
    try:
        config = CaConfig.model_validate(document)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None
    check_ttl_arithmetic(config)
    return _resolve_paths(config, base_dir)


def default_config_toml() -> str:
    """A commented config with every default, for ``trustmesh-ca config init``."""
    return DEFAULT_CONFIG_TOML


DEFAULT_CONFIG_TOML = """\
# trustmesh CA configuration. Every key is optional; shown values are the defaults.
# Environment overrides: TRUSTMESH_<SECTION>__<KEY>, e.g. TRUSTMESH_CA__TTL=14d.
trust_domain = "example.org"

[server]
data_dir = ".trustmesh/ca"              # relative paths are relative to this file
admin_socket = "admin.sock"             # local admin API (0600) used by the CLI; relative to data_dir
http_address = "127.0.0.1:8080"         # /live, /ready, /metrics ("" disables)
node_api_address = "127.0.0.1:8081"     # agents' node API (mTLS)
attestation_address = "127.0.0.1:8082"  # agents' first contact (server TLS)
server_name = "trustmesh-ca"            # DNS SAN of the CA's serving certificate
log_level = "info"

[datastore]
url = ""                                # default sqlite:///<data_dir>/datastore.sqlite3; or postgresql://...

[ca]
key_type = "ec-p256"                    # ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096
ttl = "7d"                              # lifetime of each CA certificate

[ca.subject]
organization = "trustmesh"

[ca.upstream]
kind = "self-signed"                    # or "disk" with cert_file, key_file (and bundle_file)

[ca.key_manager]
kind = "disk"                           # PKCS#8 encrypted at rest; or "memory" (lost on restart)
# kek_file = "<data_dir>/kek"           # created 0600 on first run
# kek_env = "TRUSTMESH_KEK"             # take the key-encryption key from this variable instead

[x509_svid]
default_ttl = "1h"
max_ttl = "24h"

[jwt_svid]
key_type = "ec-p256"
default_ttl = "5m"
max_ttl = "1h"

[agent_svid]
ttl = "1h"

[bundle]
refresh_hint = "5m"
"""
