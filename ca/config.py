"""The CA's configuration: one TOML file plus ``TRUSTMESH_<SECTION>__<KEY>`` environment overrides.

DESIGN §6 gives the defaults, §3 the rule checked here at start-up: every value is validated and
every problem is reported as ``<dotted.key>: <problem>; <fix>``, all problems at once. The TTL
arithmetic is checked too: the next CA is activated at 5/6 of its predecessor's life, so an SVID
signed just before that must still fit in the 1/6 that is left; a configuration whose maximum SVID
TTL does not fit is refused with the numbers to change. docs/configuration.md lists every key.
"""

from __future__ import annotations

import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from bridge.legacy_chain import DEFAULT_MAX_CHAIN_LENGTH, DEFAULT_MAX_RSA_BITS, MIN_RSA_BITS
from bridge.legacy_roots import MAX_LEGACY_ROOT_SETS, check_legacy_roots_name
from bridge.mapping import NAME_PATTERN
from ca.rbac import Role
from spiffe_core.durations import format_duration, parse_duration
from spiffe_core.errors import ConfigError, InvalidArgument
from spiffe_core.keys import KeyType
from spiffe_core.logs import LogFormat, LogLevel
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import check_dns_name

ENV_PREFIX = "TRUSTMESH_"
# Not overrides: the CLI reads the config file's path from it, and the agent (which may run on the
# same host, with its own TRUSTMESH_AGENT_ variables) has its own configuration.
CONFIG_PATH_ENV = "TRUSTMESH_CONFIG"
# Not overrides either: how the CLI reaches a remote CA's admin API (docs/admin-api.md "Remote CLI").
CLIENT_ENV = {
    "server": "TRUSTMESH_SERVER",
    "token_file": "TRUSTMESH_TOKEN_FILE",
    "cert": "TRUSTMESH_CERT_FILE",
    "key": "TRUSTMESH_KEY_FILE",
    "bundle": "TRUSTMESH_BUNDLE_FILE",
    "server_name": "TRUSTMESH_SERVER_NAME",
}
_AGENT_ENV_PREFIX = "TRUSTMESH_AGENT_"
# sockaddr_un.sun_path holds 108 bytes including the terminating NUL on Linux.
MAX_SOCKET_PATH_BYTES = 107
_ADDRESS = re.compile(r"[A-Za-z0-9.-]+:(\d{1,5})")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MOUNT = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")
_KEY_PREFIX = re.compile(r"[A-Za-z0-9._-]{0,64}")
_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
_DOCS = "see docs/configuration.md"
MIN_CHECKPOINT_INTERVAL = timedelta(seconds=1)
MAX_CHECKPOINT_INTERVAL = timedelta(days=1)


def _duration(value: object) -> timedelta:
    try:
        return parse_duration(value)
    except InvalidArgument as err:
        raise ValueError(str(err)) from None
    except OverflowError:
        raise ValueError(f"{value!r} is too long a duration; write at most e.g. '3650d'") from None


def _key_type(value: object) -> KeyType:
    if isinstance(value, KeyType):
        return value
    try:
        return KeyType.parse(str(value))
    except InvalidArgument as err:
        raise ValueError(str(err)) from None


def _trust_domain(value: object) -> TrustDomain:
    if isinstance(value, TrustDomain):
        return value
    try:
        return TrustDomain.parse(str(value))
    except InvalidArgument as err:
        raise ValueError(str(err)) from None


def _optional_path(value: object) -> object:
    return None if value == "" else value  # an empty environment override means "not set", not "."


def _role(value: object) -> Role:
    try:
        return Role(str(value))
    except ValueError:
        names = ", ".join(role.value for role in Role)
        raise ValueError(f"{value!r} is not a role; use one of: {names}") from None


Duration = Annotated[timedelta, BeforeValidator(_duration)]
RoleField = Annotated[Role, BeforeValidator(_role)]
OptionalPath = Annotated[Path | None, BeforeValidator(_optional_path)]
KeyTypeField = Annotated[KeyType, BeforeValidator(_key_type)]
TrustDomainField = Annotated[TrustDomain, BeforeValidator(_trust_domain)]


def _check_address(value: str, *, may_be_empty: bool) -> str:
    if not value and may_be_empty:
        return value
    match = _ADDRESS.fullmatch(value)
    if match is None or int(match[1]) > 65535:
        disable = " or '' to disable" if may_be_empty else ""
        raise ValueError(f"{value!r} is not host:port; write e.g. '127.0.0.1:8081' (port 0-65535){disable}")
    return value


def _check_fixed_port(value: str, who: str) -> str:
    """Refuse port 0 (any free port) for a listener ``who`` must dial."""
    if value and int(value.rpartition(":")[2]) == 0:
        raise ValueError(f"{value!r} has port 0; {who} must know where to dial, give a fixed port")
    return value


def _check_env_name(value: str, example: str) -> str:
    if value and not _ENV_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not an environment variable name; write e.g. '{example}'")
    return value


def _check_mount(value: str, example: str) -> str:
    """A Vault mount path: segments of safe characters, no leading or trailing slash, no '..'."""
    if not _MOUNT.fullmatch(value) or ".." in value.split("/"):
        raise ValueError(
            f"{value!r} is not a Vault mount path; write segments of A-Z, a-z, 0-9, '.', '-' or '_' joined by '/', "
            f"without a leading or trailing '/', e.g. '{example}'"
        )
    return value


def _check_vault_address(value: str) -> str:
    if not value:
        return value
    url = urlsplit(value)
    if url.scheme not in ("https", "http") or not url.hostname or url.path.strip("/") or url.query or url.username:
        raise ValueError(f"{value!r} is not a Vault address; write e.g. 'https://vault.example.org:8200'")
    try:
        url.port  # noqa: B018 - parsing it is the check
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port; write e.g. 'https://vault.example.org:8200'") from None
    if url.scheme == "http" and url.hostname not in _LOOPBACK_HOSTS:
        raise ValueError(
            f"{value!r} would send the Vault token unencrypted; use https:// (and vault.ca_file for a private CA) — "
            "plain http is accepted only for a Vault on this host (127.0.0.1, ::1 or localhost)"
        )
    return value.rstrip("/")


def _check_rate(value: float) -> float:
    if not 0 <= value < float("inf"):
        raise ValueError(f"{value!r} is not a rate; write calls per second, e.g. 100, or 0 for no limit")
    return value


def _check_burst(value: int) -> int:
    if value < 1:
        raise ValueError(f"{value!r} is not a burst; write at least 1")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Section):
    """Where the CA keeps its state and where it listens."""

    data_dir: Path = Path(".trustmesh/ca")
    admin_socket: Path = Path("admin.sock")  # relative to data_dir
    http_address: str = "127.0.0.1:8080"
    node_api_address: str = "127.0.0.1:8081"
    attestation_address: str = "127.0.0.1:8082"
    server_name: str = "trustmesh-ca"
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"

    @field_validator("http_address")
    @classmethod
    def _optional_address(cls, value: str) -> str:
        return _check_address(value, may_be_empty=True)

    @field_validator("node_api_address", "attestation_address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _check_address(value, may_be_empty=False)

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, value: str) -> str:
        if value.startswith("*."):
            raise ValueError(f"{value!r} is a wildcard; the CA's serving name is one host name, e.g. 'ca.example.org'")
        try:
            return check_dns_name(value)
        except InvalidArgument as err:
            raise ValueError(f"{err}; write e.g. 'ca.example.org'") from None


class DatastoreConfig(_Section):
    """The SQL database; empty means SQLite in the data directory."""

    url: str = ""
    # Records of issued X509-SVIDs are deleted this long after they expire (they back revocation and
    # CRLs, which only ever concern unexpired SVIDs).
    issued_certificate_retention: Duration = timedelta(hours=24)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        # The URL may carry a password: never echo it.
        if value and not value.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://")):
            raise ValueError(
                "the URL scheme is not supported; write 'sqlite:///<path>', 'postgresql://…' or "
                "'postgresql+psycopg://…', or leave it empty for SQLite in the data directory"
            )
        return value


class SubjectConfig(_Section):
    """Subject name fields of the CA certificates (the CA adds a unique serial per authority)."""

    organization: str = "trustmesh"
    common_name: str = ""  # "" = "trustmesh CA <trust domain>"

    # RFC 5280 upper bounds (ub-organization-name, ub-common-name); an empty organization names nothing.
    @field_validator("organization")
    @classmethod
    def _organization(cls, value: str) -> str:
        if not 1 <= len(value) <= 64:
            raise ValueError(f"{value!r} must be 1-64 characters; write e.g. 'Example Corp'")
        return value

    @field_validator("common_name")
    @classmethod
    def _common_name(cls, value: str) -> str:
        if len(value) > 64:
            raise ValueError(f"{value!r} is longer than 64 characters; shorten it or leave it empty")
        return value


class UpstreamConfig(_Section):
    """Who signs the CA certificates: the CA itself, an enterprise root whose files are given, or a
    Vault PKI secrets engine (``vault-pki``, reached through the ``[vault]`` section)."""

    kind: Literal["self-signed", "disk", "vault-pki"] = "self-signed"
    cert_file: OptionalPath = None
    key_file: OptionalPath = None
    bundle_file: OptionalPath = None
    pki_mount: str = "pki"  # vault-pki: where Vault's PKI secrets engine is mounted

    @field_validator("pki_mount")
    @classmethod
    def _mount(cls, value: str) -> str:
        return _check_mount(value, "pki")

    @model_validator(mode="after")
    def _files(self) -> UpstreamConfig:
        given = [name for name in ("cert_file", "key_file", "bundle_file") if getattr(self, name) is not None]
        if self.kind == "disk" and (self.cert_file is None or self.key_file is None):
            raise ValueError(
                "kind 'disk' needs cert_file and key_file; set them to the upstream CA's certificate and key"
            )
        if self.kind != "disk" and given:
            raise ValueError(
                f"kind '{self.kind}' uses no {', '.join(given)}; remove them or set kind = 'disk' to sign with "
                "the upstream CA they name"
            )
        return self


class KeyManagerConfig(_Section):
    """Custody of the CA's private keys (``disk``: encrypted PKCS#8 files; ``memory``: lost on restart;
    ``vault-transit``: non-exportable keys in Vault's transit engine, which signs)."""

    kind: Literal["disk", "memory", "vault-transit"] = "disk"
    kek_file: OptionalPath = None  # default <data_dir>/kek unless kek_env is set
    kek_env: str = ""
    directory: OptionalPath = None  # disk: where the key files live; default <data_dir>/keys
    create_kek_if_missing: bool = True
    transit_mount: str = "transit"  # vault-transit: where Vault's transit secrets engine is mounted
    key_prefix: str = "trustmesh-"  # vault-transit: transit key name = key_prefix + the CA's key ID

    @field_validator("kek_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        return _check_env_name(value, "TRUSTMESH_KEK")

    @field_validator("transit_mount")
    @classmethod
    def _mount(cls, value: str) -> str:
        return _check_mount(value, "transit")

    @field_validator("key_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _KEY_PREFIX.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a key name prefix; write 0-64 characters of A-Z, a-z, 0-9, '.', '-' or '_', "
                "e.g. 'trustmesh-prod-'"
            )
        return value

    @model_validator(mode="after")
    def _one_source(self) -> KeyManagerConfig:
        if self.kek_file is not None and self.kek_env:
            raise ValueError("kek_file and kek_env are both set; keep only the one that holds the key-encryption key")
        if self.kind == "vault-transit" and (self.kek_file is not None or self.kek_env):
            raise ValueError(
                "kind 'vault-transit' keeps keys in Vault and uses no key-encryption key; remove kek_file and kek_env"
            )
        if self.kind != "disk" and self.directory is not None:
            raise ValueError(f"directory is where the disk key manager keeps keys; remove it for kind {self.kind!r}")
        return self


class CaSection(_Section):
    """The X.509 authorities: their key type, lifetime, subject, upstream and key custody."""

    key_type: KeyTypeField = KeyType.EC_P256
    ttl: Duration = timedelta(days=7)
    subject: SubjectConfig = SubjectConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    key_manager: KeyManagerConfig = KeyManagerConfig()


class X509SvidConfig(_Section):
    """Lifetimes of workload X509-SVIDs: the default, and the most a registration entry may ask for."""

    default_ttl: Duration = timedelta(hours=1)
    max_ttl: Duration = timedelta(hours=24)


class JwtSvidConfig(_Section):
    """The JWT signing authorities' key type and JWT-SVID lifetimes."""

    key_type: KeyTypeField = KeyType.EC_P256
    default_ttl: Duration = timedelta(minutes=5)
    max_ttl: Duration = timedelta(hours=1)


class AgentSvidConfig(_Section):
    """Lifetime of the X509-SVIDs agents get at attestation and renewal."""

    ttl: Duration = timedelta(hours=1)


class BundleConfig(_Section):
    """The ``spiffe_refresh_hint`` published in the bundle."""

    refresh_hint: Duration = timedelta(minutes=5)


class RevocationConfig(_Section):
    """CRLs of the trust domain's authorities (docs/runbooks/revocation.md)."""

    # Each CRL is valid this long and re-signed at half of it (and at once on every revocation). Relying
    # parties that check CRLs (Envoy) refuse every peer once a CRL has expired, so this bounds how long
    # agents keep working through a CA outage; it is not a revocation delay (revocations are pushed).
    crl_ttl: Duration = timedelta(hours=24)


class RateLimitConfig(_Section):
    """Token buckets of the node API (SPIRE's ``ratelimit``); a rate of 0 turns that limit off."""

    signing: float = 100.0  # SVIDs (X509-SVIDs, agent renewals, JWT-SVIDs) per second per agent
    signing_burst: int = 2000  # lets one agent re-issue 1,000 SVIDs at once after a taint
    attestation: float = 1.0  # Attest calls per second per source IP address
    attestation_burst: int = 20  # agents behind one address (NAT, a test host) starting together
    bundle_refresh: float = 1.0  # RefreshFederatedBundle calls per second per agent (unknown JWT keys)
    bundle_refresh_burst: int = 5

    @field_validator("signing", "attestation", "bundle_refresh")
    @classmethod
    def _rate(cls, value: float) -> float:
        return _check_rate(value)

    @field_validator("signing_burst", "attestation_burst", "bundle_refresh_burst")
    @classmethod
    def _burst(cls, value: int) -> int:
        return _check_burst(value)


class NodeApiConfig(_Section):
    """Limits of the agents' node API."""

    max_batch_size: int = 1000  # X509-SVIDs per SignX509Svids call; agents send 100
    ratelimit: RateLimitConfig = RateLimitConfig()

    @field_validator("max_batch_size")
    @classmethod
    def _batch(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"{value!r} is not a batch size; write at least 1 (agents send batches of 100)")
        return value

    @model_validator(mode="after")
    def _batch_within_burst(self) -> NodeApiConfig:
        burst = self.ratelimit.signing_burst
        if self.ratelimit.signing > 0 and self.max_batch_size > burst:
            raise ValueError(
                f"max_batch_size ({self.max_batch_size}) is larger than ratelimit.signing_burst ({burst}), so a "
                "full batch could never pass the signing rate; lower max_batch_size or raise signing_burst"
            )
        return self


class FederationConfig(_Section):
    """The bundle endpoint this CA serves to federated trust domains, and the limits on fetching theirs
    (docs/federation.md). Relationships themselves live in the datastore (``trustmesh-ca federation``)."""

    bundle_endpoint_address: str = ""  # "" serves no bundle endpoint
    bundle_endpoint_profile: Literal["https_spiffe", "https_web"] = "https_spiffe"
    bundle_endpoint_cert_file: OptionalPath = None  # https_web only: the serving chain (PEM)
    bundle_endpoint_key_file: OptionalPath = None  # https_web only: its key (PEM)
    web_ca_file: OptionalPath = None  # roots for https_web partners; None = the system's
    min_refresh: Duration = timedelta(seconds=30)
    max_refresh: Duration = timedelta(hours=1)
    fetch_timeout: Duration = timedelta(seconds=10)
    max_bundle_bytes: int = 256 * 1024
    max_bundle_keys: int = 256
    unknown_key_refresh_interval: Duration = timedelta(seconds=10)

    @field_validator("bundle_endpoint_address")
    @classmethod
    def _endpoint_address(cls, value: str) -> str:
        return _check_address(value, may_be_empty=True)

    @field_validator("max_bundle_bytes", "max_bundle_keys")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"{value!r} is not a limit; write at least 1")
        return value

    @model_validator(mode="after")
    def _profile_needs(self) -> FederationConfig:
        has_files = self.bundle_endpoint_cert_file is not None and self.bundle_endpoint_key_file is not None
        if self.bundle_endpoint_profile == "https_web" and self.bundle_endpoint_address and not has_files:
            raise ValueError(
                "bundle_endpoint_profile https_web needs bundle_endpoint_cert_file and bundle_endpoint_key_file "
                "(a Web PKI certificate for the endpoint's name); set both or use https_spiffe"
            )
        if self.min_refresh > self.max_refresh:
            raise ValueError(
                f"min_refresh ({format_duration(self.min_refresh)}) is longer than max_refresh "
                f"({format_duration(self.max_refresh)}); lower min_refresh or raise max_refresh"
            )
        return self


class VaultConfig(_Section):
    """How the CA reaches HashiCorp Vault, shared by the ``vault-pki`` upstream and the ``vault-transit``
    key manager (docs/vault.md). The token itself is never in this file: it comes from a file, an
    environment variable, or an AppRole login."""

    address: str = ""  # e.g. https://vault.example.org:8200; "" = Vault is not used
    ca_file: OptionalPath = None  # CA certificate(s) that signed Vault's TLS certificate; default: system CAs
    namespace: str = ""  # Vault Enterprise namespace; "" = none
    auth: Literal["token", "approle"] = "token"
    token_file: OptionalPath = None  # auth "token": a file holding the token (0600 or 0400), e.g. a Vault Agent sink
    token_env: str = ""  # auth "token": or the environment variable holding it
    approle_mount: str = "approle"  # auth "approle": where the AppRole auth method is mounted
    role_id_file: OptionalPath = None  # auth "approle"
    secret_id_file: OptionalPath = None  # auth "approle" (0600 or 0400)
    timeout: Duration = timedelta(seconds=10)  # per request to Vault

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _check_vault_address(value)

    @field_validator("token_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        return _check_env_name(value, "VAULT_TOKEN")

    @field_validator("approle_mount")
    @classmethod
    def _mount(cls, value: str) -> str:
        return _check_mount(value, "approle")

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than 0; write e.g. '10s'")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> VaultConfig:
        token_sources = [name for name in ("token_file", "token_env") if getattr(self, name)]
        approle = [name for name in ("role_id_file", "secret_id_file") if getattr(self, name) is not None]
        if self.auth == "token":
            if approle:
                raise ValueError(f"auth 'token' uses no {', '.join(approle)}; remove them or set auth = 'approle'")
            if len(token_sources) > 1:
                raise ValueError("token_file and token_env are both set; keep only the one that holds the token")
            if self.address and not token_sources:
                raise ValueError(
                    "auth 'token' needs token_file or token_env; point one at the Vault token (never write the "
                    "token itself into this file), or set auth = 'approle'"
                )
        else:
            if token_sources:
                raise ValueError(
                    f"auth 'approle' uses no {', '.join(token_sources)}; remove them or set auth = 'token'"
                )
            if self.address and len(approle) < 2:
                raise ValueError("auth 'approle' needs role_id_file and secret_id_file; set both")
        return self


MAX_CLOCK_SKEW = timedelta(minutes=10)
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class OidcConfig(_Section):
    """The identity provider whose bearer JWTs the HTTPS admin API accepts (docs/admin-api.md)."""

    issuer: str = ""  # "" = no bearer tokens
    audience: str = ""
    jwks_file: OptionalPath = None
    jwks_url: str = ""
    roles_claim: str = "roles"  # a dotted path reaches a nested claim, e.g. realm_access.roles
    clock_skew: Duration = timedelta(seconds=60)
    role_map: dict[str, RoleField] = {}  # IdP group or role name -> our role

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, value: str) -> str:
        url = urllib.parse.urlsplit(value)
        if value and not (url.scheme == "https" or (url.scheme == "http" and url.hostname in _LOOPBACK_HOSTS)):
            raise ValueError(
                f"{value!r} is not an https:// URL; the IdP's keys decide who administers the CA, fetch them "
                "over HTTPS (plain http only from a loopback address)"
            )
        return value

    @field_validator("roles_claim")
    @classmethod
    def _roles_claim(cls, value: str) -> str:
        if not value or any(not part for part in value.split(".")):
            raise ValueError(f"{value!r} is not a claim name; write e.g. 'roles' or 'realm_access.roles'")
        return value

    @field_validator("clock_skew")
    @classmethod
    def _clock_skew(cls, value: timedelta) -> timedelta:
        if not timedelta(0) <= value <= MAX_CLOCK_SKEW:
            raise ValueError(
                f"{format_duration(value)} is not a clock skew between 0s and {format_duration(MAX_CLOCK_SKEW)}; "
                "write e.g. '60s' (a larger skew keeps expired tokens working that long)"
            )
        return value

    @model_validator(mode="after")
    def _complete(self) -> OidcConfig:
        others = [
            name
            for name in ("audience", "jwks_file", "jwks_url", "role_map")
            if getattr(self, name) not in ("", None, {})
        ]
        if not self.issuer:
            if others:
                raise ValueError(
                    f"issuer is empty but {', '.join(others)} set; set issuer to the IdP's issuer URL (the 'iss' "
                    "of its tokens) or remove [admin_api.oidc]"
                )
            return self
        if not self.audience:
            raise ValueError("audience is empty; set it to the 'aud' the IdP puts in tokens for the CA")
        if (self.jwks_file is None) == (not self.jwks_url):
            raise ValueError(
                "set exactly one of jwks_file and jwks_url: where the IdP's signing keys (a JWK Set) come from"
            )
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.issuer)


class AdminIdentityConfig(_Section):
    """One mTLS admin: an X509-SVID's SPIFFE ID and the roles it holds."""

    spiffe_id: str
    roles: list[RoleField]

    @field_validator("spiffe_id")
    @classmethod
    def _spiffe_id(cls, value: str) -> str:
        try:
            SpiffeId.parse(value)
        except InvalidArgument as err:
            raise ValueError(f"{err}; write e.g. 'spiffe://example.org/admins/alice'") from None
        return value

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: list[Role]) -> list[Role]:
        if not value:
            raise ValueError(f"an admin needs at least one role; use {', '.join(role.value for role in Role)}")
        return value


class AdminApiConfig(_Section):
    """The admin API over HTTPS (docs/admin-api.md); the local Unix socket is always served."""

    address: str = ""  # host:port; "" = no HTTPS listener
    tls_cert_file: OptionalPath = None  # "" both: serve the CA's own serving SVID
    tls_key_file: OptionalPath = None
    oidc: OidcConfig = OidcConfig()
    admins: tuple[AdminIdentityConfig, ...] = ()
    admin_entry_role: RoleField = Role.OPERATOR  # what an entry with admin = true confers over mTLS

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _check_fixed_port(_check_address(value, may_be_empty=True), "the CLI")

    @model_validator(mode="after")
    def _consistent(self) -> AdminApiConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set both tls_cert_file and tls_key_file, or neither (to serve the CA's own serving SVID)")
        if self.address and not self.oidc.enabled and not self.admins:
            raise ValueError(
                f"address {self.address!r} is set but nobody could authenticate there; configure "
                "[admin_api.oidc] (bearer tokens from the IdP) or [[admin_api.admins]] (mTLS admin SVIDs), or set "
                "address = '' (the local admin socket always works)"
            )
        return self


def _within(value: timedelta, low: timedelta, high: timedelta, advice: str) -> timedelta:
    """``value`` if it lies in ``low..high``; else the ValueError a validator raises, with ``advice``."""
    if not low <= value <= high:
        raise ValueError(
            f"{format_duration(value)} is outside {format_duration(low)}..{format_duration(high)}; {advice}"
        )
    return value


class AuditConfig(_Section):
    """The audit log's signed checkpoints (docs/audit.md)."""

    # How often the chain's head is signed with the active X.509 authority's key (when it moved), and
    # the summaries of throttled refusals are written. Records newer than the newest checkpoint can be
    # cut off the log unnoticed, so shorter is safer; each checkpoint is one small row.
    checkpoint_interval: Duration = timedelta(minutes=1)
    # Refused attempts recorded one by one per caller (actor) per minute; the rest are counted into one
    # summary record per caller each checkpoint interval, so nobody can flood the log by being refused.
    refusals_per_minute: int = Field(default=20, ge=1, le=10_000)

    @field_validator("checkpoint_interval")
    @classmethod
    def _interval(cls, value: timedelta) -> timedelta:
        return _within(
            value,
            MIN_CHECKPOINT_INTERVAL,
            MAX_CHECKPOINT_INTERVAL,
            "write e.g. '1m' (records newer than the newest checkpoint can be cut off unnoticed, so keep it short)",
        )


# How often the CA looks at its [bridge] legacy_roots files for a change (bounds).
MIN_LEGACY_ROOTS_CHECK_INTERVAL = timedelta(seconds=1)
MAX_LEGACY_ROOTS_CHECK_INTERVAL = timedelta(hours=1)


class BridgeConfig(_Section):
    """x509pop node attestation from enterprise certificates (docs/configuration.md ``[bridge]``, the
    agent's side in docs/agent.md; :mod:`bridge.x509pop`) and the agentless exchange
    (:mod:`bridge.exchange`). No trust anchor: neither is enabled.

    ``legacy_roots`` are a separate list on purpose (docs/bridge.md "Legacy trust"): trust anchors decide
    which hosts may become agents, legacy roots which servers mesh proxies accept."""

    # Name -> PEM file of the enterprise root(s); mapping rules match the name (match.trust_anchor).
    trust_anchors: dict[str, Path] = {}
    crls: list[Path] = []  # enterprise CRL files (PEM or DER), re-read on every attestation
    max_chain_length: int = Field(default=DEFAULT_MAX_CHAIN_LENGTH, ge=1, le=8)  # certificates presented
    max_rsa_bits: int = Field(default=DEFAULT_MAX_RSA_BITS, ge=MIN_RSA_BITS, le=8192)
    # The agentless exchange's HTTPS listener (docs/bridge.md "Agentless exchange"); "" = not served.
    exchange_address: str = ""
    exchange_rate: float = 1.0  # exchanges per second per source address; 0 = no limit
    exchange_burst: int = 10  # hosts behind one address (NAT, a config-management run) exchanging together
    # Name -> PEM file of enterprise root(s) served to every agent's Envoys as SDS "legacy/<name>".
    legacy_roots: dict[str, Path] = {}
    legacy_roots_check_interval: Duration = timedelta(seconds=5)  # a changed file reaches the agents this soon

    @field_validator("exchange_address")
    @classmethod
    def _exchange_address(cls, value: str) -> str:
        return _check_fixed_port(_check_address(value, may_be_empty=True), "hosts")

    @field_validator("exchange_rate")
    @classmethod
    def _exchange_rate(cls, value: float) -> float:
        return _check_rate(value)

    @field_validator("exchange_burst")
    @classmethod
    def _exchange_burst(cls, value: int) -> int:
        return _check_burst(value)

    @model_validator(mode="after")
    def _exchange_needs_anchors(self) -> BridgeConfig:
        if self.exchange_address and not self.trust_anchors:
            raise ValueError(
                f"exchange_address {self.exchange_address!r} is set but no trust_anchors are, so no enterprise "
                'certificate could be exchanged; add trust_anchors (e.g. { corp = "pki/corp-root.pem" }) or set '
                "exchange_address = ''"
            )
        return self

    @field_validator("legacy_roots")
    @classmethod
    def _legacy_root_names(cls, value: dict[str, Path]) -> dict[str, Path]:
        if len(value) > MAX_LEGACY_ROOT_SETS:
            raise ValueError(f"{len(value)} names; at most {MAX_LEGACY_ROOT_SETS} sets of legacy roots are served")
        for name in value:
            try:
                check_legacy_roots_name(name)
            except InvalidArgument as err:
                raise ValueError(str(err)) from None
        return value

    @field_validator("legacy_roots_check_interval")
    @classmethod
    def _check_interval(cls, value: timedelta) -> timedelta:
        return _within(value, MIN_LEGACY_ROOTS_CHECK_INTERVAL, MAX_LEGACY_ROOTS_CHECK_INTERVAL, "write e.g. '5s'")

    @field_validator("trust_anchors")
    @classmethod
    def _anchor_names(cls, value: dict[str, Path]) -> dict[str, Path]:
        for name in value:
            if not NAME_PATTERN.fullmatch(name):
                raise ValueError(
                    f"trust anchor name {name!r} must be 1-64 of a-z, 0-9, '.', '_', '-' (starting with a letter "
                    "or digit); mapping rules match it by name"
                )
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.trust_anchors)


class CaConfig(_Section):
    """The whole configuration. After :func:`load_config`, every path is absolute and
    ``datastore.url`` and ``ca.key_manager.kek_file`` hold their effective values."""

    trust_domain: TrustDomainField = TrustDomain("example.org")
    server: ServerConfig = ServerConfig()
    datastore: DatastoreConfig = DatastoreConfig()
    ca: CaSection = CaSection()
    x509_svid: X509SvidConfig = X509SvidConfig()
    jwt_svid: JwtSvidConfig = JwtSvidConfig()
    agent_svid: AgentSvidConfig = AgentSvidConfig()
    bundle: BundleConfig = BundleConfig()
    revocation: RevocationConfig = RevocationConfig()
    node_api: NodeApiConfig = NodeApiConfig()
    federation: FederationConfig = FederationConfig()
    vault: VaultConfig = VaultConfig()
    admin_api: AdminApiConfig = AdminApiConfig()
    audit: AuditConfig = AuditConfig()
    bridge: BridgeConfig = BridgeConfig()


def admin_api_problems(config: CaConfig) -> list[str]:
    """Each ``[[admin_api.admins]]`` that names no SPIFFE ID of this trust domain, or one named twice."""
    problems: list[str] = []
    seen: set[str] = set()
    for index, admin in enumerate(config.admin_api.admins):
        spiffe_id = SpiffeId.parse(admin.spiffe_id)
        key = f"admin_api.admins[{index}].spiffe_id"
        if not spiffe_id.is_member_of(config.trust_domain):
            problems.append(
                f"{key}: {spiffe_id} is not in trust domain {config.trust_domain}; admins hold X509-SVIDs this CA "
                "issued"
            )
        if admin.spiffe_id in seen:
            problems.append(f"{key}: {spiffe_id} is listed twice; give each admin one table with all its roles")
        seen.add(admin.spiffe_id)
    return problems


def ttl_problems(config: CaConfig) -> list[str]:
    """Each way the TTLs break rotation or each other, as ``<key> …; <fix>`` lines (empty if none)."""
    d = format_duration
    durations = {
        "ca.ttl": config.ca.ttl,
        "x509_svid.default_ttl": config.x509_svid.default_ttl,
        "x509_svid.max_ttl": config.x509_svid.max_ttl,
        "jwt_svid.default_ttl": config.jwt_svid.default_ttl,
        "jwt_svid.max_ttl": config.jwt_svid.max_ttl,
        "agent_svid.ttl": config.agent_svid.ttl,
        "bundle.refresh_hint": config.bundle.refresh_hint,
        "revocation.crl_ttl": config.revocation.crl_ttl,
        "federation.min_refresh": config.federation.min_refresh,
        "federation.fetch_timeout": config.federation.fetch_timeout,
        "federation.unknown_key_refresh_interval": config.federation.unknown_key_refresh_interval,
    }
    not_positive = [
        f"{key}: must be longer than 0; write e.g. '1h'" for key, v in durations.items() if v <= timedelta(0)
    ]
    if not_positive:
        return not_positive  # the comparisons below mean nothing with a zero in them
    problems: list[str] = []
    ca_ttl = config.ca.ttl
    headroom = ca_ttl / 6
    for section, svid in (("x509_svid", config.x509_svid), ("jwt_svid", config.jwt_svid)):
        if svid.default_ttl > svid.max_ttl:
            problems.append(
                f"{section}.default_ttl ({d(svid.default_ttl)}) is longer than {section}.max_ttl "
                f"({d(svid.max_ttl)}); lower {section}.default_ttl or raise {section}.max_ttl"
            )
        if svid.max_ttl > headroom:
            problems.append(
                f"ca.ttl ({d(ca_ttl)}) cannot cover {section}.max_ttl ({d(svid.max_ttl)}) with rotation headroom: "
                f"a CA is activated at 5/6 of its life, so max_ttl must be at most ca.ttl/6 ({d(headroom)}); "
                f"raise ca.ttl to at least {d(svid.max_ttl * 6)} or lower {section}.max_ttl to at most {d(headroom)}"
            )
    agent_ttl = config.agent_svid.ttl
    if agent_ttl > config.x509_svid.max_ttl:
        # Agent SVIDs are X509-SVIDs and go through the same TTL policy; refuse now, not at attestation.
        # (Their rotation headroom then follows from x509_svid.max_ttl's.)
        problems.append(
            f"agent_svid.ttl ({d(agent_ttl)}) is longer than x509_svid.max_ttl ({d(config.x509_svid.max_ttl)}); "
            "lower agent_svid.ttl or raise x509_svid.max_ttl"
        )
    if config.bundle.refresh_hint >= config.x509_svid.default_ttl:
        problems.append(
            f"bundle.refresh_hint ({d(config.bundle.refresh_hint)}) is not shorter than x509_svid.default_ttl "
            f"({d(config.x509_svid.default_ttl)}), so relying parties could learn a new authority after SVIDs "
            "signed by it reach them; lower bundle.refresh_hint or raise x509_svid.default_ttl"
        )
    if config.bundle.refresh_hint > ca_ttl / 6:
        problems.append(
            f"bundle.refresh_hint ({d(config.bundle.refresh_hint)}) is longer than ca.ttl/6 ({d(ca_ttl / 6)}): "
            "the next authority is published at 1/2 of the active one's life and must be in the bundle for two "
            "refresh hints before it activates at 5/6; lower bundle.refresh_hint or raise ca.ttl"
        )
    return problems


def vault_problems(config: CaConfig) -> list[str]:
    """Each ``vault-*`` kind chosen without saying where Vault is, as ``<key> …; <fix>`` lines."""
    if config.vault.address:
        return []
    kinds = {"ca.upstream.kind": config.ca.upstream.kind, "ca.key_manager.kind": config.ca.key_manager.kind}
    return [
        f"{key}: {kind!r} needs Vault, but vault.address is not set; set vault.address (e.g. "
        "'https://vault.example.org:8200') and vault.auth with its credentials (docs/vault.md)"
        for key, kind in kinds.items()
        if kind.startswith("vault-")
    ]


def check_ttl_arithmetic(config: CaConfig) -> None:
    """Refuse TTLs that rotation cannot honour (DESIGN §3); ConfigError lists which numbers to change."""
    problems = ttl_problems(config)
    if problems:
        raise ConfigError(_report("invalid configuration", problems))


def load_config(path: Path | None, environ: Mapping[str, str], *, ttl_checks: bool = True) -> CaConfig:
    """Read the TOML file (only defaults when ``path`` is None), apply ``TRUSTMESH_`` overrides from
    ``environ``, validate everything, check the TTL arithmetic, and resolve relative paths against the
    file's directory (the working directory without a file). Raises one ConfigError listing every problem.

    ``ttl_checks=False`` leaves the TTL arithmetic to the caller (``trustmesh-ca analyze`` reports each
    problem as a finding, next to what it finds in the datastore)."""
    document: dict[str, Any] = {}
    base_dir = Path.cwd()
    header = "invalid configuration"
    if path is not None:
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise ConfigError(f"cannot read config file {path}: {err.strerror}; check the path") from err
        except UnicodeDecodeError as err:
            raise ConfigError(f"config file {path} is not UTF-8 text; save it as UTF-8") from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {path} is not valid TOML: {err}; fix the syntax there") from err
        base_dir = path.resolve().parent
        header = f"invalid configuration in {path}"
    overrides, origins, unknown = _env_overrides(environ)
    document = _merge(document, overrides)
    # The variables holding the KEK and the Vault token may be TRUSTMESH_-named.
    secret_envs = {_lookup(document, ("ca", "key_manager", "kek_env")), _lookup(document, ("vault", "token_env"))}
    unknown = [name for name in unknown if name not in secret_envs]
    if unknown:
        raise ConfigError(
            f"unknown environment variables {', '.join(unknown)}; overrides are TRUSTMESH_<SECTION>__<KEY> for a "
            f"key of the config file, e.g. TRUSTMESH_CA__TTL=14d ({_DOCS}); unset them or fix their names"
        )
    try:
        config = CaConfig.model_validate(document)
    except ValidationError as err:
        raise ConfigError(_report(header, [_describe(problem, origins) for problem in err.errors()])) from None
    problems = (ttl_problems(config) if ttl_checks else []) + vault_problems(config) + admin_api_problems(config)
    if problems:
        raise ConfigError(_report(header, problems))
    return _resolve_paths(config, base_dir)


def _report(header: str, problems: list[str]) -> str:
    return f"{header}:\n  " + "\n  ".join(problems)


def _settings_tree(model: type[BaseModel]) -> dict[str, Any]:
    """Section name → its own tree, key name → None: what the file and the environment may set."""
    tree: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        tree[name] = _settings_tree(annotation) if is_section else None  # type: ignore[arg-type]
    return tree


_SETTINGS = _settings_tree(CaConfig)


def _env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """``TRUSTMESH_CA__TTL=14d`` → ``{"ca": {"ttl": "14d"}}``. Also returns which variable set each
    dotted key (for error messages) and the TRUSTMESH_ variables that name no key."""
    overrides: dict[str, Any] = {}
    origins: dict[str, str] = {}
    unknown: list[str] = []
    for name in sorted(environ):
        if (
            not name.startswith(ENV_PREFIX)
            or name in (CONFIG_PATH_ENV, *CLIENT_ENV.values())
            or name.startswith(_AGENT_ENV_PREFIX)
        ):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        sections, key = parts[:-1], parts[-1]
        tree: Any = _SETTINGS
        for section in sections:
            tree = tree.get(section) if isinstance(tree, dict) else None
        if not isinstance(tree, dict) or key not in tree or tree[key] is not None:
            unknown.append(name)
            continue
        target = overrides
        for section in sections:
            target = target.setdefault(section, {})
        target[key] = environ[name]
        origins[".".join(parts)] = name
    return overrides, origins, unknown


def _lookup(document: Mapping[str, Any], keys: tuple[str, ...]) -> object:
    node: object = document
    for key in keys:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        merged[key] = _merge(current, value) if isinstance(value, Mapping) and isinstance(current, dict) else value
    return merged


def _describe(problem: ErrorDetails, origins: Mapping[str, str]) -> str:
    """One ``<dotted.key>: <problem>; <fix>`` line for a pydantic error, naming the environment
    variable when the value came from one."""
    tree: Any = _SETTINGS
    keys: list[str] = []
    for part in problem["loc"]:  # pydantic appends validator names after the field path; drop them
        if not isinstance(tree, dict) or part not in tree:
            break
        keys.append(str(part))
        tree = tree[part]
    where = ".".join(keys) or "(top level)"
    if where in origins:
        where = f"{where} (from {origins[where]})"
    value = problem.get("input")
    kind = problem["type"]
    if kind == "extra_forbidden":
        section = ".".join(keys) or "the top level"
        allowed = ", ".join(tree) if isinstance(tree, dict) else ""
        unknown = ".".join(str(p) for p in problem["loc"])
        return f"{unknown}: is not a known key; the keys of {section} are: {allowed}"
    if kind == "literal_error":
        expected = problem.get("ctx", {}).get("expected", "")
        return f"{where}: {value!r} is not allowed; use {expected}"
    if kind in ("model_type", "dict_type"):
        return f"{where}: must be a table ([{'.'.join(keys)}]), not {value!r}; write it as a section"
    if kind in ("bool_type", "bool_parsing"):
        return f"{where}: {value!r} is not a boolean; write true or false"
    if kind in ("string_type", "path_type"):
        return f"{where}: {value!r} is not a string; quote it"
    if kind == "value_error":
        return f"{where}: {problem['msg'].removeprefix('Value error, ')}"
    return f"{where}: {problem['msg']}; {_DOCS}"


def _resolve_paths(config: CaConfig, base_dir: Path) -> CaConfig:
    """Relative paths count from the config file's directory (``admin_socket`` from ``data_dir``);
    fill in the defaults that depend on ``data_dir``."""
    server = config.server
    data_dir = base_dir / server.data_dir
    admin_socket = data_dir / server.admin_socket
    if len(str(admin_socket).encode()) > MAX_SOCKET_PATH_BYTES:
        raise ConfigError(
            f"server.admin_socket: {admin_socket} is {len(str(admin_socket).encode())} bytes, over the "
            f"{MAX_SOCKET_PATH_BYTES} a Unix socket path may have; set server.admin_socket to a shorter absolute "
            "path or move server.data_dir"
        )
    url = config.datastore.url or f"sqlite:///{data_dir / 'datastore.sqlite3'}"
    key_manager = config.ca.key_manager
    kek_file = key_manager.kek_file
    if kek_file is None and not key_manager.kek_env and key_manager.kind != "vault-transit":
        kek_file = data_dir / "kek"
    upstream = config.ca.upstream
    files = _resolved(upstream, ("cert_file", "key_file", "bundle_file"), base_dir)
    vault_files = _resolved(config.vault, ("ca_file", "token_file", "role_id_file", "secret_id_file"), base_dir)
    admin_api = config.admin_api
    admin_files = _resolved(admin_api, ("tls_cert_file", "tls_key_file"), base_dir)
    oidc = admin_api.oidc
    oidc_files = _resolved(oidc, ("jwks_file",), base_dir)
    federation = config.federation
    federation_files = _resolved(
        federation, ("bundle_endpoint_cert_file", "bundle_endpoint_key_file", "web_ca_file"), base_dir
    )
    bridge = config.bridge
    anchors = {name: base_dir / file for name, file in bridge.trust_anchors.items()}
    return config.model_copy(
        update={
            "federation": federation.model_copy(update=federation_files),
            "admin_api": admin_api.model_copy(update={**admin_files, "oidc": oidc.model_copy(update=oidc_files)}),
            "server": server.model_copy(update={"data_dir": data_dir, "admin_socket": admin_socket}),
            "datastore": config.datastore.model_copy(update={"url": url}),
            "ca": config.ca.model_copy(
                update={
                    "key_manager": key_manager.model_copy(
                        update={
                            "kek_file": None if kek_file is None else base_dir / kek_file,
                            "directory": None if key_manager.directory is None else base_dir / key_manager.directory,
                        }
                    ),
                    "upstream": upstream.model_copy(update=files),
                }
            ),
            "vault": config.vault.model_copy(update=vault_files),
            "bridge": bridge.model_copy(
                update={
                    "trust_anchors": anchors,
                    "crls": [base_dir / file for file in bridge.crls],
                    "legacy_roots": {name: base_dir / file for name, file in bridge.legacy_roots.items()},
                }
            ),
        }
    )


def _resolved(section: BaseModel, names: tuple[str, ...], base_dir: Path) -> dict[str, Path]:
    """The path keys ``names`` of ``section`` that are set, made absolute from ``base_dir``."""
    return {name: base_dir / value for name in names if (value := getattr(section, name)) is not None}


def default_config_toml() -> str:
    """A commented config with every default, for ``trustmesh-ca config init``."""
    return DEFAULT_CONFIG_TOML


DEFAULT_CONFIG_TOML = """\
# trustmesh CA configuration. Every key is optional; the values shown are the defaults.
# Relative paths count from this file's directory. Environment variables override any key:
# TRUSTMESH_<SECTION>__<KEY>, e.g. TRUSTMESH_CA__TTL=14d or TRUSTMESH_CA__KEY_MANAGER__KIND=memory.
# Durations: "90s", "5m", "12h", "7d" or a number of seconds. Reference: docs/configuration.md.
trust_domain = "example.org"

[server]
data_dir = ".trustmesh/ca"              # keys, datastore and admin socket live here (created 0700)
admin_socket = "admin.sock"             # local admin API for the CLI (0600); relative to data_dir
http_address = "127.0.0.1:8080"         # /live, /ready and /metrics; "" disables
node_api_address = "127.0.0.1:8081"     # agents' node API (mTLS)
attestation_address = "127.0.0.1:8082"  # agents' first contact (server-authenticated TLS)
server_name = "trustmesh-ca"            # DNS SAN of the CA's serving certificate; agents dial this name
log_level = "info"                      # debug, info, warning or error
log_format = "text"                     # or "json": one JSON object per line (docs/observability.md)

[datastore]
url = ""                                # "" = sqlite:///<data_dir>/datastore.sqlite3; or postgresql+psycopg://...
issued_certificate_retention = "24h"    # records of issued X509-SVIDs are deleted this long after they expire

[ca]
key_type = "ec-p256"                    # ec-p256, ec-p384, rsa-2048, rsa-3072 or rsa-4096
ttl = "7d"                              # lifetime of each CA certificate; must be >= 6 x every SVID max_ttl

[ca.subject]
organization = "trustmesh"
common_name = ""                        # "" = "trustmesh CA <trust domain>"

[ca.upstream]
kind = "self-signed"                    # or "disk": signed by the upstream CA in cert_file/key_file;
                                        # or "vault-pki": signed by Vault's PKI engine ([vault] below)
# cert_file = "upstream/ca.pem"
# key_file = "upstream/ca.key"
# bundle_file = "upstream/bundle.pem"   # the upstream's own chain, if any
pki_mount = "pki"                       # vault-pki: where Vault's PKI secrets engine is mounted

[ca.key_manager]
kind = "disk"                           # encrypted PKCS#8 files in <data_dir>/keys; or "memory" (lost on
                                        # restart); or "vault-transit": non-exportable keys in Vault ([vault])
# kek_file = "<data_dir>/kek"           # the key-encryption key (0600), the default unless kek_env is set
# kek_env = "TRUSTMESH_KEK"             # or: take the key-encryption key from this environment variable
# directory = "<data_dir>/keys"         # disk: the key files; replicas sharing one database share it too
create_kek_if_missing = true            # create kek_file with 32 random bytes on first run
transit_mount = "transit"               # vault-transit: keys live (and sign) in Vault's transit engine
key_prefix = "trustmesh-"               # vault-transit: transit key names are this + the CA's key ID

[x509_svid]
default_ttl = "1h"
max_ttl = "24h"

[jwt_svid]
key_type = "ec-p256"
default_ttl = "5m"
max_ttl = "1h"

[agent_svid]
ttl = "1h"                              # at most x509_svid.max_ttl

[bundle]
refresh_hint = "5m"                     # shorter than x509_svid.default_ttl and at most ca.ttl/6

[revocation]
crl_ttl = "24h"                         # each CRL's validity; re-signed at half of it and on every revocation

[node_api]
max_batch_size = 1000                   # X509-SVIDs per SignX509Svids call (agents send 100); at most signing_burst

[node_api.ratelimit]
signing = 100                           # SVIDs (X509- and JWT-) per second per agent; 0 = no limit
signing_burst = 2000                    # at once: a taint re-issues all of an agent's SVIDs in one round
attestation = 1                         # Attest calls per second per source IP address; 0 = no limit
attestation_burst = 20                  # at once, e.g. agents behind one NAT starting together
bundle_refresh = 1                      # RefreshFederatedBundle calls per second per agent; 0 = no limit
bundle_refresh_burst = 5                # at once: workloads meeting a partner's new JWT key together

[federation]
bundle_endpoint_address = ""            # host:port of the SPIFFE bundle endpoint for partners; "" = none
bundle_endpoint_profile = "https_spiffe"  # served with the CA's own SVID; or "https_web" with the files below
# bundle_endpoint_cert_file = "endpoint.pem"   # https_web: a Web PKI certificate chain for the endpoint's name
# bundle_endpoint_key_file = "endpoint.key"    # https_web: its key
# web_ca_file = "web-roots.pem"         # roots that https_web partners' endpoints chain to; default: the system's
min_refresh = "30s"                     # partners' bundles are fetched on their refresh hint, bounded by these
max_refresh = "1h"
fetch_timeout = "10s"                   # a whole fetch: connect, TLS, request and response
max_bundle_bytes = 262144               # larger partner responses are refused
max_bundle_keys = 256                   # partner bundles with more keys are refused
unknown_key_refresh_interval = "10s"    # at most one unknown-key refresh per partner this often

[vault]                                 # for kind "vault-pki" / "vault-transit" (docs/vault.md)
address = ""                            # e.g. "https://vault.example.org:8200"; "" = Vault is not used
# ca_file = "vault-ca.pem"              # CA of Vault's TLS certificate; default: the system's CAs
namespace = ""                          # Vault Enterprise namespace
auth = "token"                          # or "approle"
# token_file = "/run/vault/token"       # auth "token": file holding the token (0600), e.g. a Vault Agent sink
# token_env = "VAULT_TOKEN"             # auth "token": or the environment variable holding it
approle_mount = "approle"               # auth "approle": where the AppRole auth method is mounted
# role_id_file = "vault/role-id"        # auth "approle"
# secret_id_file = "vault/secret-id"    # auth "approle" (0600)
timeout = "10s"                         # per request to Vault

[admin_api]                             # the admin API over HTTPS; see docs/admin-api.md
address = ""                            # host:port, e.g. "0.0.0.0:8443"; "" = only the local admin socket
# tls_cert_file = "admin-tls.pem"       # default: serve the CA's own serving SVID
# tls_key_file = "admin-tls.key"
admin_entry_role = "operator"           # what an entry with admin = true confers over mTLS
admins = []                             # mTLS admins: replace this line by [[admin_api.admins]] tables (below)

# [admin_api.oidc]                      # bearer JWTs from the organisation's IdP
# issuer = "https://idp.example.org/realms/ops"
# audience = "trustmesh-ca"
# jwks_url = "https://idp.example.org/realms/ops/protocol/openid-connect/certs"   # or jwks_file = "..."
# roles_claim = "roles"                 # a dotted path reaches a nested claim: "realm_access.roles"
# clock_skew = "60s"
# role_map = { "pki-officers" = "security-officer", "platform" = "operator", "audit" = "auditor" }

# [[admin_api.admins]]                  # mTLS admins: X509-SVIDs of this trust domain
# spiffe_id = "spiffe://example.org/admins/alice"
# roles = ["security-officer"]
[audit]
checkpoint_interval = "1m"              # sign the audit chain's head this often (1s..1d); see docs/audit.md
refusals_per_minute = 20                # refusals recorded one by one per caller; the rest as one summary

[bridge]                                # the legacy identity bridge (docs/bridge.md)
trust_anchors = {}                      # name -> enterprise root PEM, e.g. { corp = "pki/corp-root.pem" }; none: off
crls = []                               # enterprise CRL files (PEM or DER), re-read on every attestation
max_chain_length = 4                    # certificates an agent may present, leaf included (1..8)
max_rsa_bits = 4096                     # larger RSA keys are refused: bounded work per attempt
exchange_address = ""                   # agentless exchange listener, e.g. "0.0.0.0:8444"; "": off (docs/bridge.md)
exchange_rate = 1.0                     # exchanges per second per source address; 0: no limit
exchange_burst = 10                     # hosts behind one address exchanging at once
legacy_roots = {}                       # name -> root PEM Envoys verify legacy servers with (SDS legacy/<name>)
legacy_roots_check_interval = "5s"      # how often the CA looks for a changed legacy_roots file
"""
