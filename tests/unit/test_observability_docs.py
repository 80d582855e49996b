"""docs/observability.md lists exactly the metrics the CA and the agent register, with their types, and
every metric the shipped alert rules name (so docs, rules and code cannot drift apart)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry

from ca.authority import AuthoritySet
from ca.federation.refresher import FederationMetrics
from ca.metrics import AuthorityCollector, CaMetrics, LegacyCrlCollector, StreamCollector
from sds.cache import CacheSnapshot, WorkloadCache
from sds.health import AgentHealth
from sds.manager import SyncStatus
from sds.metrics import AgentMetrics, AgentStateCollector
from sds.node_client import AgentCredentials
from spiffe_core.bundle import Bundle
from spiffe_core.errors import FailedPrecondition
from spiffe_core.spiffe_id import TrustDomain
from tests.support.clock import FakeClock
from tests.support.prometheus import alert_names, metric_names_in_rules

DOC = (Path(__file__).parents[2] / "docs" / "observability.md").read_text()
TD = TrustDomain("example.org")
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
_ROW = re.compile(r"^\| `(trustmesh_[a-z0-9_]+)` \| (counter|gauge|histogram) \|", re.MULTILINE)


def documented(section: str) -> dict[str, str]:
    """``{exposed name: type}`` from the table under ``### <section>``."""
    body = DOC.split(f"### {section}\n", 1)[1].split("\n#", 1)[0]
    return dict(_ROW.findall(body))


def registered(registry: CollectorRegistry) -> dict[str, str]:
    """``{exposed name: type}`` of the trustmesh families a registry yields (counters gain ``_total``)."""
    return {
        f"{family.name}_total" if family.type == "counter" else family.name: family.type
        for family in registry.collect()
        if family.name.startswith("trustmesh_")
    }


class NoIdentity:
    def get_current(self) -> AgentCredentials:
        raise FailedPrecondition("the agent has no X509-SVID yet")


def ca_registry() -> CollectorRegistry:
    """Everything ``ca.server.build_service`` registers."""
    metrics = CaMetrics()
    metrics.add_collector(AuthorityCollector(lambda: AuthoritySet(TD, (), (), Bundle(TD))))
    metrics.add_collector(StreamCollector(lambda: 0, lambda: 0))
    metrics.add_collector(LegacyCrlCollector(dict))
    FederationMetrics(metrics.registry)
    return metrics.registry


def agent_registry() -> CollectorRegistry:
    """Everything ``sds.server.serve_agent`` registers."""
    metrics = AgentMetrics()
    health = AgentHealth(
        identity=NoIdentity(),
        cache=WorkloadCache(CacheSnapshot(TD)),
        sync=SyncStatus(),
        clock=FakeClock(NOW),
        ca_contact_window=timedelta(minutes=5),
    )
    metrics.registry.register(AgentStateCollector(health, 10))
    return metrics.registry


def test_the_ca_metrics_table_lists_exactly_what_the_ca_registers() -> None:
    assert documented("CA metrics") == registered(ca_registry())


def test_the_agent_metrics_table_lists_exactly_what_the_agent_registers() -> None:
    assert documented("Agent metrics") == registered(agent_registry())


def test_every_metric_the_alert_rules_name_is_documented() -> None:
    names = set(documented("CA metrics")) | set(documented("Agent metrics"))
    assert sorted(metric_names_in_rules() - names) == []


def test_every_shipped_alert_is_in_the_alerts_table() -> None:
    assert [alert for alert in alert_names() if f"| `{alert}` |" not in DOC] == []
