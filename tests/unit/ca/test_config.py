"""The CA configuration (DESIGN §3, §6): defaults, TOML file, ``TRUSTMESH_`` environment overrides,
path resolution, one error naming every problem with its fix, and the TTL arithmetic of rotation."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from ca.config import CaConfig, check_ttl_arithmetic, default_config_toml, load_config
from spiffe_core.errors import ConfigError
from spiffe_core.keys import KeyType
from spiffe_core.spiffe_id import TrustDomain


def write_config(directory: Path, text: str) -> Path:
    path = directory / "ca.toml"
    path.write_text(text)
    return path


def load_error(path: Path | None, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ or {})
    return str(caught.value)


def test_defaults_are_those_of_the_design(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    config = load_config(None, {})

    assert config.trust_domain == TrustDomain("example.org")
    assert config.server.data_dir == tmp_path / ".trustmesh/ca"
    assert config.server.admin_socket == tmp_path / ".trustmesh/ca/admin.sock"
    assert (config.server.http_address, config.server.node_api_address) == ("127.0.0.1:8080", "127.0.0.1:8081")
    assert config.server.log_level == "info"
    assert config.datastore.url == f"sqlite:///{tmp_path / '.trustmesh/ca/datastore.sqlite3'}"
    assert (config.ca.key_type, config.ca.ttl) == (KeyType.EC_P256, timedelta(days=7))
    assert config.ca.upstream.kind == "self-signed"
    assert config.ca.key_manager.kind == "disk"
    assert config.ca.key_manager.kek_file == tmp_path / ".trustmesh/ca/kek"
    assert config.ca.key_manager.create_kek_if_missing is True
    assert (config.x509_svid.default_ttl, config.x509_svid.max_ttl) == (timedelta(hours=1), timedelta(hours=24))
    assert config.jwt_svid.key_type == KeyType.EC_P256
    assert (config.jwt_svid.default_ttl, config.jwt_svid.max_ttl) == (timedelta(minutes=5), timedelta(hours=1))
    assert config.agent_svid.ttl == timedelta(hours=1)
    assert config.bundle.refresh_hint == timedelta(minutes=5)
    assert config.datastore.issued_certificate_retention == timedelta(hours=24)
    assert config.node_api.max_batch_size == 1000
    ratelimit = config.node_api.ratelimit
    assert (ratelimit.signing, ratelimit.signing_burst, ratelimit.attestation, ratelimit.attestation_burst) == (
        100,
        2000,
        1,
        20,
    )
    assert config.audit.checkpoint_interval == timedelta(minutes=1)


def test_the_sample_config_is_valid_toml_holding_exactly_the_defaults(tmp_path: Path) -> None:
    path = write_config(tmp_path, default_config_toml())

    assert load_config(path, {}) == load_config(write_config(tmp_path, ""), {})


def every_key(model: type[BaseModel], prefix: str = "") -> list[str]:
    found = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += every_key(annotation, f"{prefix}{name}.")
        else:
            found.append(f"{prefix}{name}")
    return found


def test_the_sample_config_mentions_every_key() -> None:
    sample = default_config_toml()

    assert [key for key in every_key(CaConfig) if f"{key.rsplit('.', 1)[-1]} = " not in sample] == []


def test_file_values_replace_defaults(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
trust_domain = "prod.example"
[server]
log_level = "debug"
http_address = ""
[ca]
key_type = "rsa-3072"
ttl = "30d"
subject = { organization = "Example Corp", common_name = "Example CA" }
[x509_svid]
default_ttl = 1800
max_ttl = "2h"
[jwt_svid]
key_type = "ec-p384"
""",
    )

    config = load_config(path, {})

    assert config.trust_domain == TrustDomain("prod.example")
    assert (config.server.log_level, config.server.http_address) == ("debug", "")
    assert (config.ca.key_type, config.ca.ttl) == (KeyType.RSA_3072, timedelta(days=30))
    assert (config.ca.subject.organization, config.ca.subject.common_name) == ("Example Corp", "Example CA")
    assert (config.x509_svid.default_ttl, config.x509_svid.max_ttl) == (timedelta(minutes=30), timedelta(hours=2))
    assert config.jwt_svid.key_type == KeyType.EC_P384


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        pytest.param("90s", timedelta(seconds=90), id="seconds"),
        pytest.param("5m", timedelta(minutes=5), id="minutes"),
        pytest.param("12h", timedelta(hours=12), id="hours"),
        pytest.param("7d", timedelta(days=7), id="days"),
        pytest.param("3600", timedelta(hours=1), id="digits-in-a-string"),
        pytest.param(600, timedelta(minutes=10), id="integer"),
    ],
)
def test_durations_are_written_with_a_unit_or_in_seconds(written: object, expected: timedelta) -> None:
    assert CaConfig.model_validate({"bundle": {"refresh_hint": written}}).bundle.refresh_hint == expected


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[ca]\nttl = "7d"\n[server]\nlog_level = "debug"\n')

    config = load_config(path, {"TRUSTMESH_CA__TTL": "14d", "TRUSTMESH_TRUST_DOMAIN": "prod.example"})

    assert config.ca.ttl == timedelta(days=14)
    assert config.trust_domain == TrustDomain("prod.example")
    assert config.server.log_level == "debug"


def test_environment_overrides_reach_nested_sections(tmp_path: Path) -> None:
    config = load_config(
        write_config(tmp_path, ""),
        {"TRUSTMESH_CA__KEY_MANAGER__KIND": "memory", "TRUSTMESH_CA__SUBJECT__ORGANIZATION": "Example Corp"},
    )

    assert config.ca.key_manager.kind == "memory"
    assert config.ca.subject.organization == "Example Corp"


def test_environment_booleans_are_parsed(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, ""), {"TRUSTMESH_CA__KEY_MANAGER__CREATE_KEK_IF_MISSING": "false"})

    assert config.ca.key_manager.create_kek_if_missing is False


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("TRUSTMESH_CONFIG", id="config-path"),
        pytest.param("TRUSTMESH_AGENT_SERVER_ADDRESS", id="agent-variable"),
        pytest.param("HOME", id="unrelated"),
        pytest.param("trustmesh_ca__ttl", id="lowercase-prefix"),
    ],
)
def test_environment_variables_that_are_not_overrides_are_ignored(tmp_path: Path, name: str) -> None:
    assert load_config(write_config(tmp_path, ""), {name: "whatever"}) == load_config(write_config(tmp_path, ""), {})


def test_the_variable_named_by_kek_env_is_not_an_unknown_override(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[ca.key_manager]\nkek_env = "TRUSTMESH_KEK"\n')

    config = load_config(path, {"TRUSTMESH_KEK": "0" * 64})

    assert (config.ca.key_manager.kek_env, config.ca.key_manager.kek_file) == ("TRUSTMESH_KEK", None)


def test_the_variable_named_by_vault_token_env_is_not_an_unknown_override(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[vault]\naddress = "https://vault:8200"\ntoken_env = "TRUSTMESH_VAULT_TOKEN"\n')

    config = load_config(path, {"TRUSTMESH_VAULT_TOKEN": "hvs.secret"})

    assert config.vault.token_env == "TRUSTMESH_VAULT_TOKEN"


def test_legacy_roots_files_count_from_the_config_files_directory(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, '[bridge]\nlegacy_roots = { corp = "pki/corp-roots.pem" }\nlegacy_roots_check_interval = "30s"\n'
    )

    config = load_config(path, {})

    assert config.bridge.legacy_roots == {"corp": tmp_path / "pki/corp-roots.pem"}
    assert config.bridge.legacy_roots_check_interval == timedelta(seconds=30)


def test_vault_custody_is_configured_with_relative_credential_files(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
[ca.upstream]
kind = "vault-pki"
pki_mount = "pki_int"
[ca.key_manager]
kind = "vault-transit"
transit_mount = "ca/transit"
key_prefix = "prod-"
[vault]
address = "https://vault.example.org:8200/"
ca_file = "vault-ca.pem"
namespace = "team-a"
auth = "approle"
role_id_file = "vault/role-id"
secret_id_file = "vault/secret-id"
timeout = "5s"
""",
    )

    config = load_config(path, {})

    assert (config.ca.upstream.kind, config.ca.upstream.pki_mount) == ("vault-pki", "pki_int")
    key_manager = config.ca.key_manager
    assert (key_manager.kind, key_manager.transit_mount, key_manager.key_prefix) == (
        "vault-transit",
        "ca/transit",
        "prod-",
    )
    vault = config.vault
    assert (vault.address, vault.namespace, vault.auth, vault.timeout) == (
        "https://vault.example.org:8200",
        "team-a",
        "approle",
        timedelta(seconds=5),
    )
    assert (vault.ca_file, vault.role_id_file, vault.secret_id_file) == (
        tmp_path / "vault-ca.pem",
        tmp_path / "vault/role-id",
        tmp_path / "vault/secret-id",
    )


def test_relative_paths_count_from_the_config_files_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etc").mkdir()
    monkeypatch.chdir(tmp_path)
    path = write_config(
        tmp_path / "etc",
        """
[server]
data_dir = "state"
[ca.upstream]
kind = "disk"
cert_file = "upstream/ca.pem"
key_file = "upstream/ca.key"
[ca.key_manager]
kek_file = "secrets/kek"
directory = "shared/keys"
""",
    )

    config = load_config(Path("etc/ca.toml"), {})

    etc = tmp_path / "etc"
    assert config.server.data_dir == etc / "state"
    assert config.server.admin_socket == etc / "state/admin.sock"
    assert config.datastore.url == f"sqlite:///{etc / 'state/datastore.sqlite3'}"
    assert config.ca.key_manager.kek_file == etc / "secrets/kek"
    assert config.ca.key_manager.directory == etc / "shared/keys"
    assert (config.ca.upstream.cert_file, config.ca.upstream.key_file) == (
        etc / "upstream/ca.pem",
        etc / "upstream/ca.key",
    )
    assert config.ca.upstream.bundle_file is None
    assert path.exists()


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        '[server]\ndata_dir = "/var/lib/trustmesh"\nadmin_socket = "/run/trustmesh/admin.sock"\n'
        '[datastore]\nurl = "postgresql+psycopg://ca@db/trustmesh"\n',
    )

    config = load_config(path, {})

    assert config.server.data_dir == Path("/var/lib/trustmesh")
    assert config.server.admin_socket == Path("/run/trustmesh/admin.sock")
    assert config.ca.key_manager.kek_file == Path("/var/lib/trustmesh/kek")
    assert config.datastore.url == "postgresql+psycopg://ca@db/trustmesh"


def test_config_is_frozen() -> None:
    config = CaConfig()

    with pytest.raises(ValidationError, match="frozen"):
        config.bundle = config.bundle  # type: ignore[misc]


# Each row: a config file's text, extra environment, and the one problem line it must produce.
INVALID = [
    pytest.param(
        'trust_domian = "example.org"\n',
        {},
        "trust_domian: is not a known key; the keys of the top level are: trust_domain, server, datastore, ca, "
        "x509_svid, jwt_svid, agent_svid, bundle, revocation, node_api, federation, vault, admin_api, audit, bridge",
        id="unknown-top-level-key",
    ),
    pytest.param(
        "[ca]\nttl_days = 7\n",
        {},
        "ca.ttl_days: is not a known key; the keys of ca are: key_type, ttl, subject, upstream, key_manager",
        id="unknown-key-in-a-section",
    ),
    pytest.param(
        "[certificate_authority]\n",
        {},
        "certificate_authority: is not a known key; the keys of the top level are: trust_domain, server, "
        "datastore, ca, x509_svid, jwt_svid, agent_svid, bundle, revocation, node_api, federation, vault, "
        "admin_api, audit, bridge",
        id="unknown-section",
    ),
    pytest.param(
        '[bridge]\ntrust_anchors = { "Corp Root" = "corp.pem" }\n',
        {},
        "bridge.trust_anchors: trust anchor name 'Corp Root' must be 1-64 of a-z, 0-9, '.', '_', '-' (starting with "
        "a letter or digit); mapping rules match it by name",
        id="bad-trust-anchor-name",
    ),
    pytest.param(
        '[bridge]\nlegacy_roots = { "Corp" = "corp.pem" }\n',
        {},
        "bridge.legacy_roots: legacy roots name 'Corp' must be 1-64 of a-z, 0-9, '.', '_', '-' (starting with a "
        "letter or digit); Envoy asks for it as the SDS secret legacy/<name>",
        id="bad-legacy-roots-name",
    ),
    pytest.param(
        "[bridge]\nlegacy_roots = { " + ", ".join(f'r{i} = "r{i}.pem"' for i in range(17)) + " }\n",
        {},
        "bridge.legacy_roots: 17 names; at most 16 sets of legacy roots are served",
        id="too-many-legacy-roots",
    ),
    pytest.param(
        '[bridge]\nlegacy_roots_check_interval = "0s"\n',
        {},
        "bridge.legacy_roots_check_interval: 0s is outside 1s..1h; write e.g. '5s'",
        id="legacy-roots-check-interval-out-of-bounds",
    ),
    pytest.param(
        "[bridge]\nmax_rsa_bits = 16384\n",
        {},
        "bridge.max_rsa_bits: Input should be less than or equal to 8192; see docs/configuration.md",
        id="rsa-bits-over-the-bound",
    ),
    pytest.param(
        '[bridge]\nexchange_address = "127.0.0.1:8444"\n',
        {},
        "bridge: exchange_address '127.0.0.1:8444' is set but no trust_anchors are, so no enterprise certificate "
        "could be exchanged; add trust_anchors (e.g. { corp = \"pki/corp-root.pem\" }) or set exchange_address = ''",
        id="exchange-without-trust-anchors",
    ),
    pytest.param(
        '[bridge]\nexchange_address = "0.0.0.0:0"\n',
        {},
        "bridge.exchange_address: '0.0.0.0:0' has port 0; hosts must know where to dial, give a fixed port",
        id="exchange-on-port-0",
    ),
    pytest.param(
        "[bridge]\nexchange_rate = -1\n",
        {},
        "bridge.exchange_rate: -1.0 is not a rate; write calls per second, e.g. 100, or 0 for no limit",
        id="negative-exchange-rate",
    ),
    pytest.param(
        '[ca]\nttl = "7x"\n',
        {},
        "ca.ttl: '7x' is not a duration; write e.g. '7d', '12h', '30m', '90s' or seconds",
        id="bad-duration",
    ),
    pytest.param(
        '[ca]\nttl = "1.5d"\n',
        {},
        "ca.ttl: '1.5d' is not a duration; write e.g. '7d', '12h', '30m', '90s' or seconds",
        id="fractional-duration",
    ),
    pytest.param(
        "[ca]\nttl = -60\n",
        {},
        "ca.ttl: -60 is a negative duration; write e.g. '30s' or 30",
        id="negative-duration",
    ),
    pytest.param(
        '[ca]\nttl = "99999999999d"\n',
        {},
        "ca.ttl: '99999999999d' is too long a duration; write at most e.g. '3650d'",
        id="overflowing-duration",
    ),
    pytest.param(
        '[audit]\ncheckpoint_interval = "0s"\n',
        {},
        "audit.checkpoint_interval: 0s is outside 1s..1d; write e.g. '1m' (records newer than the newest "
        "checkpoint can be cut off unnoticed, so keep it short)",
        id="checkpoint-interval-zero",
    ),
    pytest.param(
        '[audit]\ncheckpoint_interval = "2d"\n',
        {},
        "audit.checkpoint_interval: 2d is outside 1s..1d; write e.g. '1m' (records newer than the newest "
        "checkpoint can be cut off unnoticed, so keep it short)",
        id="checkpoint-interval-too-long",
    ),
    pytest.param(
        '[ca]\nkey_type = "ec-p521"\n',
        {},
        "ca.key_type: key type 'ec-p521' is not supported; use one of: ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096",
        id="bad-key-type",
    ),
    pytest.param(
        'trust_domain = "Example.org"\n',
        {},
        "trust_domain: trust domain 'Example.org' has uppercase letters; trust domains are lowercase — "
        "use 'example.org'",
        id="bad-trust-domain",
    ),
    pytest.param(
        'trust_domain = "example.org:8443"\n',
        {},
        "trust_domain: trust domain 'example.org:8443' has a port; SPIFFE IDs never carry one",
        id="trust-domain-with-port",
    ),
    pytest.param(
        '[server]\nlog_level = "verbose"\n',
        {},
        "server.log_level: 'verbose' is not allowed; use 'debug', 'info', 'warning' or 'error'",
        id="bad-log-level",
    ),
    pytest.param(
        '[ca.key_manager]\nkind = "vault"\n',
        {},
        "ca.key_manager.kind: 'vault' is not allowed; use 'disk', 'memory' or 'vault-transit'",
        id="bad-key-manager-kind",
    ),
    pytest.param(
        "[server]\nnode_api_address = 8081\n",
        {},
        "server.node_api_address: 8081 is not a string; quote it",
        id="number-for-a-string",
    ),
    pytest.param(
        '[server]\nnode_api_address = "localhost"\n',
        {},
        "server.node_api_address: 'localhost' is not host:port; write e.g. '127.0.0.1:8081' (port 0-65535)",
        id="address-without-port",
    ),
    pytest.param(
        '[server]\nhttp_address = "127.0.0.1:80800"\n',
        {},
        "server.http_address: '127.0.0.1:80800' is not host:port; write e.g. '127.0.0.1:8081' (port 0-65535) "
        "or '' to disable",
        id="port-out-of-range",
    ),
    pytest.param(
        '[server]\nserver_name = "ca_server"\n',
        {},
        "server.server_name: DNS name 'ca_server' is not a valid hostname (letters, digits, '-' and '.'; '*.' "
        "prefix allowed); write e.g. 'ca.example.org'",
        id="bad-server-name",
    ),
    pytest.param(
        '[server]\nserver_name = "*.example.org"\n',
        {},
        "server.server_name: '*.example.org' is a wildcard; the CA's serving name is one host name, e.g. "
        "'ca.example.org'",
        id="wildcard-server-name",
    ),
    pytest.param(
        '[datastore]\nurl = "mysql://ca:secret@db/trustmesh"\n',
        {},
        "datastore.url: the URL scheme is not supported; write 'sqlite:///<path>', 'postgresql://…' or "
        "'postgresql+psycopg://…', or leave it empty for SQLite in the data directory",
        id="unsupported-database",
    ),
    pytest.param(
        '[ca]\nsubject = { organization = "" }\n',
        {},
        "ca.subject.organization: '' must be 1-64 characters; write e.g. 'Example Corp'",
        id="empty-organization",
    ),
    pytest.param(
        '[ca.upstream]\nkind = "disk"\ncert_file = "ca.pem"\n',
        {},
        "ca.upstream: kind 'disk' needs cert_file and key_file; set them to the upstream CA's certificate and key",
        id="disk-upstream-without-key",
    ),
    pytest.param(
        '[ca.upstream]\ncert_file = "ca.pem"\n',
        {},
        "ca.upstream: kind 'self-signed' uses no cert_file; remove them or set kind = 'disk' to sign with the "
        "upstream CA they name",
        id="self-signed-upstream-with-files",
    ),
    pytest.param(
        '[ca.key_manager]\nkek_file = "kek"\nkek_env = "CA_KEK"\n',
        {},
        "ca.key_manager: kek_file and kek_env are both set; keep only the one that holds the key-encryption key",
        id="two-kek-sources",
    ),
    pytest.param(
        '[ca.key_manager]\nkek_env = "$CA_KEK"\n',
        {},
        "ca.key_manager.kek_env: '$CA_KEK' is not an environment variable name; write e.g. 'TRUSTMESH_KEK'",
        id="kek-env-not-a-name",
    ),
    pytest.param(
        'ca = "self-signed"\n',
        {},
        "ca: must be a table ([ca]), not 'self-signed'; write it as a section",
        id="value-for-a-section",
    ),
    pytest.param(
        "",
        {"TRUSTMESH_CA__TTL": "7x"},
        "ca.ttl (from TRUSTMESH_CA__TTL): '7x' is not a duration; write e.g. '7d', '12h', '30m', '90s' or seconds",
        id="bad-duration-from-environment",
    ),
    pytest.param(
        "",
        {"TRUSTMESH_CA__KEY_MANAGER__CREATE_KEK_IF_MISSING": "maybe"},
        "ca.key_manager.create_kek_if_missing (from TRUSTMESH_CA__KEY_MANAGER__CREATE_KEK_IF_MISSING): 'maybe' "
        "is not a boolean; write true or false",
        id="bad-boolean-from-environment",
    ),
    pytest.param(
        "[node_api]\nmax_batch_size = 5000\n",
        {},
        "node_api: max_batch_size (5000) is larger than ratelimit.signing_burst (2000), so a full batch could "
        "never pass the signing rate; lower max_batch_size or raise signing_burst",
        id="batch-larger-than-the-signing-burst",
    ),
    pytest.param(
        '[ca.upstream]\nkind = "vault-pki"\n',
        {},
        "ca.upstream.kind: 'vault-pki' needs Vault, but vault.address is not set; set vault.address (e.g. "
        "'https://vault.example.org:8200') and vault.auth with its credentials (docs/vault.md)",
        id="vault-pki-without-vault",
    ),
    pytest.param(
        '[ca.key_manager]\nkind = "vault-transit"\n',
        {},
        "ca.key_manager.kind: 'vault-transit' needs Vault, but vault.address is not set; set vault.address (e.g. "
        "'https://vault.example.org:8200') and vault.auth with its credentials (docs/vault.md)",
        id="vault-transit-without-vault",
    ),
    pytest.param(
        '[ca.key_manager]\nkind = "vault-transit"\nkek_env = "CA_KEK"\n[vault]\naddress = "https://vault:8200"\n'
        'token_env = "VAULT_TOKEN"\n',
        {},
        "ca.key_manager: kind 'vault-transit' keeps keys in Vault and uses no key-encryption key; remove kek_file "
        "and kek_env",
        id="vault-transit-with-a-kek",
    ),
    pytest.param(
        '[ca.key_manager]\nkind = "memory"\ndirectory = "/srv/keys"\n',
        {},
        "ca.key_manager: directory is where the disk key manager keeps keys; remove it for kind 'memory'",
        id="key-directory-without-disk-keys",
    ),
    pytest.param(
        '[ca.key_manager]\nkey_prefix = "trustmesh/"\n',
        {},
        "ca.key_manager.key_prefix: 'trustmesh/' is not a key name prefix; write 0-64 characters of A-Z, a-z, 0-9, "
        "'.', '-' or '_', e.g. 'trustmesh-prod-'",
        id="bad-transit-key-prefix",
    ),
    pytest.param(
        '[ca.upstream]\npki_mount = "/pki/"\n',
        {},
        "ca.upstream.pki_mount: '/pki/' is not a Vault mount path; write segments of A-Z, a-z, 0-9, '.', '-' or "
        "'_' joined by '/', without a leading or trailing '/', e.g. 'pki'",
        id="bad-pki-mount",
    ),
    pytest.param(
        '[vault]\naddress = "http://vault.example.org:8200"\ntoken_env = "VAULT_TOKEN"\n',
        {},
        "vault.address: 'http://vault.example.org:8200' would send the Vault token unencrypted; use https:// (and "
        "vault.ca_file for a private CA) — plain http is accepted only for a Vault on this host (127.0.0.1, ::1 or "
        "localhost)",
        id="vault-over-plain-http",
    ),
    pytest.param(
        '[vault]\naddress = "https://vault.example.org:8200/v1"\ntoken_env = "VAULT_TOKEN"\n',
        {},
        "vault.address: 'https://vault.example.org:8200/v1' is not a Vault address; write e.g. "
        "'https://vault.example.org:8200'",
        id="vault-address-with-a-path",
    ),
    pytest.param(
        '[vault]\naddress = "https://vault.example.org:8200"\n',
        {},
        "vault: auth 'token' needs token_file or token_env; point one at the Vault token (never write the token "
        "itself into this file), or set auth = 'approle'",
        id="vault-token-auth-without-a-token-source",
    ),
    pytest.param(
        '[vault]\naddress = "https://vault.example.org:8200"\nauth = "approle"\nrole_id_file = "role-id"\n',
        {},
        "vault: auth 'approle' needs role_id_file and secret_id_file; set both",
        id="vault-approle-without-secret-id",
    ),
    pytest.param(
        '[vault]\ntoken = "hvs.secret"\n',
        {},
        "vault.token: is not a known key; the keys of vault are: address, ca_file, namespace, auth, token_file, "
        "token_env, approle_mount, role_id_file, secret_id_file, timeout",
        id="vault-token-written-into-the-file",
    ),
    pytest.param(
        "[vault]\ntimeout = 0\n",
        {},
        "vault.timeout: must be longer than 0; write e.g. '10s'",
        id="vault-timeout-zero",
    ),
    pytest.param(
        "[node_api]\nmax_batch_size = 0\n",
        {},
        "node_api.max_batch_size: 0 is not a batch size; write at least 1 (agents send batches of 100)",
        id="empty-batch-size",
    ),
    pytest.param(
        "",
        {"TRUSTMESH_NODE_API__RATELIMIT__SIGNING": "-1"},
        "node_api.ratelimit.signing (from TRUSTMESH_NODE_API__RATELIMIT__SIGNING): -1.0 is not a rate; write "
        "calls per second, e.g. 100, or 0 for no limit",
        id="negative-rate-from-environment",
    ),
    pytest.param(
        "[node_api.ratelimit]\nattestation_burst = 0\n",
        {},
        "node_api.ratelimit.attestation_burst: 0 is not a burst; write at least 1",
        id="empty-burst",
    ),
]


@pytest.mark.parametrize(("text", "environ", "problem"), INVALID)
def test_invalid_value_is_reported_with_its_key_and_fix(
    tmp_path: Path, text: str, environ: dict[str, str], problem: str
) -> None:
    path = write_config(tmp_path, text)

    assert load_error(path, environ) == f"invalid configuration in {path}:\n  {problem}"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'trust_domain = "Example.org"\n[ca]\nttl = "7x"\nkey_type = "dsa"\n')

    assert load_error(path) == (
        f"invalid configuration in {path}:\n"
        "  trust_domain: trust domain 'Example.org' has uppercase letters; trust domains are lowercase — use "
        "'example.org'\n"
        "  ca.key_type: key type 'dsa' is not supported; use one of: ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096\n"
        "  ca.ttl: '7x' is not a duration; write e.g. '7d', '12h', '30m', '90s' or seconds"
    )


def test_without_a_file_errors_name_no_file() -> None:
    assert load_error(None, {"TRUSTMESH_SERVER__LOG_LEVEL": "loud"}) == (
        "invalid configuration:\n"
        "  server.log_level (from TRUSTMESH_SERVER__LOG_LEVEL): 'loud' is not allowed; use 'debug', 'info', "
        "'warning' or 'error'"
    )


def test_the_datastore_password_is_never_shown(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[datastore]\nurl = "mysql://ca:s3cret-pw@db/trustmesh"\n')

    assert "s3cret-pw" not in load_error(path)


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        pytest.param({"TRUSTMESH_CA__TLL": "14d"}, "TRUSTMESH_CA__TLL", id="misspelled-key"),
        pytest.param({"TRUSTMESH_CA_TTL": "14d"}, "TRUSTMESH_CA_TTL", id="single-underscore"),
        pytest.param({"TRUSTMESH_CA": "x"}, "TRUSTMESH_CA", id="a-section"),
        pytest.param({"TRUSTMESH_CA__TTL__DAYS": "7"}, "TRUSTMESH_CA__TTL__DAYS", id="below-a-key"),
        pytest.param({"TRUSTMESH_KEK": "x"}, "TRUSTMESH_KEK", id="kek-variable-not-configured"),
        pytest.param(
            {"TRUSTMESH_FOO": "1", "TRUSTMESH_BAR__BAZ": "2"}, "TRUSTMESH_BAR__BAZ, TRUSTMESH_FOO", id="several-sorted"
        ),
    ],
)
def test_unknown_trustmesh_environment_variables_are_refused(
    tmp_path: Path, environ: dict[str, str], named: str
) -> None:
    assert load_error(write_config(tmp_path, ""), environ) == (
        f"unknown environment variables {named}; overrides are TRUSTMESH_<SECTION>__<KEY> for a key of the config "
        "file, e.g. TRUSTMESH_CA__TTL=14d (see docs/configuration.md); unset them or fix their names"
    )


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    assert load_error(tmp_path / "nope.toml") == (
        f"cannot read config file {tmp_path / 'nope.toml'}: No such file or directory; check the path"
    )


def test_a_toml_syntax_error_is_named_with_its_place(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[ca]\nttl = 7d\n")

    assert load_error(path) == (
        f"config file {path} is not valid TOML: Expected newline or end of document after a statement "
        "(at line 2, column 8); fix the syntax there"
    )


def test_an_admin_socket_path_too_long_for_a_unix_socket_is_refused(tmp_path: Path) -> None:
    data_dir = "/tmp/" + "d" * 100

    path = write_config(tmp_path, f'[server]\ndata_dir = "{data_dir}"\n')

    assert load_error(path) == (
        f"server.admin_socket: {data_dir}/admin.sock is 116 bytes, over the 107 a Unix socket path may have; set "
        "server.admin_socket to a shorter absolute path or move server.data_dir"
    )


def ttl_config(**sections: dict[str, object]) -> CaConfig:
    return CaConfig.model_validate(sections)


# Each row: the sections that change, and the one problem the TTL arithmetic must report.
BAD_TTLS = [
    pytest.param(
        {"ca": {"ttl": "7d"}, "x509_svid": {"max_ttl": "2d"}},
        "ca.ttl (7d) cannot cover x509_svid.max_ttl (2d) with rotation headroom: a CA is activated at 5/6 of its "
        "life, so max_ttl must be at most ca.ttl/6 (28h); raise ca.ttl to at least 12d or lower x509_svid.max_ttl "
        "to at most 28h",
        id="x509-max-ttl-beyond-headroom",
    ),
    pytest.param(
        {
            "ca": {"ttl": "3h"},
            "x509_svid": {"default_ttl": "20m", "max_ttl": "30m"},
            "agent_svid": {"ttl": "30m"},
            "jwt_svid": {"max_ttl": "1h"},
        },
        "ca.ttl (3h) cannot cover jwt_svid.max_ttl (1h) with rotation headroom: a CA is activated at 5/6 of its "
        "life, so max_ttl must be at most ca.ttl/6 (30m); raise ca.ttl to at least 6h or lower jwt_svid.max_ttl "
        "to at most 30m",
        id="jwt-max-ttl-beyond-headroom",
    ),
    pytest.param(
        {"x509_svid": {"default_ttl": "2h", "max_ttl": "90m"}, "agent_svid": {"ttl": "1h"}},
        "x509_svid.default_ttl (2h) is longer than x509_svid.max_ttl (90m); lower x509_svid.default_ttl or raise "
        "x509_svid.max_ttl",
        id="x509-default-over-max",
    ),
    pytest.param(
        {"jwt_svid": {"default_ttl": "10m", "max_ttl": "5m"}},
        "jwt_svid.default_ttl (10m) is longer than jwt_svid.max_ttl (5m); lower jwt_svid.default_ttl or raise "
        "jwt_svid.max_ttl",
        id="jwt-default-over-max",
    ),
    pytest.param(
        {"agent_svid": {"ttl": "2d"}},
        "agent_svid.ttl (2d) is longer than x509_svid.max_ttl (1d); lower agent_svid.ttl or raise x509_svid.max_ttl",
        id="agent-ttl-over-x509-max",
    ),
    pytest.param(
        {"bundle": {"refresh_hint": "1h"}},
        "bundle.refresh_hint (1h) is not shorter than x509_svid.default_ttl (1h), so relying parties could learn "
        "a new authority after SVIDs signed by it reach them; lower bundle.refresh_hint or raise "
        "x509_svid.default_ttl",
        id="refresh-hint-not-shorter-than-svid-ttl",
    ),
    pytest.param({"ca": {"ttl": 0}}, "ca.ttl: must be longer than 0; write e.g. '1h'", id="zero-ca-ttl"),
    pytest.param(
        {"x509_svid": {"default_ttl": "0s"}},
        "x509_svid.default_ttl: must be longer than 0; write e.g. '1h'",
        id="zero-svid-ttl",
    ),
    pytest.param(
        {"bundle": {"refresh_hint": "0m"}},
        "bundle.refresh_hint: must be longer than 0; write e.g. '1h'",
        id="zero-refresh-hint",
    ),
]


@pytest.mark.parametrize(("sections", "problem"), BAD_TTLS)
def test_ttl_arithmetic_names_the_numbers_to_change(sections: dict[str, dict[str, object]], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_ttl_arithmetic(ttl_config(**sections))

    assert str(caught.value) == f"invalid configuration:\n  {problem}"


def test_ttl_arithmetic_reports_both_svid_kinds_at_once() -> None:
    config = ttl_config(ca={"ttl": "6h"}, x509_svid={"max_ttl": "2h"}, jwt_svid={"max_ttl": "2h"})

    with pytest.raises(ConfigError) as caught:
        check_ttl_arithmetic(config)

    assert [line.split(" with ")[0] for line in str(caught.value).splitlines()[1:]] == [
        "  ca.ttl (6h) cannot cover x509_svid.max_ttl (2h)",
        "  ca.ttl (6h) cannot cover jwt_svid.max_ttl (2h)",
    ]


def test_ttl_arithmetic_accepts_max_ttl_of_exactly_a_sixth_of_the_ca_ttl() -> None:
    check_ttl_arithmetic(ttl_config(ca={"ttl": "6d"}, x509_svid={"max_ttl": "1d"}, jwt_svid={"max_ttl": "1d"}))


def test_ttl_arithmetic_is_checked_when_loading(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[ca]\nttl = "1d"\n')

    assert load_error(path) == (
        f"invalid configuration in {path}:\n"
        "  ca.ttl (1d) cannot cover x509_svid.max_ttl (1d) with rotation headroom: a CA is activated at 5/6 of its "
        "life, so max_ttl must be at most ca.ttl/6 (4h); raise ca.ttl to at least 6d or lower x509_svid.max_ttl to "
        "at most 4h"
    )


def test_the_configuration_reference_documents_every_key() -> None:
    reference = (Path(__file__).parents[3] / "docs" / "configuration.md").read_text()

    assert [key for key in every_key(CaConfig) if f"| `{key.rsplit('.', 1)[-1]}` |" not in reference] == []


OIDC = '[admin_api.oidc]\nissuer = "https://idp.example.org"\naudience = "trustmesh-ca"\n'

ADMIN_API_INVALID = [
    pytest.param(
        '[admin_api]\naddress = "127.0.0.1:8443"\n',
        "admin_api: address '127.0.0.1:8443' is set but nobody could authenticate there; configure "
        "[admin_api.oidc] (bearer tokens from the IdP) or [[admin_api.admins]] (mTLS admin SVIDs), or set "
        "address = '' (the local admin socket always works)",
        id="address-without-an-auth-method",
    ),
    pytest.param(
        '[admin_api]\naddress = "127.0.0.1:0"\n',
        "admin_api.address: '127.0.0.1:0' has port 0; the CLI must know where to dial, give a fixed port",
        id="address-with-port-0",
    ),
    pytest.param(
        '[admin_api]\ntls_cert_file = "tls.pem"\n',
        "admin_api: set both tls_cert_file and tls_key_file, or neither (to serve the CA's own serving SVID)",
        id="certificate-without-key",
    ),
    pytest.param(
        '[admin_api]\nadmin_entry_role = "root"\n',
        "admin_api.admin_entry_role: 'root' is not a role; use one of: security-officer, operator, auditor",
        id="unknown-admin-entry-role",
    ),
    pytest.param(
        '[admin_api.oidc]\naudience = "trustmesh-ca"\n',
        "admin_api.oidc: issuer is empty but audience set; set issuer to the IdP's issuer URL (the 'iss' of its "
        "tokens) or remove [admin_api.oidc]",
        id="oidc-without-issuer",
    ),
    pytest.param(
        '[admin_api.oidc]\nissuer = "https://idp.example.org"\n',
        "admin_api.oidc: audience is empty; set it to the 'aud' the IdP puts in tokens for the CA",
        id="oidc-without-audience",
    ),
    pytest.param(
        OIDC,
        "admin_api.oidc: set exactly one of jwks_file and jwks_url: where the IdP's signing keys (a JWK Set) come from",
        id="oidc-without-jwks",
    ),
    pytest.param(
        OIDC + 'jwks_url = "http://idp.example.org/keys"\n',
        "admin_api.oidc.jwks_url: 'http://idp.example.org/keys' is not an https:// URL; the IdP's keys decide who "
        "administers the CA, fetch them over HTTPS (plain http only from a loopback address)",
        id="jwks-url-in-clear",
    ),
    pytest.param(
        OIDC + 'jwks_url = "https://idp.example.org/keys"\nclock_skew = "1h"\n',
        "admin_api.oidc.clock_skew: 1h is not a clock skew between 0s and 10m; write e.g. '60s' (a larger skew "
        "keeps expired tokens working that long)",
        id="clock-skew-too-large",
    ),
    pytest.param(
        OIDC + 'jwks_url = "https://idp.example.org/keys"\nrole_map = { "pki" = "admin" }\n',
        "admin_api.oidc.role_map: 'admin' is not a role; use one of: security-officer, operator, auditor",
        id="role-map-to-an-unknown-role",
    ),
    pytest.param(
        '[[admin_api.admins]]\nspiffe_id = "spiffe://other.example/admins/alice"\nroles = ["operator"]\n',
        "admin_api.admins[0].spiffe_id: spiffe://other.example/admins/alice is not in trust domain example.org; "
        "admins hold X509-SVIDs this CA issued",
        id="admin-of-another-trust-domain",
    ),
    pytest.param(
        '[[admin_api.admins]]\nspiffe_id = "spiffe://example.org/admins/alice"\nroles = []\n',
        "admin_api.admins: an admin needs at least one role; use security-officer, operator, auditor",
        id="admin-without-roles",
    ),
]


@pytest.mark.parametrize(("text", "problem"), ADMIN_API_INVALID)
def test_invalid_admin_api_setting_is_reported_with_its_key_and_fix(tmp_path: Path, text: str, problem: str) -> None:
    path = write_config(tmp_path, text)

    assert load_error(path) == f"invalid configuration in {path}:\n  {problem}"


def test_admin_api_files_count_from_the_config_files_directory(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        '[admin_api]\naddress = "127.0.0.1:8443"\ntls_cert_file = "tls.pem"\ntls_key_file = "tls.key"\n'
        + OIDC
        + 'jwks_file = "jwks.json"\n',
    )

    admin_api = load_config(path, {}).admin_api

    assert (admin_api.tls_cert_file, admin_api.tls_key_file, admin_api.oidc.jwks_file) == (
        tmp_path / "tls.pem",
        tmp_path / "tls.key",
        tmp_path / "jwks.json",
    )


def test_the_remote_cli_variables_are_not_configuration_overrides(tmp_path: Path) -> None:
    environ = {"TRUSTMESH_SERVER": "https://ca.example.org:8443", "TRUSTMESH_TOKEN_FILE": "/run/token"}

    assert load_config(None, environ).admin_api.address == ""


def test_loading_without_ttl_checks_leaves_the_arithmetic_to_the_caller(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[x509_svid]\nmax_ttl = "48h"\n')
    assert "cannot cover x509_svid.max_ttl (2d)" in load_error(path)
    assert load_config(path, {}, ttl_checks=False).x509_svid.max_ttl == timedelta(hours=48)
