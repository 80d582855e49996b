"""The disk key manager (DESIGN §3 "Key custody"): keys are encrypted PKCS#8 files, 0600 in a 0700
directory, written atomically, refused when unsafe, and unreadable without the key-encryption key."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

import ca.keys.disk
from ca.keys import DiskKeyManager
from spiffe_core.errors import AlreadyExists, ConfigError, NotFound
from spiffe_core.keys import KeyType, PrivateKey, generate_private_key, key_type_of

KEK = b"0123456789abcdef0123456789abcdef"
OTHER_KEK = b"fedcba9876543210fedcba9876543210"


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def manager(directory: Path) -> DiskKeyManager:
    return DiskKeyManager(directory, KEK)


def pkcs8(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize("key_type", [pytest.param(t, id=t.value) for t in KeyType])
def test_every_key_type_survives_a_restart(directory: Path, key_type: KeyType) -> None:
    key = DiskKeyManager(directory, KEK).generate("x509-1", key_type)

    reloaded = DiskKeyManager(directory, KEK).get("x509-1")

    assert key_type_of(reloaded) is key_type
    assert pkcs8(reloaded) == pkcs8(key)


def test_key_file_is_encrypted_pkcs8_named_for_the_key_id(manager: DiskKeyManager, directory: Path) -> None:
    manager.generate("x509-1", KeyType.EC_P256)

    content = (directory / "x509-1.pem").read_bytes()

    assert content.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    with pytest.raises(TypeError, match="Password was not given but private key is encrypted"):
        serialization.load_pem_private_key(content, password=None)
    with pytest.raises(ValueError):
        serialization.load_pem_private_key(content, password=OTHER_KEK)


def test_key_file_is_0600_and_directory_0700(manager: DiskKeyManager, directory: Path) -> None:
    manager.generate("x509-1", KeyType.EC_P256)

    assert mode_of(directory) == 0o700
    assert mode_of(directory / "x509-1.pem") == 0o600


def test_key_file_is_0600_even_under_a_permissive_umask(manager: DiskKeyManager, directory: Path) -> None:
    old = os.umask(0)
    try:
        manager.generate("x509-1", KeyType.EC_P256)
    finally:
        os.umask(old)

    assert mode_of(directory / "x509-1.pem") == 0o600


def test_generate_leaves_only_the_key_file(manager: DiskKeyManager, directory: Path) -> None:
    manager.generate("x509-1", KeyType.EC_P256)
    manager.generate("jwt-1", KeyType.EC_P256)

    assert sorted(p.name for p in directory.iterdir()) == ["jwt-1.pem", "x509-1.pem"]


def test_wrong_key_encryption_key_is_a_config_error(manager: DiskKeyManager, directory: Path) -> None:
    manager.generate("x509-1", KeyType.EC_P256)

    with pytest.raises(ConfigError) as caught:
        DiskKeyManager(directory, OTHER_KEK).get("x509-1")

    assert str(caught.value) == (
        f"cannot decrypt key 'x509-1' in {directory / 'x509-1.pem'}: wrong key-encryption key? Check "
        "ca.key_manager.kek_file / kek_env against the one the keys were written with"
    )


def test_wrong_key_encryption_key_error_shows_no_key_material(manager: DiskKeyManager, directory: Path) -> None:
    manager.generate("x509-1", KeyType.EC_P256)

    with pytest.raises(ConfigError) as caught:
        DiskKeyManager(directory, OTHER_KEK).get("x509-1")

    shown = str(caught.value) + repr(caught.value.__cause__)
    assert KEK.decode() not in shown
    assert OTHER_KEK.decode() not in shown
    assert "PRIVATE KEY" not in shown


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param(0o640, id="group-readable"),
        pytest.param(0o604, id="other-readable"),
        pytest.param(0o620, id="group-writable"),
    ],
)
def test_refuses_a_key_file_open_to_group_or_others(manager: DiskKeyManager, directory: Path, mode: int) -> None:
    manager.generate("x509-1", KeyType.EC_P256)
    path = directory / "x509-1.pem"
    path.chmod(mode)

    with pytest.raises(ConfigError) as caught:
        manager.get("x509-1")

    assert str(caught.value) == (
        f"key file {path} has mode {mode:04o}; it must be without group/other access — run 'chmod 600 {path}'"
    )


def test_refuses_a_key_file_that_is_a_symbolic_link(manager: DiskKeyManager, directory: Path, tmp_path: Path) -> None:
    manager.generate("x509-1", KeyType.EC_P256)
    (directory / "x509-1.pem").rename(tmp_path / "elsewhere.pem")
    (directory / "x509-1.pem").symlink_to(tmp_path / "elsewhere.pem")

    with pytest.raises(ConfigError) as caught:
        manager.get("x509-1")

    assert str(caught.value) == f"key file {directory / 'x509-1.pem'} is a symbolic link; put the file itself there"


def test_refuses_an_unencrypted_key_file(manager: DiskKeyManager, directory: Path) -> None:
    path = directory / "x509-1.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            generate_private_key(KeyType.EC_P256).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    with pytest.raises(ConfigError) as caught:
        manager.get("x509-1")

    assert str(caught.value) == (
        f"key file {path} is not encrypted; the disk key manager keeps keys only as encrypted PKCS#8 — "
        "restore the encrypted file or delete this one"
    )


def test_refuses_a_key_directory_open_to_group_or_others(directory: Path) -> None:
    directory.mkdir(mode=0o700)
    directory.chmod(0o750)

    with pytest.raises(ConfigError) as caught:
        DiskKeyManager(directory, KEK)

    assert str(caught.value) == (
        f"key directory {directory} is accessible by group or others (mode 0750); run 'chmod 700 {directory}'"
    )


def test_refuses_a_key_encryption_key_shorter_than_32_bytes(directory: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        DiskKeyManager(directory, b"x" * 31)

    assert str(caught.value) == (
        "the key-encryption key is 31 bytes; at least 32 are required — generate one with 'openssl rand -hex 32'"
    )


def test_a_failed_write_leaves_no_file_behind(
    manager: DiskKeyManager, directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        manager.generate("x509-1", KeyType.EC_P256)
    monkeypatch.undo()

    assert list(directory.iterdir()) == []
    with pytest.raises(NotFound):
        manager.get("x509-1")
    manager.generate("x509-1", KeyType.EC_P256)


def test_a_temporary_left_by_a_crash_is_never_read_as_a_key(manager: DiskKeyManager, directory: Path) -> None:
    (directory / ".x509-1.pem.0123456789abcdef.tmp").write_bytes(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")

    with pytest.raises(NotFound):
        manager.get("x509-1")
    manager.generate("x509-1", KeyType.EC_P256)
    assert key_type_of(manager.get("x509-1")) is KeyType.EC_P256


def test_opening_the_directory_removes_stale_temporaries_only(manager: DiskKeyManager, directory: Path) -> None:
    stale = directory / ".x509-1.pem.0123456789abcdef.tmp"
    fresh = directory / ".x509-2.pem.fedcba9876543210.tmp"  # may belong to a writer in another process
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))

    DiskKeyManager(directory, KEK)

    assert sorted(p.name for p in directory.iterdir()) == [fresh.name]


def test_the_first_of_two_racing_writers_keeps_the_key_id(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loser, winner = DiskKeyManager(directory, KEK), DiskKeyManager(directory, KEK)
    real_generate = generate_private_key
    winners_key: list[PrivateKey] = []

    def other_replica_finishes_first(key_type: KeyType) -> PrivateKey:
        if not winners_key:  # while the loser generates its key, the winner writes the same key ID
            winners_key.append(real_generate(key_type))  # placeholder, so the winner's own call is not raced
            winners_key[0] = winner.generate("x509-1", key_type)
        return real_generate(key_type)

    monkeypatch.setattr(ca.keys.disk, "generate_private_key", other_replica_finishes_first)

    with pytest.raises(AlreadyExists):
        loser.generate("x509-1", KeyType.EC_P256)
    assert pkcs8(loser.get("x509-1")) == pkcs8(winners_key[0])
    assert sorted(p.name for p in directory.iterdir()) == ["x509-1.pem"]
