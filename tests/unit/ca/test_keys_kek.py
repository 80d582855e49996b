"""The key-encryption key of the disk key manager (DESIGN §3 "Key custody"): from exactly one of a
file (0600/0400, created on first run when allowed) or an environment variable, at least 32 bytes —
and ``open_key_manager``, which builds the manager the config names."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ca.config import KeyManagerConfig, VaultConfig
from ca.keys import DiskKeyManager, MemoryKeyManager, VaultTransitKeyManager, load_kek, open_key_manager
from spiffe_core.errors import ConfigError
from spiffe_core.keys import KeyType

KEK_TEXT = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"


def write_secret(path: Path, content: str, mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    path.chmod(mode)
    return path


def config_error(call: object) -> str:
    assert callable(call)
    with pytest.raises(ConfigError) as caught:
        call()
    return str(caught.value)


@pytest.mark.parametrize("mode", [pytest.param(0o600, id="0600"), pytest.param(0o400, id="0400")])
def test_reads_the_kek_file_without_surrounding_whitespace(tmp_path: Path, mode: int) -> None:
    kek_file = write_secret(tmp_path / "kek", f"  {KEK_TEXT}\n\n", mode)

    assert load_kek(kek_file, None) == KEK_TEXT.encode()


@pytest.mark.parametrize(
    "mode",
    [pytest.param(0o640, id="0640"), pytest.param(0o644, id="0644"), pytest.param(0o700, id="0700")],
)
def test_refuses_a_kek_file_whose_mode_is_not_0600_or_0400(tmp_path: Path, mode: int) -> None:
    kek_file = write_secret(tmp_path / "kek", KEK_TEXT, mode)

    assert config_error(lambda: load_kek(kek_file, None)) == (
        f"key-encryption key file {kek_file} has mode {mode:04o}; it must be 0600 or 0400 — run 'chmod 600 {kek_file}'"
    )


def test_refuses_a_kek_file_shorter_than_32_bytes(tmp_path: Path) -> None:
    kek_file = write_secret(tmp_path / "kek", "short-but-padded        \n")

    assert config_error(lambda: load_kek(kek_file, None)) == (
        f"key-encryption key file {kek_file} holds 16 bytes; a key-encryption key needs at least 32 — "
        "use e.g. the output of 'openssl rand -hex 32'"
    )


def test_refuses_a_missing_kek_file_unless_creation_is_allowed(tmp_path: Path) -> None:
    kek_file = tmp_path / "kek"

    assert config_error(lambda: load_kek(kek_file, None)) == (
        f"key-encryption key file {kek_file} does not exist; create it with "
        f"'(umask 077; openssl rand -hex 32 > {kek_file})' or enable ca.key_manager.create_kek_if_missing"
    )
    assert not kek_file.exists()


def test_creates_a_missing_kek_file_0600_with_32_random_bytes(tmp_path: Path) -> None:
    kek_file = tmp_path / "new" / "kek"

    kek = load_kek(kek_file, None, create_if_missing=True)

    assert stat.S_IMODE(kek_file.stat().st_mode) == 0o600
    assert len(bytes.fromhex(kek.decode())) == 32
    assert kek_file.read_bytes() == kek + b"\n"


def test_a_created_kek_file_is_reused_on_the_next_start(tmp_path: Path) -> None:
    first = load_kek(tmp_path / "kek", None, create_if_missing=True)

    assert load_kek(tmp_path / "kek", None, create_if_missing=True) == first


def test_refuses_a_kek_file_that_is_a_symbolic_link(tmp_path: Path) -> None:
    target = write_secret(tmp_path / "real-kek", KEK_TEXT)
    (tmp_path / "kek").symlink_to(target)

    assert config_error(lambda: load_kek(tmp_path / "kek", None, create_if_missing=True)) == (
        f"key-encryption key file {tmp_path / 'kek'} is a symbolic link; put the file itself there"
    )


def test_never_creates_a_kek_beside_keys_encrypted_with_a_lost_one(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    (keys / "x509-0a1b.pem").write_text("-----BEGIN ENCRYPTED PRIVATE KEY-----\n")

    message = config_error(lambda: load_kek(tmp_path / "kek", None, create_if_missing=True, keys_dir=keys))

    assert message.startswith(
        f"key-encryption key file {tmp_path / 'kek'} does not exist, but {keys} holds 1 keys encrypted with one; "
        "restore that file (a new key-encryption key cannot decrypt them)"
    )
    assert not (tmp_path / "kek").exists()


def test_reads_the_kek_from_the_named_environment_variable() -> None:
    assert load_kek(None, "CA_KEK", environ={"CA_KEK": f"{KEK_TEXT}\n"}) == KEK_TEXT.encode()


def test_refuses_an_unset_kek_environment_variable() -> None:
    assert config_error(lambda: load_kek(None, "CA_KEK", environ={})) == (
        "environment variable CA_KEK (named by ca.key_manager.kek_env) is not set; export it with the "
        "key-encryption key, e.g. the output of 'openssl rand -hex 32'"
    )


def test_refuses_a_kek_environment_variable_shorter_than_32_bytes() -> None:
    assert config_error(lambda: load_kek(None, "CA_KEK", environ={"CA_KEK": "hunter2"})) == (
        "environment variable CA_KEK holds 7 bytes; a key-encryption key needs at least 32 — "
        "use e.g. the output of 'openssl rand -hex 32'"
    )


def test_refuses_both_a_kek_file_and_a_kek_environment_variable(tmp_path: Path) -> None:
    kek_file = write_secret(tmp_path / "kek", KEK_TEXT)

    assert config_error(lambda: load_kek(kek_file, "CA_KEK", environ={"CA_KEK": KEK_TEXT})) == (
        f"both a key-encryption key file ({kek_file}) and environment variable (CA_KEK) are configured; "
        "set only one of ca.key_manager.kek_file and ca.key_manager.kek_env"
    )


def test_refuses_neither_a_kek_file_nor_a_kek_environment_variable() -> None:
    assert config_error(lambda: load_kek(None, None)) == (
        "no key-encryption key is configured for the disk key manager; set ca.key_manager.kek_file "
        "or ca.key_manager.kek_env"
    )


def test_open_key_manager_memory_needs_no_kek(tmp_path: Path) -> None:
    manager = open_key_manager(KeyManagerConfig(kind="memory"), tmp_path)

    assert isinstance(manager, MemoryKeyManager)
    assert list(tmp_path.iterdir()) == []


def test_open_key_manager_disk_creates_the_kek_and_keeps_keys_across_restarts(tmp_path: Path) -> None:
    config = KeyManagerConfig(kind="disk", kek_file=tmp_path / "kek")

    first = open_key_manager(config, tmp_path)
    key = first.generate("x509-1", KeyType.EC_P256)
    second = open_key_manager(config, tmp_path)

    assert isinstance(second, DiskKeyManager)
    assert second.get("x509-1").private_numbers() == key.private_numbers()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kek", "keys"]


def test_open_key_manager_disk_in_a_directory_of_its_own_is_shared_by_two_managers(tmp_path: Path) -> None:
    config = KeyManagerConfig(kind="disk", kek_file=tmp_path / "kek", directory=tmp_path / "shared")

    key = open_key_manager(config, tmp_path / "replica-1").generate("x509-1", KeyType.EC_P256)
    other = open_key_manager(config, tmp_path / "replica-2")

    assert other.get("x509-1").private_numbers() == key.private_numbers()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kek", "shared"]


def test_open_key_manager_disk_without_kek_creation_refuses_a_missing_kek(tmp_path: Path) -> None:
    config = KeyManagerConfig(kind="disk", kek_file=tmp_path / "kek", create_kek_if_missing=False)

    assert config_error(lambda: open_key_manager(config, tmp_path)).startswith(
        f"key-encryption key file {tmp_path / 'kek'} does not exist; "
    )


def test_open_key_manager_disk_takes_the_kek_from_the_environment(tmp_path: Path) -> None:
    config = KeyManagerConfig(kind="disk", kek_env="CA_KEK")

    first = open_key_manager(config, tmp_path, {"CA_KEK": KEK_TEXT})
    first.generate("x509-1", KeyType.EC_P256)

    assert config_error(
        lambda: open_key_manager(config, tmp_path, {"CA_KEK": KEK_TEXT[::-1]}).get("x509-1")
    ).startswith("cannot decrypt key 'x509-1'")
    assert not (tmp_path / "kek").exists()


def test_open_key_manager_vault_transit_keeps_nothing_on_disk(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    vault = VaultConfig(address="https://vault.example.org:8200", token_env="CA_VAULT_TOKEN")

    manager = open_key_manager(KeyManagerConfig(kind="vault-transit"), data_dir, {"CA_VAULT_TOKEN": "hvs.x"}, vault)

    assert isinstance(manager, VaultTransitKeyManager)
    assert list(data_dir.iterdir()) == []


def test_open_key_manager_vault_transit_without_a_vault_section_is_refused(tmp_path: Path) -> None:
    assert config_error(lambda: open_key_manager(KeyManagerConfig(kind="vault-transit"), tmp_path)) == (
        "ca.key_manager.kind 'vault-transit' needs the [vault] section; set vault.address"
    )
