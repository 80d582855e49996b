"""``scripts/quickstart`` never reports a CA it did not start: ports already taken (a quickstart from
another run still up) are named and the run stops with status 1 before starting anything."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.support.processes import run

pytestmark = pytest.mark.e2e


def test_the_quickstart_refuses_ports_already_in_use(tmp_path: Path) -> None:
    base = 31000 + (os.getpid() % 200) * 50
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", base + 80))  # where the quickstart's CA would serve /ready
        taken.listen()
        result = run(
            [str(Path(__file__).parents[2] / "scripts" / "quickstart"), "--check", "--dir", str(tmp_path),
             "--port-base", str(base)],
            timeout=60,
        )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"ports already in use (ca_http 127.0.0.1:{base + 80})" in result.stderr
    assert "CA ready" not in result.stdout
    assert not (tmp_path / "logs" / "ca.log").exists()
