"""Reaching Vault (ca.vault, docs/vault.md): token and AppRole authentication, TLS, and every failure
as one line naming what to do — against the in-test Vault-API server (no Vault can be installed here),
through the transit key manager as the CA calls it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ca.config import VaultConfig
from ca.keys.vault_transit import VaultTransitKeyManager
from ca.vault import VaultClient
from spiffe_core.errors import (
    ConfigError,
    NotAuthenticated,
    NotAuthorized,
    NotFound,
    TrustmeshError,
    UpstreamUnavailable,
)
from spiffe_core.keys import KeyType
from tests.support.processes import free_port
from tests.support.vault_server import FakeVault, token_config, write_secret, write_tls_files

USER = "vault-transit key manager"


@pytest.fixture
def vault() -> Iterator[FakeVault]:
    with FakeVault().running() as server:
        yield server


def keys(config: VaultConfig, mount: str = "transit") -> VaultTransitKeyManager:
    return VaultTransitKeyManager(VaultClient(config, USER, "ca.key_manager.transit_mount"), mount, "trustmesh-")


def failure(kind: type[TrustmeshError], call: object) -> str:
    """The message of the ``kind`` error ``call()`` raises; it is always one line."""
    with pytest.raises(kind) as caught:
        call()  # type: ignore[operator]
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_sealed_vault_is_reported_in_one_line_as_unavailable(vault: FakeVault, tmp_path: Path) -> None:
    manager = keys(token_config(vault, tmp_path))
    vault.sealed = True

    message = failure(UpstreamUnavailable, lambda: manager.get("x509-1"))

    assert message == f"{USER}: Vault at {vault.address} is sealed; unseal it ('vault operator unseal')"


def test_the_same_client_works_again_once_vault_is_unsealed(vault: FakeVault, tmp_path: Path) -> None:
    manager = keys(token_config(vault, tmp_path))
    vault.sealed = True
    failure(UpstreamUnavailable, lambda: manager.generate("x509-1", KeyType.EC_P256))
    vault.sealed = False

    assert manager.generate("x509-1", KeyType.EC_P256).key_size == 256


def test_permission_denied_names_the_path_and_the_capability_to_grant(vault: FakeVault, tmp_path: Path) -> None:
    config = token_config(vault, tmp_path, "nothing")
    token = config.token_file.read_text().strip() if config.token_file else ""

    message = failure(NotAuthorized, lambda: keys(config).get("x509-1"))

    assert message == (
        f"{USER}: Vault at {vault.address} denied 'read' on transit/keys/trustmesh-x509-1: the token in "
        f"{tmp_path / 'vault-token'} lacks it or has expired; grant it in the policy: "
        'path "transit/keys/trustmesh-x509-1" { capabilities = ["read"] } (docs/vault.md)'
    )
    assert token not in message


def test_a_missing_object_is_not_found(vault: FakeVault, tmp_path: Path) -> None:
    message = failure(NotFound, lambda: keys(token_config(vault, tmp_path)).get("x509-1"))

    assert message == f"key 'x509-1' is not in Vault transit at {vault.address} (transit/keys/trustmesh-x509-1)"


def test_nothing_mounted_at_the_configured_path_is_a_config_error(vault: FakeVault, tmp_path: Path) -> None:
    manager = keys(token_config(vault, tmp_path, "root"), mount="transit-typo")

    message = failure(ConfigError, lambda: manager.get("x509-1"))

    assert message == (
        f"{USER}: Vault at {vault.address} has no transit-typo/keys/trustmesh-x509-1 (no handler for route "
        '"transit-typo/keys/trustmesh-x509-1". route entry not found.); check that the secrets engine is mounted '
        "where ca.key_manager.transit_mount says"
    )


def test_a_refused_connection_is_reported_in_one_line_as_unavailable(tmp_path: Path) -> None:
    address = f"http://127.0.0.1:{free_port()}"
    config = VaultConfig(address=address, token_file=write_secret(tmp_path / "token", "hvs.unused"))

    message = failure(UpstreamUnavailable, lambda: keys(config).get("x509-1"))

    assert message == (
        f"{USER}: cannot reach Vault at {address} (Connection refused); check vault.address and that Vault is running"
    )


def test_a_vault_that_does_not_answer_times_out_in_one_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections (backlog), never answers
        address = f"http://127.0.0.1:{silent.getsockname()[1]}"
        config = VaultConfig(address=address, token_file=write_secret(tmp_path / "token", "hvs.x"), timeout="1s")

        message = failure(UpstreamUnavailable, lambda: keys(config).get("x509-1"))

    assert (
        message == f"{USER}: Vault at {address} did not answer within 1s; check that it is up, or raise vault.timeout"
    )


def test_tls_to_vault_is_verified_with_the_configured_ca_file(tmp_path: Path) -> None:
    ca_file, cert, key = write_tls_files(tmp_path)
    with FakeVault().running(tls=(cert, key)) as vault:
        manager = keys(token_config(vault, tmp_path, ca_file=ca_file))

        assert manager.generate("x509-1", KeyType.EC_P256).key_size == 256
        assert vault.address.startswith("https://")


def test_tls_to_a_vault_whose_ca_is_not_configured_is_refused_naming_ca_file(tmp_path: Path) -> None:
    _, cert, key = write_tls_files(tmp_path)
    with FakeVault().running(tls=(cert, key)) as vault:
        message = failure(ConfigError, lambda: keys(token_config(vault, tmp_path)).get("x509-1"))

    assert message == (
        f"{USER}: TLS to Vault at {vault.address} failed (unable to get local issuer certificate); set "
        "vault.ca_file to the CA certificate that issued Vault's certificate"
    )


def approle_config(vault: FakeVault, tmp_path: Path, secret_id: str | None = None) -> VaultConfig:
    role_id, real_secret_id = vault.add_approle("trustmesh")
    return VaultConfig(
        address=vault.address,
        auth="approle",
        role_id_file=write_secret(tmp_path / "role-id", role_id),
        secret_id_file=write_secret(tmp_path / "secret-id", secret_id or real_secret_id),
    )


def test_approle_logs_in_on_first_use(vault: FakeVault, tmp_path: Path) -> None:
    manager = keys(approle_config(vault, tmp_path))

    manager.generate("x509-1", KeyType.EC_P256)

    assert vault.count("POST", "auth/approle/login") == 1


def test_approle_logs_in_again_once_when_its_token_expired(vault: FakeVault, tmp_path: Path) -> None:
    manager = keys(approle_config(vault, tmp_path))
    manager.generate("x509-1", KeyType.EC_P256)
    vault.expire_tokens()

    manager.get("x509-1")

    assert vault.count("POST", "auth/approle/login") == 2


def test_approle_still_denied_after_a_fresh_login_names_the_policy(vault: FakeVault, tmp_path: Path) -> None:
    role_id, secret_id = vault.add_approle("nothing")
    config = VaultConfig(
        address=vault.address,
        auth="approle",
        role_id_file=write_secret(tmp_path / "role-id", role_id),
        secret_id_file=write_secret(tmp_path / "secret-id", secret_id),
    )

    message = failure(NotAuthorized, lambda: keys(config).get("x509-1"))

    assert message.startswith(f"{USER}: Vault at {vault.address} denied 'read' on transit/keys/trustmesh-x509-1: ")
    assert "the AppRole's token lacks it or has expired" in message
    assert vault.count("POST", "auth/approle/login") == 2  # the first login, and one retry


def test_approle_with_a_wrong_secret_id_is_refused_in_one_line(vault: FakeVault, tmp_path: Path) -> None:
    manager = keys(approle_config(vault, tmp_path, secret_id="not-the-secret"))

    message = failure(NotAuthenticated, lambda: manager.get("x509-1"))

    assert message == (
        f"{USER}: Vault at {vault.address} refused the AppRole login at auth/approle/login; check "
        "vault.role_id_file and vault.secret_id_file (a secret ID expires and may be limited in uses) and "
        "vault.approle_mount"
    )
    assert "not-the-secret" not in message


def test_a_renewed_token_file_is_read_again_when_vault_refuses_the_old_token(vault: FakeVault, tmp_path: Path) -> None:
    config = token_config(vault, tmp_path)
    manager = keys(config)
    manager.generate("x509-1", KeyType.EC_P256)
    vault.expire_tokens()
    assert config.token_file is not None
    write_secret(config.token_file, vault.add_token("trustmesh"))  # as a Vault Agent sink renews it

    assert manager.get("x509-1").key_size == 256


def test_a_token_file_others_can_read_is_refused(vault: FakeVault, tmp_path: Path) -> None:
    config = token_config(vault, tmp_path)
    assert config.token_file is not None
    config.token_file.chmod(0o644)

    message = failure(ConfigError, lambda: keys(config))

    assert message == (
        f"vault.token_file {config.token_file} has mode 0644; it must be without group/other access — run "
        f"'chmod 600 {config.token_file}'"
    )


def test_a_token_from_the_environment_is_used(vault: FakeVault) -> None:
    config = VaultConfig(address=vault.address, token_env="CA_VAULT_TOKEN")
    client = VaultClient(config, USER, "ca.key_manager.transit_mount", {"CA_VAULT_TOKEN": vault.add_token("trustmesh")})

    assert VaultTransitKeyManager(client, "transit", "trustmesh-").generate("x509-1", KeyType.EC_P256).key_size == 256


def test_a_missing_token_environment_variable_is_a_config_error(vault: FakeVault) -> None:
    config = VaultConfig(address=vault.address, token_env="CA_VAULT_TOKEN")

    message = failure(ConfigError, lambda: VaultClient(config, USER, "ca.key_manager.transit_mount", {}))

    assert message == (
        "environment variable CA_VAULT_TOKEN (named by vault.token_env) is not set or empty; export the Vault "
        "token in it"
    )
