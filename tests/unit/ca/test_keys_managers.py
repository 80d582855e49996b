"""The KeyManager contract (DESIGN §3 "Key custody"), run against every backend: keys come back as
they were made, IDs are unique and validated, deletion is idempotent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from ca.keys import DiskKeyManager, KeyManager, MemoryKeyManager, check_key_id
from spiffe_core.errors import AlreadyExists, InvalidArgument, NotFound
from spiffe_core.keys import KeyType, PrivateKey, key_type_of

KEK = b"k" * 32

MANAGERS: list[object] = [
    pytest.param(lambda _dir: MemoryKeyManager(), id="memory"),
    pytest.param(lambda directory: DiskKeyManager(directory / "keys", KEK), id="disk"),
]


@pytest.fixture(params=MANAGERS)
def manager(request: pytest.FixtureRequest, tmp_path: Path) -> KeyManager:
    make: Callable[[Path], KeyManager] = request.param
    return make(tmp_path)


def pkcs8(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def test_get_returns_the_generated_key(manager: KeyManager) -> None:
    key = manager.generate("x509-1", KeyType.EC_P256)

    assert pkcs8(manager.get("x509-1")) == pkcs8(key)


@pytest.mark.parametrize(
    "key_type", [pytest.param(KeyType.EC_P256, id="ec-p256"), pytest.param(KeyType.EC_P384, id="ec-p384")]
)
def test_generate_makes_a_key_of_the_asked_type(manager: KeyManager, key_type: KeyType) -> None:
    assert key_type_of(manager.generate("jwt-1", key_type)) is key_type


def test_generate_refuses_a_taken_key_id(manager: KeyManager) -> None:
    first = manager.generate("x509-1", KeyType.EC_P256)

    with pytest.raises(AlreadyExists, match=r"^key 'x509-1' exists already.*; choose a new key ID$"):
        manager.generate("x509-1", KeyType.EC_P256)
    assert pkcs8(manager.get("x509-1")) == pkcs8(first)


def test_get_of_a_missing_key_is_not_found(manager: KeyManager) -> None:
    with pytest.raises(NotFound, match=r"^key 'x509-missing' is not in "):
        manager.get("x509-missing")


def test_delete_forgets_the_key(manager: KeyManager) -> None:
    manager.generate("x509-1", KeyType.EC_P256)

    manager.delete("x509-1")

    with pytest.raises(NotFound):
        manager.get("x509-1")


def test_delete_of_a_missing_key_is_not_an_error(manager: KeyManager) -> None:
    manager.generate("x509-1", KeyType.EC_P256)
    manager.delete("x509-1")

    manager.delete("x509-1")
    manager.delete("never-existed")


def test_a_deleted_key_id_can_be_generated_again(manager: KeyManager) -> None:
    old = manager.generate("x509-1", KeyType.EC_P256)
    manager.delete("x509-1")

    new = manager.generate("x509-1", KeyType.EC_P256)

    assert pkcs8(manager.get("x509-1")) == pkcs8(new) != pkcs8(old)


BAD_KEY_IDS = [
    pytest.param("", id="empty"),
    pytest.param(".", id="dot"),
    pytest.param("..", id="dot-dot"),
    pytest.param("../kek", id="parent-directory"),
    pytest.param("/etc/passwd", id="absolute-path"),
    pytest.param("keys/x509-1", id="slash"),
    pytest.param("x509-1\n", id="trailing-newline"),
    pytest.param("x509 1", id="space"),
    pytest.param("x509-ü", id="non-ascii"),
    pytest.param("x509-1\x00", id="nul"),
    pytest.param("k" * 129, id="129-characters"),
]


@pytest.mark.parametrize("key_id", BAD_KEY_IDS)
def test_check_key_id_rejects(key_id: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_key_id(key_id)
    assert str(caught.value) == (
        f"key ID {key_id!r} is not allowed; key IDs are 1-128 characters of A-Z, a-z, 0-9, '.', '-' or '_' "
        "and not '.' or '..' — use e.g. 'x509-<uuid>'"
    )


@pytest.mark.parametrize(
    "key_id",
    [
        pytest.param("x509-3f2a9c1e-0b7d-4f5e-9a61-2c8d7e4b1f00", id="uuid"),
        pytest.param("jwt_key.v2", id="underscore-and-dot"),
        pytest.param("k" * 128, id="128-characters"),
        pytest.param("...", id="three-dots"),
    ],
)
def test_check_key_id_accepts(key_id: str) -> None:
    assert check_key_id(key_id) == key_id


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda m: m.generate("../escape", KeyType.EC_P256), id="generate"),
        pytest.param(lambda m: m.get("../escape"), id="get"),
        pytest.param(lambda m: m.delete("../escape"), id="delete"),
    ],
)
def test_every_call_rejects_a_bad_key_id(manager: KeyManager, call: Callable[[KeyManager], object]) -> None:
    with pytest.raises(InvalidArgument, match=r"^key ID '\.\./escape' is not allowed"):
        call(manager)
