"""Legacy identity mapping rules as the CA keeps them (DESIGN §5; the rules themselves are
:mod:`bridge.mapping`): add, delete, list, and load a whole GitOps file at once.

Every change is checked against the rules already stored — a rule that overlaps another is refused
with the reason — and audited with the caller as actor. ``load`` replaces every rule in one
transaction and is refused as a whole if any rule is bad, so a broken file changes nothing.

Checking against the stored rules and writing happen under one lock: two operators adding rules
that overlap each other at the same moment cannot both succeed. One CA process serves a datastore
(``ca.server`` refuses a second), so a process lock is enough.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from bridge.mapping import LegacyIdentity, MappedIdentity, MappingRule, check_rule_set, map_identity
from ca.store.engine import Database
from ca.store.records import Actor, AuditEvent, StoredMapping
from ca.store.repositories import AuditLogRepository, IdentityMappingRepository
from spiffe_core.clock import Clock
from spiffe_core.spiffe_id import TrustDomain


class IdentityMappings:
    def __init__(self, database: Database, trust_domain: TrustDomain, clock: Clock) -> None:
        self._database = database
        self._trust_domain = trust_domain
        self._clock = clock
        self._lock = threading.Lock()

    @property
    def trust_domain(self) -> TrustDomain:
        return self._trust_domain

    def list(self) -> tuple[StoredMapping, ...]:
        with self._database.transaction() as session:
            return IdentityMappingRepository(session).list()

    def get(self, name: str) -> StoredMapping:
        with self._database.transaction() as session:
            return IdentityMappingRepository(session).get(name)

    def rules(self) -> tuple[MappingRule, ...]:
        return tuple(stored.rule for stored in self.list())

    def map(self, identity: LegacyIdentity) -> MappedIdentity:
        """The SPIFFE ID (and kept SANs/CN) the stored rules give ``identity``; NotAuthorized why not."""
        return map_identity(identity, self.rules(), self._trust_domain)

    def add(self, rule: MappingRule, actor: Actor) -> StoredMapping:
        """Store ``rule``; InvalidArgument if it is bad or overlaps a stored rule, AlreadyExists for its name."""
        with self._lock, self._database.transaction() as session:
            repository = IdentityMappingRepository(session)
            existing = [stored.rule for stored in repository.list() if stored.rule.name != rule.name]
            check_rule_set([*existing, rule], self._trust_domain)
            now = self._clock.now()
            stored = repository.add(rule, now)
            AuditLogRepository(session).append(AuditEvent(now, actor, "mapping.add", rule.name, "ok", rule.to_dict()))
            return stored

    def delete(self, name: str, actor: Actor) -> StoredMapping:
        with self._lock, self._database.transaction() as session:
            stored = IdentityMappingRepository(session).delete(name)
            now = self._clock.now()
            AuditLogRepository(session).append(
                AuditEvent(now, actor, "mapping.delete", name, "ok", stored.rule.to_dict())
            )
            return stored

    def load(self, rules: Sequence[MappingRule], actor: Actor) -> tuple[StoredMapping, ...]:
        """Replace every stored rule with ``rules``, or nothing at all when one of them is bad."""
        check_rule_set(rules, self._trust_domain)
        with self._lock, self._database.transaction() as session:
            repository = IdentityMappingRepository(session)
            removed = repository.delete_all()
            now = self._clock.now()
            stored = tuple(repository.add(rule, now) for rule in rules)
            AuditLogRepository(session).append(
                AuditEvent(
                    now,
                    actor,
                    "mapping.load",
                    "identity_mappings",
                    "ok",
                    {"removed": removed, "rules": [rule.name for rule in rules]},
                )
            )
            return stored
