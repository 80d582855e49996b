"""Registration entries (DESIGN §3 "Registration entries"): the rules an entry must follow, who may
use it, and the use cases that store, change and remove entries.

An entry says: a workload whose selectors all match, running under the agent (or workload) named by
``parent_id``, may hold SVIDs for ``spiffe_id``. Agents get exactly the entries parented *directly* to
their own agent ID: a parent that is itself a workload's SPIFFE ID is stored and listed, but no agent
receives those entries through Sync (nested parenting is left out on purpose; see docs/entries.md).

Every mutation is audited in the same unit of work and announced to the Sync hub, so connected agents
learn about it at once.

An entry with ``admin: true`` makes its workload an admin of the CA over mTLS (``admin_api.admin_entry_role``,
docs/admin-api.md). You cannot grant what you do not hold: creating, changing or deleting such an entry
needs a caller who holds that role too (the admin API's edge says whether it does, ``may_manage_admin``);
a refusal is audited through the server's shared :class:`~ca.audit.AuditTrail`, so a caller who is refused
again and again is throttled into a summary like every other refusal (``[audit] refusals_per_minute``).
Which SPIFFE IDs hold an admin entry is cached (:mod:`ca.admin_entry_ids`): at once up to date after a
change made here, at most a second old after one made by another replica.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta

from ca.admin_entry_ids import AdminEntryIds
from ca.audit import AuditTrail, refusal_event
from ca.store.engine import Database
from ca.store.records import Actor, AuditEvent, EntrySpec, RegistrationEntry
from ca.store.repositories import AuditLogRepository, RegistrationEntryRepository
from ca.sync import Change, ChangeHub, announce
from spiffe_core.clock import Clock
from spiffe_core.errors import InvalidArgument, NotAuthorized
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain

# IDs under this path belong to the CA itself (its serving identity) and to attested agents; they are
# only ever issued by attestation, never through a registration entry, so no workload can hold an
# agent's identity and call the node API as that agent.
RESERVED_PATH = "/trustmesh"
AGENT_PATH = "/trustmesh/agent"
MAX_HINT_LENGTH = 1024
MAX_OWNER_LENGTH = 256
MAX_DNS_NAME_LENGTH = 253
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class EntryPolicy:
    """What the CA's configuration allows an entry to ask for."""

    trust_domain: TrustDomain
    max_x509_ttl: timedelta
    max_jwt_ttl: timedelta


def is_reserved(spiffe_id: SpiffeId) -> bool:
    return spiffe_id.path == RESERVED_PATH or spiffe_id.path.startswith(RESERVED_PATH + "/")


def is_agent_id(spiffe_id: SpiffeId, trust_domain: TrustDomain) -> bool:
    """True for ``spiffe://<td>/trustmesh/agent/<method>/<id>``: the IDs attestation gives agents."""
    return spiffe_id.is_member_of(trust_domain) and spiffe_id.path.startswith(AGENT_PATH + "/")


def check_dns_name(name: str) -> None:
    """A DNS SAN must be a lowercase host name (RFC 1123 labels), optionally with a leading ``*.``."""
    if not name:
        raise InvalidArgument("DNS name is empty; give a host name such as 'web.example.org'")
    if name != name.lower():
        raise InvalidArgument(f"DNS name {name!r} has uppercase letters; write it lowercase: {name.lower()!r}")
    if len(name) > MAX_DNS_NAME_LENGTH:
        raise InvalidArgument(f"DNS name {name!r} is {len(name)} characters; at most {MAX_DNS_NAME_LENGTH} allowed")
    labels = name.split(".")
    if labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]
    for label in labels:
        if not _DNS_LABEL.fullmatch(label):
            raise InvalidArgument(
                f"DNS name {name!r} has the label {label!r}; labels are 1-63 of a-z, 0-9 and '-', not starting "
                "or ending with '-' (a wildcard is allowed only as a whole leftmost label before two more)"
            )


def check_operator_svid(spiffe_id: SpiffeId, dns_names: Iterable[str] = ()) -> None:
    """The rules ``entry create`` applies to an entry's SPIFFE ID and DNS names, for the SVIDs an
    operator mints directly (``x509 mint``, ``jwt mint``): nothing under the reserved ``/trustmesh``
    path, valid DNS names. The CA's serving SVID and agents' SVIDs are issued by the CA itself and never
    pass here. Raises :class:`InvalidArgument` naming the rule."""
    if is_reserved(spiffe_id):
        raise InvalidArgument(
            f"SPIFFE ID {spiffe_id} is under the reserved path {RESERVED_PATH}/ (the CA's and agents' own "
            "identities, issued only by attestation); choose another path"
        )
    for name in dns_names:
        check_dns_name(name)


def _check_ttl(ttl: timedelta | None, maximum: timedelta, what: str) -> None:
    if ttl is None:
        return
    seconds = ttl.total_seconds()
    if seconds <= 0 or seconds != int(seconds):
        raise InvalidArgument(f"{what} TTL must be a positive whole number of seconds, got {seconds:g}s")
    if ttl > maximum:
        raise InvalidArgument(
            f"{what} TTL {int(seconds)}s is over the CA's maximum of {int(maximum.total_seconds())}s; "
            "ask for less or raise the configured max_ttl"
        )


def check_entry_spec(spec: EntrySpec, policy: EntryPolicy) -> None:
    """Raise :class:`InvalidArgument` naming the first rule ``spec`` breaks.

    The SPIFFE ID is a workload's ID in this trust domain, outside the reserved ``/trustmesh`` path;
    the parent is an agent ID or another workload's ID of this trust domain; at least one selector;
    valid DNS names; TTLs positive and within the configured maxima; federated trust domains other
    than our own; a hint of at most 1024 characters; an owner of at most 256 printable characters on
    one line."""
    td = policy.trust_domain
    if not spec.spiffe_id.is_member_of(td):
        raise InvalidArgument(f"SPIFFE ID {spec.spiffe_id} is not in trust domain {td}; this CA issues only {td} IDs")
    if spec.spiffe_id.is_trust_domain_id:
        raise InvalidArgument(f"SPIFFE ID {spec.spiffe_id} has no path; a workload's ID needs one, e.g. {td.id}/web")
    if is_reserved(spec.spiffe_id):
        raise InvalidArgument(
            f"SPIFFE ID {spec.spiffe_id} is under the reserved path {RESERVED_PATH}/ (the CA's and agents' own "
            "identities, issued only by attestation); choose another path"
        )
    if not spec.parent_id.is_member_of(td):
        raise InvalidArgument(
            f"parent ID {spec.parent_id} is not in trust domain {td}; parents are agents or workloads of {td}"
        )
    if is_reserved(spec.parent_id) and not is_agent_id(spec.parent_id, td):
        raise InvalidArgument(
            f"parent ID {spec.parent_id} is reserved but not an agent ID; use an agent's ID "
            f"({td.id}{AGENT_PATH}/<method>/<id>) or a workload's ID"
        )
    if spec.parent_id.is_trust_domain_id:
        raise InvalidArgument(f"parent ID {spec.parent_id} has no path; name an agent or a workload")
    if spec.parent_id == spec.spiffe_id:
        raise InvalidArgument(f"entry for {spec.spiffe_id} names itself as its parent; name its agent instead")
    if not spec.selectors:
        raise InvalidArgument(
            f"entry for {spec.spiffe_id} has no selectors; it needs at least one 'type:value', e.g. unix:uid:1000"
        )
    for selector in spec.selectors:
        Selector.parse(str(selector))  # selectors built in code get the same check as parsed ones
    for name in spec.dns_names:
        check_dns_name(name)
    if len(set(spec.dns_names)) != len(spec.dns_names):
        raise InvalidArgument(f"entry for {spec.spiffe_id} lists a DNS name twice: {', '.join(spec.dns_names)}")
    _check_ttl(spec.x509_ttl, policy.max_x509_ttl, "X509-SVID")
    _check_ttl(spec.jwt_ttl, policy.max_jwt_ttl, "JWT-SVID")
    if td in spec.federates_with:
        raise InvalidArgument(
            f"entry federates with its own trust domain {td}; list only other trust domains (the own bundle "
            "is always sent)"
        )
    if len(spec.hint) > MAX_HINT_LENGTH:
        raise InvalidArgument(f"hint is {len(spec.hint)} characters; at most {MAX_HINT_LENGTH} allowed")
    if len(spec.owner) > MAX_OWNER_LENGTH:
        raise InvalidArgument(
            f"owner is {len(spec.owner)} characters; at most {MAX_OWNER_LENGTH} allowed (a team, an address or "
            "a pager alias)"
        )
    if not spec.owner.isprintable():
        raise InvalidArgument(
            "owner has a line break or another control character; write one line, e.g. 'payments-oncall@example.org'"
        )


def not_parented(entry_id: str, agent_id: SpiffeId) -> NotAuthorized:
    """The one refusal for an entry an agent may not use, whether it exists or not (entry IDs of
    other agents are nobody else's business)."""
    return NotAuthorized(f"entry {entry_id} is not parented to {agent_id}")


def authorize(entry_id: str, entitled: Mapping[str, RegistrationEntry], agent_id: SpiffeId) -> RegistrationEntry:
    """The entry ``agent_id`` asks for, from the entries parented to it (``entitled``, by ID).

    DESIGN §3: an agent can obtain only SVIDs of entries parented to it. Raises :class:`NotAuthorized`."""
    entry = entitled.get(entry_id)
    if entry is None or entry.spec.parent_id != agent_id:
        raise not_parented(entry_id, agent_id)
    return entry


def entitled_by_id(entries: Iterable[RegistrationEntry]) -> dict[str, RegistrationEntry]:
    return {entry.id: entry for entry in entries}


class RegistrationEntries:
    """The registration entry use cases; each call is one unit of work. ``monotonic`` paces the cache
    of admin entries' SPIFFE IDs (:mod:`ca.admin_entry_ids`)."""

    def __init__(
        self,
        database: Database,
        hub: ChangeHub,
        policy: EntryPolicy,
        clock: Clock,
        *,
        audit: AuditTrail | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._database = database
        self._hub = hub
        self._policy = policy
        self._clock = clock
        self._audit = audit or AuditTrail(database)
        self._admin_ids = AdminEntryIds(self._load_admin_ids, monotonic=monotonic)

    @property
    def policy(self) -> EntryPolicy:
        return self._policy

    def create(self, spec: EntrySpec, actor: Actor, *, may_manage_admin: bool = True) -> RegistrationEntry:
        """Validate and store a new entry. Raises InvalidArgument, AlreadyExists (a duplicate) or
        NotAuthorized (an admin entry, and not ``may_manage_admin``: see the module docstring)."""
        check_entry_spec(spec, self._policy)
        if spec.admin and not may_manage_admin:
            raise self._refuse_admin_change(actor, "entry.create", str(spec.spiffe_id))
        now = self._clock.now()
        with self._database.transaction() as session:
            entry = RegistrationEntryRepository(session).add(spec, now)
            AuditLogRepository(session).append(
                AuditEvent(now, actor, "entry.create", entry.id, "ok", _audit_detail(spec))
            )
            announce(session, self._hub, Change.for_agents(spec.parent_id))
        self._admin_ids.invalidate()
        return entry

    def update(
        self,
        entry_id: str,
        spec: EntrySpec,
        actor: Actor,
        expected_revision: int | None = None,
        *,
        may_manage_admin: bool = True,
    ) -> RegistrationEntry:
        """Replace an entry's spec. With ``expected_revision``, refuse (FailedPrecondition) if someone
        changed it since it was read. A spec equal to the stored one changes nothing: the entry is
        returned as it is (same revision, no audit event, no push to agents, which would otherwise
        re-sign its SVIDs). Raises InvalidArgument, NotFound, AlreadyExists, or NotAuthorized (the entry
        is or would become an admin entry, and not ``may_manage_admin``)."""
        check_entry_spec(spec, self._policy)
        now = self._clock.now()
        try:
            with self._database.transaction() as session:
                repository = RegistrationEntryRepository(session)
                current = repository.get(entry_id)
                if (current.spec.admin or spec.admin) and not may_manage_admin:
                    raise _AdminEntryRefused
                if current.spec == spec and expected_revision in (None, current.revision):
                    return current
                old_parent = current.spec.parent_id
                entry = repository.update(entry_id, spec, now, expected_revision)
                AuditLogRepository(session).append(
                    AuditEvent(
                        now, actor, "entry.update", entry_id, "ok", {**_audit_detail(spec), "revision": entry.revision}
                    )
                )
                announce(session, self._hub, Change.for_agents(old_parent, spec.parent_id))
        except _AdminEntryRefused:
            raise self._refuse_admin_change(actor, "entry.update", entry_id) from None
        self._admin_ids.invalidate()
        return entry

    def delete(self, entry_id: str, actor: Actor, *, may_manage_admin: bool = True) -> RegistrationEntry:
        """Remove an entry and return what it was. Raises NotFound, or NotAuthorized (an admin entry,
        and not ``may_manage_admin``)."""
        now = self._clock.now()
        try:
            with self._database.transaction() as session:
                repository = RegistrationEntryRepository(session)
                entry = repository.get(entry_id)
                if entry.spec.admin and not may_manage_admin:
                    raise _AdminEntryRefused
                repository.delete(entry_id)
                AuditLogRepository(session).append(
                    AuditEvent(now, actor, "entry.delete", entry_id, "ok", _audit_detail(entry.spec))
                )
                announce(session, self._hub, Change.for_agents(entry.spec.parent_id))
        except _AdminEntryRefused:
            raise self._refuse_admin_change(actor, "entry.delete", entry_id) from None
        self._admin_ids.invalidate()
        return entry

    def has_admin_entry(self, spiffe_id: SpiffeId) -> bool:
        """Whether an entry with ``admin: true`` names ``spiffe_id`` (an mTLS admin, docs/admin-api.md);
        answered from the cache of :mod:`ca.admin_entry_ids` (the module docstring gives the bound)."""
        return spiffe_id in self._admin_ids

    def _load_admin_ids(self) -> frozenset[SpiffeId]:
        with self._database.transaction() as session:
            return RegistrationEntryRepository(session).admin_spiffe_ids()

    def _refuse_admin_change(self, actor: Actor, action: str, target: str) -> NotAuthorized:
        """Audit the refusal (throttled per caller) in a unit of work of its own (the change's own rolled
        back) and return it."""
        err = NotAuthorized(
            f"{target} is an admin entry (admin: true); only a caller holding the role admin entries confer "
            "(admin_api.admin_entry_role) may create, change or delete one: you cannot grant what you do not hold"
        )
        self._audit.record_refusal(refusal_event(self._clock.now(), actor, action, target, err))
        return err

    def get(self, entry_id: str) -> RegistrationEntry:
        with self._database.transaction() as session:
            return RegistrationEntryRepository(session).get(entry_id)

    def list(
        self, parent_id: SpiffeId | None = None, spiffe_id: SpiffeId | None = None
    ) -> tuple[RegistrationEntry, ...]:
        with self._database.transaction() as session:
            return RegistrationEntryRepository(session).list(parent_id=parent_id, spiffe_id=spiffe_id)


class _AdminEntryRefused(Exception):
    """Raised inside a unit of work to roll it back before the refusal is audited in its own."""


def _audit_detail(spec: EntrySpec) -> dict[str, str | list[str] | bool]:
    return {
        "spiffe_id": str(spec.spiffe_id),
        "parent_id": str(spec.parent_id),
        "selectors": sorted(str(s) for s in spec.selectors),
        "admin": spec.admin,
    }
