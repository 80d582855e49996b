"""The agent's decisions, as pure functions of (state, what it holds, now): which X509-SVIDs to sign,
when to rotate them (its own included), and what snapshot to publish (DESIGN §4 "Rotation at 1/2 of
each SVID's life with jitter; immediate re-issue on taint/revocation").

:mod:`sds.manager` does the I/O around these; keeping them pure makes each rule a one-line test.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509

from sds.cache import CacheSnapshot, WorkloadSvid
from sds.node_client import EntryRecord, SyncState
from spiffe_core.errors import X509SvidError
from spiffe_core.keys import PrivateKey
from spiffe_core.spiffe_id import SpiffeId
from spiffe_core.x509_svid import verify_x509_svid

# The agent's reconnect and retry backoff (spiffe_core.backoff.backoff_delay): from about half a second,
# doubling, to at most 30 s.
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class HeldSvid:
    """A workload X509-SVID the agent holds: the entry (and its revision) it was signed for, the key
    generated on this host, and when to replace it (fixed when it was signed, jitter included)."""

    entry_id: str
    revision: int
    spiffe_id: SpiffeId
    cert_chain: tuple[x509.Certificate, ...]
    private_key: PrivateKey = field(repr=False, compare=False)
    rotate_at: datetime

    @property
    def not_after(self) -> datetime:
        return self.cert_chain[0].not_valid_after_utc

    @property
    def serial(self) -> int:
        return self.cert_chain[0].serial_number

    @property
    def signer_ids(self) -> frozenset[str]:
        return signer_ids(self.cert_chain)


def signer_ids(cert_chain: tuple[x509.Certificate, ...]) -> frozenset[str]:
    """IDs of every authority that signed a certificate of the chain (their authority key identifiers,
    hex), as the CA names authorities in ``tainted_authority_ids``."""
    ids: set[str] = set()
    for cert in cert_chain:
        try:
            aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        except x509.ExtensionNotFound:
            continue
        if aki.key_identifier is not None:
            ids.add(aki.key_identifier.hex())
    return frozenset(ids)


# When the agent signs anyway, an SVID whose own rotation is at most this share of its life away goes
# along in the same call. Jitter spreads an agent's rotations over minutes, so each would otherwise be a
# call of its own, and a lone SVID costs the CA three to five times the CPU of one in a batch
# (docs/performance.md); an SVID taken along is renewed at most this share of its life early.
RIDE_ALONG_FRACTION = 0.1


class SignReason(enum.StrEnum):
    NEW = "no SVID yet"
    ENTRY_CHANGED = "registration entry changed"
    REVOKED = "SVID revoked"
    TAINTED = "signing authority tainted"
    ROTATION_DUE = "rotation due"
    UNTRUSTED = "SVID no longer chains to the bundle"
    ROTATION_NEAR = "rotation near, signed along"


@dataclass(frozen=True, slots=True)
class SigningPlan:
    """Entries to get a new SVID for (with why), and entry IDs whose SVIDs to forget (entry removed)."""

    to_sign: tuple[tuple[EntryRecord, SignReason], ...] = ()
    to_drop: frozenset[str] = frozenset()


def received_life_start(not_before: datetime, not_after: datetime, received_at: datetime) -> datetime:
    """Where the life of an SVID that just arrived from the CA starts for rotation: its notBefore, but
    never earlier than its arrival. The CA backdates notBefore for clock skew; with short TTLs that
    backdate alone would put the half-life point in the past and renew at once, over and over."""
    return min(max(not_before, received_at), not_after)


def next_rotation(
    now: datetime,
    not_before: datetime,
    not_after: datetime,
    *,
    fraction: float,
    jitter: float,
    rng: random.Random,
) -> datetime:
    """When to replace an SVID valid from ``not_before`` to ``not_after``: at ``fraction`` of its life,
    moved by a random share of up to ±``jitter`` of that point; never before ``now`` nor after expiry."""
    life = not_after - not_before
    point = fraction * (1 + rng.uniform(-jitter, jitter))
    return max(now, min(not_before + life * point, not_after))


def _reason(entry: EntryRecord, held: HeldSvid | None, state: SyncState, now: datetime) -> SignReason | None:
    if held is None:
        return SignReason.NEW
    if held.revision != entry.revision or held.spiffe_id != entry.spiffe_id:
        return SignReason.ENTRY_CHANGED
    if held.serial in state.revoked_serials:
        return SignReason.REVOKED
    if held.signer_ids & state.tainted_authority_ids:
        return SignReason.TAINTED
    if now >= held.rotate_at or now >= held.not_after:
        return SignReason.ROTATION_DUE
    try:
        verify_x509_svid(held.cert_chain, state.bundle, now)
    except X509SvidError:
        return SignReason.UNTRUSTED
    return None


def own_svid_reason(cert_chain: tuple[x509.Certificate, ...], state: SyncState, now: datetime) -> SignReason | None:
    """Why the agent's own X509-SVID must be renewed at once under ``state`` — its serial is revoked, an
    authority on its chain is tainted, or the bundle no longer verifies it — or None. Rotation at half
    life and expiry are not judged here (:class:`sds.agent_svid.AgentIdentity` schedules those)."""
    if cert_chain[0].serial_number in state.revoked_serials:
        return SignReason.REVOKED
    if signer_ids(cert_chain) & state.tainted_authority_ids:
        return SignReason.TAINTED
    if now < cert_chain[0].not_valid_after_utc:
        try:
            verify_x509_svid(cert_chain, state.bundle, now)
        except X509SvidError:
            return SignReason.UNTRUSTED
    return None


def plan_signing(state: SyncState, held: Mapping[str, HeldSvid], now: datetime) -> SigningPlan:
    """What to sign for ``state`` given the SVIDs ``held`` (by entry ID) at ``now``: every entry without
    an SVID, or whose SVID was signed for an older revision of the entry, is revoked, was signed by a
    tainted authority, is due for rotation, or no longer chains to the bundle — and, when there is any
    such entry, those whose rotation is near (:data:`RIDE_ALONG_FRACTION`), so they share its call.
    SVIDs of entries that are gone are dropped. Each entry is named once, in the CA's order."""
    planned: dict[str, tuple[EntryRecord, SignReason | None]] = {}
    for entry in state.entries:
        if entry.id not in planned:
            planned[entry.id] = (entry, _reason(entry, held.get(entry.id), state, now))
    if any(reason is not None for _, reason in planned.values()):
        for entry_id, (entry, reason) in planned.items():
            current = held.get(entry_id)
            if reason is None and current is not None and _rotation_near(current, now):
                planned[entry_id] = (entry, SignReason.ROTATION_NEAR)
    to_sign = tuple((entry, reason) for entry, reason in planned.values() if reason is not None)
    return SigningPlan(to_sign, frozenset(held) - frozenset(planned))


def _rotation_near(held: HeldSvid, now: datetime) -> bool:
    life = held.not_after - held.cert_chain[0].not_valid_before_utc
    return held.rotate_at - now <= life * RIDE_ALONG_FRACTION


def servable(held: HeldSvid, entry: EntryRecord, state: SyncState, now: datetime) -> bool:
    """Whether to hand ``held`` out for ``entry`` while waiting for a replacement: not for another
    SPIFFE ID, not revoked, not expired. (An SVID of a tainted authority keeps serving until its
    replacement arrives: peers still accept it, and nothing better is at hand.)"""
    return held.spiffe_id == entry.spiffe_id and held.serial not in state.revoked_serials and now < held.not_after


def build_snapshot(state: SyncState, held: Mapping[str, HeldSvid], now: datetime, version: int) -> CacheSnapshot:
    """The snapshot for ``state``: one SVID per entry that has a servable one, in the CA's entry order
    (so the first is the "default" SVID), the own bundle, the federated bundles, the CRLs and the
    legacy roots."""
    svids: list[WorkloadSvid] = []
    seen: set[str] = set()
    for entry in state.entries:
        current = held.get(entry.id)
        if entry.id in seen or current is None or not servable(current, entry, state, now):
            continue
        seen.add(entry.id)
        svids.append(
            WorkloadSvid(
                entry_id=entry.id,
                spiffe_id=entry.spiffe_id,
                cert_chain=current.cert_chain,
                private_key=current.private_key,
                selectors=entry.selectors,
                federates_with=entry.federates_with,
                hint=entry.hint,
            )
        )
    return CacheSnapshot(
        trust_domain=state.bundle.trust_domain,
        bundle=state.bundle,
        federated_bundles=dict(state.federated_bundles),
        svids=tuple(svids),
        crls=state.crls,
        legacy_roots=dict(state.legacy_roots),
        version=version,
    )


def same_content(a: CacheSnapshot, b: CacheSnapshot) -> bool:
    """Whether two snapshots hand out the same things (versions aside): publishing is for changes only."""
    return (
        a.trust_domain == b.trust_domain
        and a.bundle == b.bundle
        and dict(a.federated_bundles) == dict(b.federated_bundles)
        and a.crls == b.crls
        and dict(a.legacy_roots) == dict(b.legacy_roots)
        and a.svids == b.svids
    )
