"""Run py-spiffe (tests/support/pyspiffe_oracle.py) in a child process and read its JSON answer.

py-spiffe's generated protobuf module collides with ours in protobuf's process-wide descriptor pool,
so tests never import ``spiffe``; they ask this oracle instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.support.processes import run

ORACLE = str(Path(__file__).with_name("pyspiffe_oracle.py"))


def ask_pyspiffe(*args: str) -> dict[str, object]:
    """The oracle's answer; fails the test with py-spiffe's own error when it refuses."""
    result = run([sys.executable, ORACLE, *args], timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    answer: dict[str, object] = json.loads(result.stdout)
    return answer
