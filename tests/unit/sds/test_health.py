"""The agent's readiness and the state its ``/metrics`` shows (sds.health, sds.metrics): each reason for
not being ready, and expiry gauges that equal the certificates' notAfter, capped per SPIFFE ID."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from sds.cache import CacheSnapshot, WorkloadCache, WorkloadSvid
from sds.health import AgentHealth
from sds.manager import SyncStatus
from sds.metrics import AgentStateCollector
from sds.node_client import AgentCredentials
from spiffe_core.errors import FailedPrecondition
from spiffe_core.keys import KeyType, generate_private_key
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.agent_pki import SigningCa
from tests.support.clock import FakeClock

TD = TrustDomain("example.org")
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
CA = SigningCa.create(TD, NOW)
AGENT = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-1")
WINDOW = timedelta(minutes=5)


class Identity:
    """The agent's identity: nothing until ``credentials`` is set."""

    def __init__(self, credentials: AgentCredentials | None = None) -> None:
        self.credentials = credentials

    def get_current(self) -> AgentCredentials:
        if self.credentials is None:
            raise FailedPrecondition("the agent has no X509-SVID yet")
        return self.credentials


def agent_credentials(ttl: timedelta = timedelta(hours=1)) -> AgentCredentials:
    return AgentCredentials(CA.issue(AGENT, not_before=NOW, not_after=NOW + ttl), CA.bundle())


def workload(path: str, ttl: timedelta, entry_id: str | None = None) -> WorkloadSvid:
    spiffe_id = SpiffeId(TD, path)
    key = generate_private_key(KeyType.EC_P256)
    chain = CA.sign(spiffe_id, key.public_key(), not_before=NOW, not_after=NOW + ttl)
    return WorkloadSvid(entry_id or path, spiffe_id, chain, key, frozenset({Selector("unix", "uid:1000")}))


def health(
    identity: Identity, snapshot: CacheSnapshot, sync: SyncStatus | None = None, clock: FakeClock | None = None
) -> AgentHealth:
    return AgentHealth(
        identity=identity,
        cache=WorkloadCache(snapshot),
        sync=sync or SyncStatus(),
        clock=clock or FakeClock(NOW),
        ca_contact_window=WINDOW,
    )


HELD = CacheSnapshot(TD, CA.bundle())


def test_ready_with_an_svid_a_bundle_and_a_delivering_stream() -> None:
    assert health(Identity(agent_credentials()), HELD, SyncStatus(connected=True)).not_ready_reason() is None


@pytest.mark.parametrize(
    ("identity", "snapshot", "reason"),
    [
        pytest.param(Identity(), HELD, "the agent has no X509-SVID yet (attesting with the CA)", id="attesting"),
        pytest.param(
            Identity(agent_credentials()),
            CacheSnapshot(TD),
            "the agent has no trust bundle from the CA yet",
            id="no-bundle",
        ),
    ],
)
def test_not_ready_before_it_holds_its_svid_and_bundle(
    identity: Identity, snapshot: CacheSnapshot, reason: str
) -> None:
    assert health(identity, snapshot, SyncStatus(connected=True)).not_ready_reason() == reason


def test_not_ready_once_its_own_svid_expired() -> None:
    clock = FakeClock(NOW + timedelta(hours=2))
    checked = health(Identity(agent_credentials()), HELD, SyncStatus(connected=True), clock)
    expiry = (NOW + timedelta(hours=1)).isoformat()
    assert checked.not_ready_reason() == f"the agent's X509-SVID expired at {expiry} and was not renewed"


def test_a_ca_outage_is_tolerated_for_the_contact_window_then_reported_with_the_last_error() -> None:
    clock = FakeClock(NOW)
    sync = SyncStatus(connected=False, last_contact_at=NOW, last_error="node API Sync is unavailable")
    checked = health(Identity(agent_credentials()), HELD, sync, clock)
    clock.advance(WINDOW)
    assert checked.not_ready_reason() is None
    clock.advance(timedelta(seconds=1))
    assert checked.not_ready_reason() == (
        f"the CA has not been reached since {NOW.isoformat()}, longer than health.ca_contact_window (300s) "
        "(last error: node API Sync is unavailable)"
    )


def test_an_agent_that_never_reached_the_ca_since_it_started_is_not_ready() -> None:
    reason = health(Identity(agent_credentials()), HELD).not_ready_reason()
    assert reason == "the CA has not been reached since the agent started, longer than health.ca_contact_window (300s)"


def test_bundle_age_is_zero_while_connected_and_grows_from_the_last_contact() -> None:
    clock = FakeClock(NOW)
    sync = SyncStatus(connected=True, last_contact_at=NOW)
    checked = health(Identity(agent_credentials()), HELD, sync, clock)
    clock.advance(timedelta(seconds=30))
    assert checked.bundle_age() == timedelta(0)
    sync.connected = False
    assert checked.bundle_age() == timedelta(seconds=30)


def scraped(checked: AgentHealth, max_series: int = 1000) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(AgentStateCollector(checked, max_series))
    return registry


def series(registry: CollectorRegistry, name: str) -> dict[str, float]:
    return {
        sample.labels.get("spiffe_id", ""): sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name
    }


def test_expiry_gauges_equal_the_certificates_not_after() -> None:
    svids = (workload("/web", timedelta(hours=1)), workload("/db", timedelta(hours=3)))
    registry = scraped(
        health(Identity(agent_credentials(timedelta(hours=2))), CacheSnapshot(TD, CA.bundle(), svids=svids))
    )
    assert series(registry, "trustmesh_agent_workload_svid_expiry_timestamp_seconds") == {
        str(svid.spiffe_id): svid.cert_chain[0].not_valid_after_utc.timestamp() for svid in svids
    }
    assert series(registry, "trustmesh_agent_svid_expiry_timestamp_seconds") == {
        str(AGENT): (NOW + timedelta(hours=2)).timestamp()
    }
    assert registry.get_sample_value("trustmesh_agent_workload_svids") == 2


def test_two_entries_with_one_spiffe_id_show_the_earlier_expiry() -> None:
    svids = (workload("/web", timedelta(hours=3), "e1"), workload("/web", timedelta(hours=1), "e2"))
    registry = scraped(health(Identity(agent_credentials()), CacheSnapshot(TD, CA.bundle(), svids=svids)))
    assert series(registry, "trustmesh_agent_workload_svid_expiry_timestamp_seconds") == {
        "spiffe://example.org/web": (NOW + timedelta(hours=1)).timestamp()
    }


def test_the_per_svid_series_are_capped_keeping_the_soonest_to_expire() -> None:
    svids = tuple(workload(f"/w{i}", timedelta(hours=1 + i)) for i in range(5))
    registry = scraped(health(Identity(agent_credentials()), CacheSnapshot(TD, CA.bundle(), svids=svids)), 2)
    assert sorted(series(registry, "trustmesh_agent_workload_svid_expiry_timestamp_seconds")) == [
        "spiffe://example.org/w0",
        "spiffe://example.org/w1",
    ]
    assert registry.get_sample_value("trustmesh_agent_workload_svids") == 5


def test_an_agent_still_attesting_has_no_svid_series_and_is_not_ready() -> None:
    registry = scraped(health(Identity(), CacheSnapshot(TD)))
    assert series(registry, "trustmesh_agent_svid_expiry_timestamp_seconds") == {}
    assert registry.get_sample_value("trustmesh_agent_ready") == 0


def test_sync_counters_and_last_contact_are_shown() -> None:
    sync = SyncStatus(connected=True, last_contact_at=NOW, errors=3, reconnects=4)
    registry = scraped(health(Identity(agent_credentials()), HELD, sync))
    assert registry.get_sample_value("trustmesh_agent_ca_sync_errors_total") == 3
    assert registry.get_sample_value("trustmesh_agent_ca_sync_reconnects_total") == 4
    assert registry.get_sample_value("trustmesh_agent_ca_sync_connected") == 1
    assert registry.get_sample_value("trustmesh_agent_ca_last_contact_timestamp_seconds") == NOW.timestamp()
    assert registry.get_sample_value("trustmesh_agent_ready") == 1
