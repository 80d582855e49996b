"""The audit trail's use cases: what the CA records about itself, and how (issue 8, DESIGN §3).

A change and its audit record commit together: the domain services append in their own transaction,
including issuance (:class:`Issuance` says who asked; one record per batch). What has no transaction of
its own — a refused request, a failed attempt, a dry run — is recorded here in one. Refusals go through
a :class:`~ca.audit_throttle.RefusalThrottle`, so a caller who is refused again and again writes a
bounded number of records and then one summary a checkpoint interval.

A record never holds a token, a key or a CSR: only identities, serials, expiries and counts. Lists in
details are cut at :data:`MAX_LISTED` items with the number left out beside them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ca.audit_throttle import RefusalThrottle, Suppressed
from ca.issuance import IssuedX509Svid
from ca.store.engine import Database
from ca.store.records import Actor, AuditEvent, AuditRecord, JsonValue
from ca.store.repositories import AuditLogRepository
from spiffe_core.errors import FailedPrecondition, NotAuthenticated, NotAuthorized, ResourceExhausted, TrustmeshError
from spiffe_core.spiffe_id import SpiffeId

log = logging.getLogger(__name__)

# How many items of a list (SPIFFE IDs of a batch, revoked serials) a record names.
MAX_LISTED = 20
OK, DENIED, FAILED = "ok", "denied", "failed"
# Who the audit log names for what the CA does on its own.
ROTATOR = Actor("system:rotator", "system")
SERVER_IDENTITY = Actor("system:server-identity", "system")
AUDIT_TASK = Actor("system:audit", "system")
_DENIALS = (NotAuthorized, NotAuthenticated, FailedPrecondition, ResourceExhausted)


def outcome_of(err: BaseException) -> str:
    """``denied`` for a refusal (authentication, authorization, a guard rail, a rate limit), else ``failed``."""
    return DENIED if isinstance(err, _DENIALS) else FAILED


def reason_of(err: BaseException) -> str:
    """The one-line reason a record gives for ``err``: our own message, never a foreign exception's
    text (which may carry paths or driver detail)."""
    if isinstance(err, TrustmeshError):
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    return "internal error; see the CA's log"


def listed(key: str, values: Sequence[str]) -> dict[str, JsonValue]:
    """``{key: the first MAX_LISTED values}``, plus ``{key_omitted: how many more}`` when there are more."""
    shown: dict[str, JsonValue] = {key: list(values[:MAX_LISTED])}
    if len(values) > MAX_LISTED:
        shown[f"{key}_omitted"] = len(values) - MAX_LISTED
    return shown


@dataclass(frozen=True, slots=True)
class Issuance:
    """Who asks for SVIDs, and what the audit record of the issuance is called.

    ``target`` defaults to the SPIFFE ID issued (for a batch of several: how many); ``detail`` is added
    to what the record says about the SVIDs themselves. ``agent`` is the agent the SVIDs are issued
    through (the inventory lists SVIDs by agent); None for SVIDs an officer mints."""

    actor: Actor
    action: str = "x509_svid.issue"
    target: str | None = None
    detail: Mapping[str, JsonValue] = field(default_factory=dict)
    agent: SpiffeId | None = None


def x509_issuance_event(issuance: Issuance, issued: Sequence[IssuedX509Svid], now: datetime) -> AuditEvent:
    """The one record of a batch of X509-SVIDs: serial and expiry of a single one; for a batch the
    count, the SPIFFE IDs and serials (bounded), the latest expiry; always the signing authority."""
    ids = [str(svid.spiffe_id) for svid in issued]
    detail: dict[str, JsonValue] = {"authority_id": issued[0].authority_id, "count": len(issued)}
    if len(issued) == 1:
        detail |= {"serial": format(issued[0].serial, "x"), "expires_at": issued[0].not_after.isoformat()}
    else:
        detail |= listed("spiffe_ids", ids) | listed("serials", [format(svid.serial, "x") for svid in issued])
        detail["expires_at"] = max(svid.not_after for svid in issued).isoformat()
    target = issuance.target
    if target is None:
        target = ids[0] if len(set(ids)) == 1 else f"{len(issued)} X509-SVIDs"
    return AuditEvent(now, issuance.actor, issuance.action, target, OK, {**detail, **issuance.detail})


def jwt_issuance_event(
    actor: Actor, spiffe_id: str, *, audience: Sequence[str], key_id: str, expires_at: datetime, now: datetime
) -> AuditEvent:
    """The record of one JWT-SVID: for whom, which audiences, which key, until when (never the token)."""
    detail: dict[str, JsonValue] = {"key_id": key_id, "expires_at": expires_at.isoformat()}
    return AuditEvent(now, actor, "jwt_svid.issue", spiffe_id, OK, detail | listed("audience", list(audience)))


def refusal_event(
    at: datetime,
    actor: Actor,
    action: str,
    target: str,
    err: BaseException,
    *,
    detail: Mapping[str, JsonValue] | None = None,
) -> AuditEvent:
    """The record of an attempt that ``err`` refused or failed."""
    return AuditEvent(at, actor, action, target, outcome_of(err), dict(detail or {}), reason_of(err))


class AuditTrail:
    """Records events that have no transaction of their own."""

    def __init__(self, database: Database, throttle: RefusalThrottle | None = None) -> None:
        self._database = database
        self._throttle = throttle or RefusalThrottle()

    def record(self, event: AuditEvent) -> AuditRecord:
        """Append ``event`` in a unit of work of its own; raises what the datastore raises."""
        with self._database.transaction() as session:
            return AuditLogRepository(session).append(event)

    def record_refusal(self, event: AuditEvent) -> None:
        """Record a refused or failed attempt, unless its source is over the throttle (then it is counted
        for a summary). Never raises: the caller is answering the refusal anyway, and a datastore that
        is down (often why the attempt failed) must not turn it into another error; it is logged."""
        if not self._throttle.admit(event):
            return
        try:
            self.record(event)
        except TrustmeshError as err:
            log.warning("could not audit a refused %s by %s: %s", event.action, event.actor.name, err)

    def flush_suppressed(self, now: datetime) -> int:
        """Write one summary record per source whose refusals were counted instead of recorded; returns
        how many were written. Raises what the datastore raises (the counts are then lost: logged)."""
        drained = self._throttle.drain()
        if not drained:
            return 0
        try:
            with self._database.transaction() as session:
                repository = AuditLogRepository(session)
                for tally in drained:
                    repository.append(_summary(tally, now))
        except TrustmeshError:
            log.warning("lost the counts of %d sources' suppressed refusals", len(drained))
            raise
        return len(drained)


def _summary(tally: Suppressed, now: datetime) -> AuditEvent:
    return AuditEvent(
        now,
        AUDIT_TASK,
        "audit.suppressed",
        tally.source,
        DENIED,
        {
            "count": tally.count,
            "actions": dict(tally.by_action),
            "first_at": tally.first_at.isoformat(),
            "last_at": tally.last_at.isoformat(),
        },
        f"{tally.count} more refusals from {tally.source} were counted, not recorded one by one "
        "(over the audit log's rate for refusals)",
    )
