"""What rotation shows on ``/metrics`` (ca.rotator, ca.authority_ops, ca.metrics.RotationMetrics): each
step taken, by the schedule or by an officer, each failed check, and when the last check succeeded —
what the shipped "rotation failing" alert watches. A real datastore and a hand-moved clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from ca.authority_changes import AuthorityChanges
from ca.authority_manager import AuthorityManager, AuthorityParams
from ca.authority_ops import AuthorityOperations
from ca.keys.memory import MemoryKeyManager
from ca.metrics import RotationMetrics
from ca.rotation import RotationParams
from ca.rotator import Rotator
from ca.store import Database
from ca.store.records import Actor, AuthorityKind
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


ROTATION = RotationParams(HINT, timedelta(minutes=10))


def authority_changes(database: Database, keys: MemoryKeyManager, clock: FakeClock) -> AuthorityChanges:
    params = AuthorityParams(TrustDomain("example.org"), KeyType.EC_P256, KeyType.EC_P256, CA_TTL, HINT)
    manager = AuthorityManager(database, keys, SelfSignedUpstream(), params, clock)
    manager.load()
    return AuthorityChanges(database=database, authorities=manager, hub=ChangeHub(), clock=clock)


def rotator(database: Database, keys: MemoryKeyManager, clock: FakeClock) -> tuple[Rotator, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = RotationMetrics(registry)
    return Rotator(authority_changes(database, keys, clock), ROTATION, clock, metrics=metrics), registry


def value(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float | None:
    return registry.get_sample_value(name, labels or {})


def test_a_step_taken_is_counted_and_the_check_marked_good(database: Database) -> None:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    rotating, registry = rotator(database, MemoryKeyManager(), clock)
    rotating.tick()
    assert (
        value(registry, "trustmesh_rotation_steps_total", {"step": "prepare", "kind": "x509", "trigger": "schedule"})
        is None
    )
    assert value(registry, "trustmesh_rotation_last_success_timestamp_seconds") == clock.now().timestamp()
    clock.advance(CA_TTL / 2)
    rotating.tick()
    assert (
        value(registry, "trustmesh_rotation_steps_total", {"step": "prepare", "kind": "x509", "trigger": "schedule"})
        == 1
    )
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


def test_an_officers_rotation_steps_are_counted_as_the_officers_and_dry_runs_are_not(database: Database) -> None:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    registry = CollectorRegistry()
    changes = authority_changes(database, MemoryKeyManager(), clock)
    officer = AuthorityOperations(changes, ROTATION, clock, metrics=RotationMetrics(registry))
    olivia = Actor("oidc:idp#olivia", "oidc", "security-officer")

    officer.prepare(AuthorityKind.X509, olivia, dry_run=True)
    prepared = officer.prepare(AuthorityKind.X509, olivia)
    clock.advance(HINT * 3)  # the prepared authority has been published long enough
    officer.activate(prepared.changes[0].authority_id, olivia)
    officer.rotate_now(AuthorityKind.JWT, olivia)

    def steps(step: str, kind: str) -> float | None:
        return value(registry, "trustmesh_rotation_steps_total", {"step": step, "kind": kind, "trigger": "officer"})

    assert (steps("prepare", "x509"), steps("activate", "x509"), steps("rotate", "jwt")) == (1, 1, 1)
    assert (
        value(registry, "trustmesh_rotation_steps_total", {"step": "prepare", "kind": "x509", "trigger": "schedule"})
        is None
    )
