"""The shipped Prometheus rules (deploy/prometheus/) as tests read them, promtool, and the names a
``/metrics`` page exposes — so tests can hold the rules, the docs and the code to one set of names."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

RULES_DIR = Path(__file__).parents[2] / "deploy" / "prometheus"
RULES = RULES_DIR / "trustmesh-rules.yml"
RULE_TESTS = RULES_DIR / "trustmesh-rules.test.yml"
_METRIC = re.compile(r"\btrustmesh_[a-z0-9_]+\b")
_ALERT = re.compile(r"^\s*- alert:\s*(\w+)\s*$", re.MULTILINE)


def alert_names() -> list[str]:
    """Every alert the rules file defines, in order."""
    return _ALERT.findall(RULES.read_text())


def metric_names_in_rules() -> set[str]:
    """Every trustmesh metric the rules' expressions and annotations name (as exposed: ``…_total`` for
    counters)."""
    return set(_METRIC.findall(RULES.read_text()))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool in the rules' directory (rule files name each other relatively)."""
    binary = shutil.which("promtool")
    if binary is None:
        raise AssertionError("promtool is not installed; run scripts/ensure-promtool (Debian's prometheus package)")
    return subprocess.run([binary, *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=60, check=False)


def exposed_names(exposition: str) -> set[str]:
    """The series names a /metrics page can yield: each family's samples, and for families without
    samples yet the names their type implies (``_total`` for a counter, ``_bucket``/``_sum``/``_count``
    for a histogram)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names
