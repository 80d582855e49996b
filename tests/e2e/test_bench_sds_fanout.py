"""bench/sds_fanout.py runs end to end with tiny counts: the agent's SDS stack behind the peer-credential
proxy and the bare grpc.aio loop each push to every stream, new and established (the figures are not a
test; docs/performance.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.support.processes import run

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "sds_fanout.py"


def test_sds_fanout_bench_pushes_to_every_stream_with_tiny_counts() -> None:
    tiny = ["--streams", "12", "--channels", "3", "--repeat", "2", "--pushes", "3"]
    result = run([sys.executable, str(BENCH), *tiny], env={"PYTHONPATH": str(ROOT)}, timeout=90)
    assert result.returncode == 0, result.stderr[-3000:]
    rounds = [line for line in result.stdout.splitlines() if line.startswith("round ")]
    assert len(rounds) == 2
    assert all("pushed to 12/12 (trustmesh), 12/12 (bare)" in line for line in rounds), result.stdout
    assert "first push, p99 trustmesh / bare, median of 2 rounds" in result.stdout
    assert "established push, p99 trustmesh / bare, median of 2 rounds" in result.stdout
