"""spiffe_core/data_dir.py: one process per data directory (the CA's and the agent's). flock locks
belong to an open file, so a second lock taken in this very process stands for a second instance."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from spiffe_core.data_dir import LOCK_FILE, lock_data_dir
from spiffe_core.errors import ConfigError, FailedPrecondition


def test_the_directory_is_made_private_and_the_lock_file_names_the_owner(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    lock = lock_data_dir(data_dir, key="server.data_dir", program="CA")

    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert (data_dir / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    lock.release()


def test_a_second_instance_is_refused_naming_the_first_ones_pid_and_the_setting(tmp_path: Path) -> None:
    first = lock_data_dir(tmp_path, key="data_dir", program="agent")

    with pytest.raises(FailedPrecondition) as refused:
        lock_data_dir(tmp_path, key="data_dir", program="agent")

    assert str(refused.value) == (
        f"another agent is already running (pid {os.getpid()}) on data_dir {tmp_path}; stop it first, or give "
        "this instance its own data_dir"
    )
    first.release()


def test_a_released_lock_can_be_taken_again(tmp_path: Path) -> None:
    lock_data_dir(tmp_path, key="server.data_dir", program="CA").release()

    lock_data_dir(tmp_path, key="server.data_dir", program="CA").release()


def test_a_file_where_the_directory_belongs_is_refused_naming_the_setting(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")

    with pytest.raises(ConfigError, match=r"^server\.data_dir: .*/data is not a directory; move that file away"):
        lock_data_dir(tmp_path / "data", key="server.data_dir", program="CA")
