"""When authorities move, as pure functions of (stored authorities, now) (DESIGN §3 "Authorities").

For each kind (X.509 CA, JWT key) independently:

* **prepare** the next authority at 1/2 of the active one's life; it is published in the bundle at once;
* **activate** it at 5/6, but never before it has been published for :data:`PUBLISH_HINTS` bundle refresh
  hints, so every relying party that follows the hint (a federated partner included, which may miss one
  fetch) holds the new key before anything it signed reaches them; the
  previous active authority is **retired** in the same step and stays in the bundle;
* **prune** a retired, tainted or revoked authority once everything it signed has expired (and at
  least one refresh hint after it stopped signing) — a revoked X.509 CA not before its own certificate
  expires, since an upstream root's CRL lists it only while it is kept — and a prepared one that
  expired unused;
* **recover** when nothing usable is active (the active one expired: the CA was down across its
  whole rotation window): activate a prepared one if there is one, else mint and activate at once.

:mod:`ca.authority_ops` applies the steps; keeping the arithmetic here makes every threshold a one-line
test.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from ca.authority import AuthorityState
from ca.store.records import AuthorityKind, AuthorityRecord

PREPARE_AT = 1 / 2
ACTIVATE_AT = 5 / 6
# Refresh hints a prepared authority is published before it may sign: one fetch a partner misses (its
# endpoint call failed, its clock ran late) must not leave it without the key.
PUBLISH_HINTS = 2


class StepKind(enum.StrEnum):
    PREPARE = "prepare"
    ACTIVATE = "activate"
    RECOVER = "recover"
    PRUNE = "prune"


@dataclass(frozen=True, slots=True)
class Step:
    kind: StepKind
    authority_kind: AuthorityKind
    authority_id: str | None  # None for PREPARE and RECOVER: the authority does not exist yet
    why: str


@dataclass(frozen=True, slots=True)
class RotationParams:
    refresh_hint: timedelta
    # JWT-SVIDs are not recorded; one signed by a key is valid at most this long after the key stopped signing.
    jwt_max_ttl: timedelta


def _life_point(record: AuthorityRecord, fraction: float) -> datetime:
    """A point of an authority's life, counted from its creation: its notBefore is backdated (clock
    skew), which must not move the thresholds of a short-lived CA."""
    start = max(record.not_before, min(record.created_at, record.not_after))
    return start + (record.not_after - start) * fraction


def prepare_at(active: AuthorityRecord) -> datetime:
    return _life_point(active, PREPARE_AT)


def activate_at(active: AuthorityRecord) -> datetime:
    return _life_point(active, ACTIVATE_AT)


def published_enough_at(prepared: AuthorityRecord, params: RotationParams) -> datetime:
    """When a prepared authority has been in the bundle for :data:`PUBLISH_HINTS` refresh hints."""
    return prepared.created_at + params.refresh_hint * PUBLISH_HINTS


def stopped_signing_at(record: AuthorityRecord) -> datetime | None:
    """When the authority stopped signing (retired, tainted or revoked), None while it may still sign."""
    stamps = [t for t in (record.retired_at, record.tainted_at, record.revoked_at) if t is not None]
    return min(stamps) if stamps else None


def prune_at(record: AuthorityRecord, signed_until: datetime | None, params: RotationParams) -> datetime | None:
    """When a no-longer-signing authority may leave the datastore (and the bundle): after the last SVID
    it signed expired, and not before one refresh hint after it stopped signing. None while it signs."""
    if record.state is AuthorityState.PREPARED:
        return record.not_after  # never used: gone when it could no longer be used anyway
    stopped = stopped_signing_at(record)
    if stopped is None or record.state is AuthorityState.ACTIVE:
        return None
    if record.kind is AuthorityKind.JWT:
        signed_until = min(record.not_after, stopped + params.jwt_max_ttl)
    last = max(t for t in (signed_until, stopped + params.refresh_hint) if t is not None)
    if record.kind is AuthorityKind.X509 and record.state is AuthorityState.REVOKED:
        # A revoked CA under an upstream root is listed on that root's CRL only while its record exists;
        # pruned earlier, its still-valid certificate would be accepted again by anyone trusting the root.
        return max(last, record.not_after)
    return min(last, max(record.not_after, stopped + params.refresh_hint))


def _active(records: Sequence[AuthorityRecord], kind: AuthorityKind) -> AuthorityRecord | None:
    active = [r for r in records if r.kind is kind and r.state is AuthorityState.ACTIVE]
    return max(active, key=lambda r: r.created_at) if active else None


def _prepared(records: Sequence[AuthorityRecord], kind: AuthorityKind, now: datetime) -> AuthorityRecord | None:
    prepared = [r for r in records if r.kind is kind and r.state is AuthorityState.PREPARED and r.not_after > now]
    return max(prepared, key=lambda r: r.created_at) if prepared else None


def plan_rotation(
    records: Sequence[AuthorityRecord],
    signed_until: Mapping[str, datetime | None],
    now: datetime,
    params: RotationParams,
) -> tuple[Step, ...]:
    """The steps due at ``now``. ``signed_until`` maps X.509 authority IDs to the latest expiry of the
    SVIDs each signed (None when it signed nothing)."""
    steps: list[Step] = []
    for kind in AuthorityKind:
        active = _active(records, kind)
        prepared = _prepared(records, kind, now)
        if active is None or now >= active.not_after:
            if prepared is not None:
                steps.append(Step(StepKind.ACTIVATE, kind, prepared.id, "no usable active authority"))
            else:
                steps.append(Step(StepKind.RECOVER, kind, None, "no usable active authority and none prepared"))
        elif prepared is None:
            if now >= prepare_at(active):
                steps.append(Step(StepKind.PREPARE, kind, None, f"active {active.id} is past half of its life"))
        elif now >= activate_at(active) and now >= published_enough_at(prepared, params):
            steps.append(Step(StepKind.ACTIVATE, kind, prepared.id, f"active {active.id} is past 5/6 of its life"))
        for record in records:
            if record.kind is not kind or record is prepared:
                continue
            when = prune_at(record, signed_until.get(record.id), params)
            if when is not None and now >= when:
                steps.append(Step(StepKind.PRUNE, kind, record.id, "nothing it signed is alive"))
    return tuple(steps)


def next_check(
    records: Sequence[AuthorityRecord],
    signed_until: Mapping[str, datetime | None],
    now: datetime,
    params: RotationParams,
) -> datetime | None:
    """The earliest moment after ``now`` at which :func:`plan_rotation` may answer differently."""
    moments: list[datetime] = []
    for kind in AuthorityKind:
        active = _active(records, kind)
        prepared = _prepared(records, kind, now)
        if active is not None:
            moments += [prepare_at(active), activate_at(active), active.not_after]
        if prepared is not None:
            moments += [published_enough_at(prepared, params), prepared.not_after]
    for record in records:
        when = prune_at(record, signed_until.get(record.id), params)
        if when is not None:
            moments.append(when)
    future = [m for m in moments if m > now]
    return min(future) if future else None
