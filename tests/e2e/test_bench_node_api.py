"""bench/node_api.py runs end to end with tiny counts: a real CA, an attested client, every phase
signed and sampled leaves verified (the figures themselves are not a test; docs/performance.md)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.support.processes import run

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "node_api.py"


def test_node_api_bench_signs_and_verifies_every_phase_with_tiny_counts() -> None:
    tiny = ["--svids", "3", "--pool", "3", "--entries", "2", "--batches", "1,2", "--channels", "1,2", "--seconds", "10"]
    # Run as docs/performance.md says: PYTHONPATH is the checkout (the bench imports it and tests.support).
    result = run([sys.executable, str(BENCH), *tiny, "--no-cfssl"], env={"PYTHONPATH": str(ROOT)}, timeout=90)
    assert result.returncode == 0, result.stderr[-3000:]
    phases = [line.split() for line in result.stdout.splitlines() if line.startswith("trustmesh ")]
    assert [(p[1], p[2], p[3]) for p in phases] == [("1", "1", "3"), ("1", "2", "3"), ("2", "1", "3"), ("2", "2", "3")]
    assert all(int(p[-1]) >= 1 for p in phases)  # leaves verified against the bundle, the entry and the CSR key


def test_node_api_bench_measures_the_bare_grpc_floor_beside_batch_1() -> None:
    tiny = ["--svids", "3", "--pool", "3", "--entries", "2", "--batches", "1", "--channels", "1,2", "--seconds", "10"]
    result = run([sys.executable, str(BENCH), *tiny, "--no-cfssl"], env={"PYTHONPATH": str(ROOT)}, timeout=90)
    assert result.returncode == 0, result.stderr[-3000:]
    floor = [line.split() for line in result.stdout.splitlines() if line.startswith("grpc-floor ")]
    assert [(p[1], p[2], p[3]) for p in floor] == [("1", "1", "3"), ("1", "2", "3")]
    assert all(int(p[-1]) >= 1 for p in floor)  # its replies are the CA's stored answer
    per_call = [line for line in result.stdout.splitlines() if line.startswith("batch 1 over ")]
    assert len(per_call) == 2
    assert all(
        re.search(r"trustmesh \d+\.\d\d ms, gRPC floor \d+\.\d\d ms, above the floor -?\d+\.\d\d ms", line)
        for line in per_call
    )


def test_node_api_bench_compares_sparse_calls_with_calls_back_to_back() -> None:
    tiny = ["--sparse", "0.2", "--sparse-calls", "3", "--entries", "2"]
    result = run([sys.executable, str(BENCH), *tiny], env={"PYTHONPATH": str(ROOT)}, timeout=90)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("CA CPU per SignX509Svids call")]
    assert re.search(r"back to back \d+\.\d ms, 0\.2 s apart \d+\.\d ms: ", line), line
