"""What the scheduled rotation shows on ``/metrics`` (ca.rotator, ca.metrics.RotationMetrics): each step
taken, each failed check, and when the last check succeeded — what the shipped "rotation failing"
alert watches. A real datastore and a hand-moved clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from ca.authority_changes import AuthorityChanges
from ca.authority_manager import AuthorityManager, AuthorityParams
from ca.keys.memory import MemoryKeyManager
from ca.metrics import RotationMetrics
from ca.rotation import RotationParams
from ca.rotator import Rotator
from ca.store import Database
from ca.sync import ChangeHub
from ca.upstream import SelfSignedUpstream
from spiffe_core.errors import UpstreamUnavailable
from spiffe_core.keys import KeyType, PrivateKey
from spiffe_core.spiffe_id import TrustDomain
from tests.support.clock import FakeClock

CA_TTL = timedelta(hours=1)
HINT = timedelta(minutes=1)


class FailingKeys(MemoryKeyManager):
    """Keys in memory until ``down``: then every new key fails, as a Vault that went away would."""

    down = False

    def generate(self, key_id: str, key_type: KeyType) -> PrivateKey:
        if self.down:
            raise UpstreamUnavailable("the key manager is down")
        return super().generate(key_id, key_type)


def rotator(database: Database, keys: MemoryKeyManager, clock: FakeClock) -> tuple[Rotator, CollectorRegistry]:
    params = AuthorityParams(TrustDomain("example.org"), KeyType.EC_P256, KeyType.EC_P256, CA_TTL, HINT)
    manager = AuthorityManager(database, keys, SelfSignedUpstream(), params, clock)
    manager.load()
    changes = AuthorityChanges(database=database, authorities=manager, hub=ChangeHub(), clock=clock)
    registry = CollectorRegistry()
    metrics = RotationMetrics(registry)
    return Rotator(changes, RotationParams(HINT, timedelta(minutes=10)), clock, metrics=metrics), registry


def value(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float | None:
    return registry.get_sample_value(name, labels or {})


def test_a_step_taken_is_counted_and_the_check_marked_good(database: Database) -> None:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    rotating, registry = rotator(database, MemoryKeyManager(), clock)
    rotating.tick()
    assert value(registry, "trustmesh_rotation_steps_total", {"step": "prepare", "kind": "x509"}) is None
    assert value(registry, "trustmesh_rotation_last_success_timestamp_seconds") == clock.now().timestamp()
    clock.advance(CA_TTL / 2)
    rotating.tick()
    assert value(registry, "trustmesh_rotation_steps_total", {"step": "prepare", "kind": "x509"}) == 1
    assert value(registry, "trustmesh_rotation_last_success_timestamp_seconds") == clock.now().timestamp()
    assert value(registry, "trustmesh_rotation_failures_total") == 0


def test_a_failed_check_is_counted_and_leaves_the_last_success_where_it_was(database: Database) -> None:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    keys = FailingKeys()
    rotating, registry = rotator(database, keys, clock)
    rotating.tick()
    good = clock.now().timestamp()
    keys.down = True
    clock.advance(CA_TTL / 2)
    for _ in range(2):
        with pytest.raises(UpstreamUnavailable):
            rotating.tick()
    assert value(registry, "trustmesh_rotation_failures_total") == 2
    assert value(registry, "trustmesh_rotation_last_success_timestamp_seconds") == good
