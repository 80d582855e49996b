"""The directory of the agent's public sockets: created 0755 for every user to reach, and refused when
someone else could swap the sockets in it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from sds.files import make_public_directory
from spiffe_core.errors import ConfigError


def test_creates_the_socket_directory_0755_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        make_public_directory(tmp_path / "a" / "public")
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "public").stat().st_mode & 0o7777 == 0o755


def test_keeps_an_existing_directory_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "public").mkdir(mode=0o750)
    make_public_directory(tmp_path / "public")
    assert (tmp_path / "public").stat().st_mode & 0o777 == 0o750


def test_refuses_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "public").symlink_to(tmp_path / "real")
    with pytest.raises(ConfigError) as failure:
        make_public_directory(tmp_path / "public")
    assert str(failure.value) == (
        f"socket_dir: {tmp_path / 'public'} is not a directory (or is a symlink); the agent's sockets need a "
        "real directory — remove it or configure another socket_dir"
    )


def test_refuses_a_directory_others_may_write_to(tmp_path: Path) -> None:
    (tmp_path / "public").mkdir()
    os.chmod(tmp_path / "public", 0o777)
    with pytest.raises(ConfigError) as failure:
        make_public_directory(tmp_path / "public")
    assert str(failure.value) == (
        f"socket_dir: {tmp_path / 'public'} is writable by other users (mode 0777), who could replace the "
        "agent's sockets; make it 0755"
    )


def test_accepts_a_sticky_shared_directory(tmp_path: Path) -> None:
    (tmp_path / "public").mkdir()
    os.chmod(tmp_path / "public", 0o1777)
    make_public_directory(tmp_path / "public")


def test_refuses_a_directory_of_another_user(tmp_path: Path) -> None:
    (tmp_path / "public").mkdir()
    os.chown(tmp_path / "public", 65534, 65534)
    with pytest.raises(ConfigError) as failure:
        make_public_directory(tmp_path / "public")
    assert str(failure.value).startswith(f"socket_dir: {tmp_path / 'public'} belongs to uid 65534, who could replace")


def test_warns_when_a_parent_keeps_other_users_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "private").mkdir(mode=0o700)
    os.chmod(tmp_path / "private", 0o700)
    with caplog.at_level(logging.WARNING):
        make_public_directory(tmp_path / "private" / "public")
    assert f"{tmp_path / 'private'} (mode 0700) keeps other users from reaching the agent's sockets" in caplog.text
