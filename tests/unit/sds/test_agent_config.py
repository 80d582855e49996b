"""The agent's configuration (sds/config.py): defaults, TOML, environment overrides, and errors that
name the key and the fix — never the join token."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from sds.config import (
    AgentConfig,
    CertFileTarget,
    HealthConfig,
    LimitsConfig,
    RotationConfig,
    X509PopConfig,
    load_agent_config,
)
from sds.x509pop_proof import X509PopProof
from spiffe_core.errors import ConfigError
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain

SECRET = "s3cr3t-join-token"


def load(tmp_path: Path, toml: str, env: dict[str, str] | None = None) -> AgentConfig:
    path = tmp_path / "agent.toml"
    path.write_text(toml)
    return load_agent_config(path, env or {})


def error_of(tmp_path: Path, toml: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, toml, env)
    return str(caught.value)


def test_defaults_put_sockets_in_a_public_directory_next_to_the_data_dir(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    assert config.trust_domain == TrustDomain("example.org")
    assert config.server_address == "127.0.0.1:8081"
    assert config.attestation_address == "127.0.0.1:8082"
    assert config.server_name == "trustmesh-ca"
    assert config.data_dir == tmp_path / ".trustmesh/agent"
    assert config.socket_dir == tmp_path / ".trustmesh/agent-public"
    assert config.workload_api_socket == tmp_path / ".trustmesh/agent-public/workload.sock"
    assert config.sds_socket == tmp_path / ".trustmesh/agent-public/sds.sock"
    assert (config.rotation.svid_rotation_fraction, config.rotation.jitter) == (0.5, 0.1)
    assert (config.limits.max_connections, config.limits.max_connections_per_uid) == (1024, 256)
    assert config.limits.sds_max_resource_names == 1024
    assert config.load_join_token() is None


def test_reads_cert_file_targets_with_paths_relative_to_the_config_file(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
        trust_domain = "prod.example"
        [[cert_files]]
        spiffe_id = "spiffe://prod.example/web"
        dir = "certs/web"
        selectors = ["unix:uid:1000"]
        reload_command = "systemctl reload 'nginx web'"
        reload_timeout = "10s"
        """,
    )
    (target,) = config.cert_files
    assert target.dir == tmp_path / "certs/web"
    assert target.spiffe_id == SpiffeId.parse("spiffe://prod.example/web")
    assert target.selectors == (Selector("unix", "uid:1000"),)
    assert target.reload_argv == ("systemctl", "reload", "nginx web")
    assert target.reload_timeout == timedelta(seconds=10)


def test_environment_overrides_top_level_keys_and_section_keys(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        'server_address = "10.0.0.1:8081"',
        {
            "TRUSTMESH_AGENT_SERVER_ADDRESS": "10.0.0.5:8081",
            "TRUSTMESH_AGENT_ROTATION__JITTER": "0.2",
            "TRUSTMESH_AGENT_LIMITS__MAX_CONNECTIONS_PER_UID": "32",
            "TRUSTMESH_AGENT_CONFIG": "ignored: names the file",
            "TRUSTMESH_CA__TTL": "ignored: the CA's",
        },
    )
    assert config.server_address == "10.0.0.5:8081"
    assert config.rotation.jitter == 0.2
    assert config.limits.max_connections_per_uid == 32


def test_join_token_is_masked_in_repr_and_read_from_a_file(tmp_path: Path) -> None:
    inline = load(tmp_path, "", {"TRUSTMESH_AGENT_JOIN_TOKEN": SECRET})
    assert SECRET not in repr(inline)
    assert inline.load_join_token() == SECRET
    (tmp_path / "token").write_text(SECRET + "\n")
    from_file = load(tmp_path, 'join_token_file = "token"')
    assert from_file.load_join_token() == SECRET


def test_missing_join_token_file_names_the_key_and_the_fix(tmp_path: Path) -> None:
    config = load(tmp_path, 'join_token_file = "absent"')
    with pytest.raises(ConfigError) as caught:
        config.load_join_token()
    assert str(caught.value) == (
        f"join_token_file: cannot read {tmp_path / 'absent'} (No such file or directory); "
        "write the token 'trustmesh-ca token generate' printed into it"
    )


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        pytest.param(
            "servr_address = 'x:1'",
            {},
            "servr_address: is not a known setting; check its spelling and section (see docs/agent.md)",
            id="unknown-key",
        ),
        pytest.param(
            "server_address = '10.0.0.1'",
            {},
            "server_address: '10.0.0.1' is not host:port; write e.g. '127.0.0.1:8081'",
            id="address-without-port",
        ),
        pytest.param(
            "trust_domain = 'Example.org'",
            {},
            "trust_domain: trust domain 'Example.org' has uppercase letters",
            id="uppercase-trust-domain",
        ),
        pytest.param(
            "key_type = 'ec-p521'",
            {},
            "key_type: key type 'ec-p521' is not supported; use one of:",
            id="unknown-key-type",
        ),
        pytest.param(
            "[rotation]\nsvid_rotation_fraction = 0.9\njitter = 0.2",
            {},
            "rotation: svid_rotation_fraction 0.9 with jitter 0.2 can put rotation at 1.08 of an "
            "SVID's life, after it expires; lower one of them so that fraction * (1 + jitter) < 1",
            id="rotation-after-expiry",
        ),
        pytest.param(
            "[limits]\nmax_connections = 100\nmax_connections_per_uid = 200",
            {},
            "limits: max_connections_per_uid 200 is above max_connections 100; one uid could then hold every "
            "connection — lower it",
            id="per-uid-budget-above-total",
        ),
        pytest.param(
            "[limits]\nsds_max_resource_names = 0",
            {},
            "limits.sds_max_resource_names: 0 is not between 1 and 1000000; remove it to get the default",
            id="no-resource-names",
        ),
        pytest.param(
            "[[cert_files]]\ndir = 'certs'",
            {},
            "cert_files.0: names no SVID; set spiffe_id, selectors, or both",
            id="cert-file-target-without-svid",
        ),
        pytest.param(
            "[[cert_files]]\ndir = 'certs'\nselectors = ['unix:uid:1']\nreload_command = \"kill -HUP 'x\"",
            {},
            'cert_files.0.reload_command: "kill -HUP \'x" cannot be split into arguments (No closing quotation);'
            " close the quotes",
            id="unbalanced-reload-command",
        ),
        pytest.param(
            f"join_token = '{SECRET}'\njoin_token_file = 'token'",
            {},
            "config: join_token and join_token_file are both set; keep only one of them",
            id="two-token-sources",
        ),
        pytest.param(
            "",
            {"TRUSTMESH_AGENT_SERVER_ADRESS": "x:1"},
            "unknown environment variables ['TRUSTMESH_AGENT_SERVER_ADRESS']; overrides are TRUSTMESH_AGENT_<KEY> or "
            "TRUSTMESH_AGENT_<SECTION>__<KEY>, e.g. TRUSTMESH_AGENT_SERVER_ADDRESS=10.0.0.5:8081",
            id="unknown-environment-variable",
        ),
        pytest.param(
            "",
            {"TRUSTMESH_AGENT_ROTATION": "0.5"},
            "unknown environment variables ['TRUSTMESH_AGENT_ROTATION']",
            id="section-set-as-a-value",
        ),
        pytest.param(
            "",
            {"TRUSTMESH_AGENT_CERT_FILES": "[]"},
            "TRUSTMESH_AGENT_CERT_FILES: cert_files is a list of tables; set it in the config file, not the "
            "environment",
            id="cert-files-from-environment",
        ),
    ],
)
def test_rejects_invalid_configuration_naming_the_key(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    text = error_of(tmp_path, toml, env)
    assert message in text
    assert SECRET not in text


def test_rejects_an_empty_join_token_without_echoing_it(tmp_path: Path) -> None:
    assert error_of(tmp_path, "join_token = '  '") == (
        "invalid agent configuration:\n"
        "  join_token: is empty; remove it or paste the token 'trustmesh-ca token generate' printed"
    )


def test_rejects_a_socket_path_too_long_for_a_unix_socket(tmp_path: Path) -> None:
    long_dir = "/" + "d" * 100
    assert error_of(tmp_path, f"data_dir = '{long_dir}'") == (
        f"workload_api_socket: {long_dir}-public/workload.sock is longer than 107 bytes, the limit of a Unix "
        "socket path; choose a shorter data_dir or socket_dir, or an absolute socket path"
    )


def test_socket_paths_are_relative_to_a_configured_socket_dir(tmp_path: Path) -> None:
    config = load(tmp_path, "socket_dir = 'run/agent'\nsds_socket = 'envoy.sock'\nworkload_api_socket = '/run/w.sock'")
    assert config.socket_dir == tmp_path / "run/agent"
    assert config.sds_socket == tmp_path / "run/agent/envoy.sock"
    assert config.workload_api_socket == Path("/run/w.sock")


def test_error_for_a_malformed_token_type_does_not_echo_the_value(tmp_path: Path) -> None:
    text = error_of(tmp_path, "join_token = 12345678")
    assert "12345678" not in text
    assert text.startswith("invalid agent configuration:\n  join_token: ")


def test_docs_list_every_key() -> None:
    docs = (Path(__file__).parents[3] / "docs" / "agent.md").read_text()
    keys = [name for name in AgentConfig.model_fields if name not in ("rotation", "limits", "x509pop", "health")]
    keys += [f"health.{name}" for name in HealthConfig.model_fields]
    keys += [f"x509pop.{name}" for name in X509PopConfig.model_fields]
    keys += [f"rotation.{name}" for name in RotationConfig.model_fields]
    keys += [f"limits.{name}" for name in LimitsConfig.model_fields]
    keys += [f"`{name}`" for name in CertFileTarget.model_fields]
    assert [key for key in keys if key not in docs] == []


def test_cert_file_owner_and_group_are_names_or_numbers(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "[[cert_files]]\ndir = 'certs'\nselectors = ['unix:uid:1']\nowner = 'nobody'\ngroup = '0'\nkey_mode = '0640'",
    )
    (target,) = config.cert_files
    assert (target.owner, target.group, target.key_mode, target.cert_mode) == (65534, 0, 0o640, 0o644)
    assert target.allow_foreign_dir is False


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param(
            "owner = 'no-such-user-here'",
            "cert_files.0.owner: no user named 'no-such-user-here' on this host; give a known name or a number",
            id="unknown-user",
        ),
        pytest.param(
            "key_mode = 0o644",
            "cert_files.0.key_mode: 0644 lets every user read the private key; use 0600 (or 0640 with group)",
            id="key-readable-by-all",
        ),
        pytest.param(
            "cert_mode = 'rw-'",
            "cert_files.0.cert_mode: 'rw-' is not an octal mode; write e.g. \"0640\" or 0o640",
            id="not-octal",
        ),
    ],
)
def test_rejects_unsafe_or_unknown_cert_file_ownership(tmp_path: Path, extra: str, message: str) -> None:
    text = error_of(tmp_path, f"[[cert_files]]\ndir = 'certs'\nselectors = ['unix:uid:1']\n{extra}")
    assert text == f"invalid agent configuration:\n  {message}"


def test_x509pop_attestation_reads_the_enterprise_files_relative_to_the_config(tmp_path: Path) -> None:
    config = load(tmp_path, 'attestation = "x509pop"\n[x509pop]\ncert_file = "host.pem"\nkey_file = "host.key"\n')

    assert config.x509pop_proof() == X509PopProof(tmp_path / "host.pem", tmp_path / "host.key")


def test_join_token_attestation_has_no_x509pop_proof(tmp_path: Path) -> None:
    assert load(tmp_path, 'join_token = "t"\n').x509pop_proof() is None


def test_x509pop_attestation_without_its_files_is_refused(tmp_path: Path) -> None:
    assert error_of(tmp_path, 'attestation = "x509pop"\n') == (
        'invalid agent configuration:\n  config: attestation = "x509pop" needs x509pop.cert_file and '
        "x509pop.key_file: the host's enterprise certificate and its key"
    )


def test_x509pop_attestation_with_a_join_token_is_refused(tmp_path: Path) -> None:
    text = error_of(tmp_path, 'attestation = "x509pop"\njoin_token = "t"\n[x509pop]\ncert_file = "a"\nkey_file = "b"\n')
    assert text.endswith('attestation = "x509pop" uses no join token; remove join_token / join_token_file')


# --- [health] ---------------------------------------------------------------------------------------


def test_the_health_listener_is_off_by_default(tmp_path: Path) -> None:
    health = load(tmp_path, "").health
    assert (health.address, health.tcp_host, health.unix_path) == ("", None, None)
    assert (health.ca_contact_window, health.max_svid_series) == (timedelta(minutes=5), 1000)


@pytest.mark.parametrize("address", ["127.0.0.1:8089", "127.0.0.53:8089", "[::1]:8089", "localhost:8089"])
def test_a_loopback_tcp_address_is_taken(tmp_path: Path, address: str) -> None:
    assert load(tmp_path, f'[health]\naddress = "{address}"').health.address == address


def test_a_relative_unix_socket_counts_from_the_data_dir(tmp_path: Path) -> None:
    config = load(tmp_path, 'data_dir = "agent"\n[health]\naddress = "unix:health.sock"')
    assert config.health.unix_path == tmp_path / "agent" / "health.sock"
    assert config.health.address == f"unix:{tmp_path / 'agent' / 'health.sock'}"


def test_a_non_loopback_address_is_refused_unless_explicitly_allowed(tmp_path: Path) -> None:
    assert error_of(tmp_path, '[health]\naddress = "0.0.0.0:8089"') == (
        "invalid agent configuration:\n  health: address '0.0.0.0:8089' is not a loopback address; "
        "/metrics names every SPIFFE ID this agent holds and nothing there is authenticated — use 127.0.0.1 or "
        "unix:PATH, or set allow_non_loopback = true behind a firewall you trust"
    )
    allowed = load(tmp_path, '[health]\naddress = "0.0.0.0:8089"\nallow_non_loopback = true')
    assert allowed.health.tcp_host == "0.0.0.0"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        pytest.param(
            'address = "8089"',
            "health.address: '8089' is not host:port (port 1-65535) or unix:PATH; write e.g. '127.0.0.1:8089'",
            id="no-host",
        ),
        pytest.param(
            'address = "127.0.0.1:0"',
            "health.address: '127.0.0.1:0' is not host:port (port 1-65535) or unix:PATH; write e.g. '127.0.0.1:8089'",
            id="port-0",
        ),
        pytest.param(
            'address = "unix:"',
            "health.address: 'unix:' names no path; write e.g. 'unix:health.sock'",
            id="unix-no-path",
        ),
        pytest.param(
            'ca_contact_window = "0s"', "health.ca_contact_window: must be positive; write e.g. '5m'", id="window"
        ),
        pytest.param(
            "max_svid_series = 0",
            "health.max_svid_series: 0 is not between 1 and 100000; remove it to get the default",
            id="series",
        ),
    ],
)
def test_bad_health_settings_name_the_key_and_the_fix(tmp_path: Path, value: str, problem: str) -> None:
    assert problem in error_of(tmp_path, f"[health]\n{value}")


def test_the_health_address_can_come_from_the_environment(tmp_path: Path) -> None:
    config = load(tmp_path, "", {"TRUSTMESH_AGENT_HEALTH__ADDRESS": "127.0.0.1:9100"})
    assert config.health.address == "127.0.0.1:9100"
