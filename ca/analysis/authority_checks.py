"""Checks of the authorities, the upstream above them and their CRLs (docs/analyze.md "Authorities and
CRLs"): an authority or upstream certificate close to expiry, rotation that did not happen, SVIDs cut
short by their signer's expiry, and CRLs that are stale or missing for a CA of a published chain (Envoy
refuses every peer of a chain once any CA of it has a CRL and another has none or an expired one)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes

from ca.analysis.findings import Context, Finding, Severity, State, span
from ca.authority import AuthorityState
from ca.rotation import activate_at, prepare_at
from ca.store.records import AuthorityKind, AuthorityRecord
from spiffe_core.durations import format_duration
from spiffe_core.x509_svid import load_pem_certificates

NO_ACTIVE = "authority.no_active"
EXPIRING = "authority.expiring"
SVID_TTL_CAPPED = "authority.svid_ttl_capped"
UPSTREAM_EXPIRING = "upstream.expiring"
CRL_MISSING = "crl.missing"
CRL_STALE = "crl.stale"
CRL_UNCHECKED = "crl.unchecked"

# Upstream certificates (Vault's ca_validity_period): roots warn a year ahead and intermediates two months
# ahead; anything within 30 days is an error.
ROOT_WARNING = timedelta(days=365)
INTERMEDIATE_WARNING = timedelta(days=60)
CRITICAL = timedelta(days=30)
# The CA re-signs each CRL at half its validity; one past this share of it was not re-signed when due.
CRL_LATE_SHARE = 0.6
# Vault's crl_expiry_pct_critical.
CRL_CRITICAL_SHARE = 0.95

_KIND_NAMES = {AuthorityKind.X509: "X.509 authority", AuthorityKind.JWT: "JWT signing key"}


def _own(context: Context, state: State) -> list[AuthorityRecord]:
    return [a for a in state.authorities if a.trust_domain == context.config.trust_domain]


def _active(authorities: Sequence[AuthorityRecord], kind: AuthorityKind) -> AuthorityRecord | None:
    active = [a for a in authorities if a.kind is kind and a.state is AuthorityState.ACTIVE]
    return max(active, key=lambda a: a.created_at) if active else None


def check_no_active(context: Context) -> Iterator[Finding]:
    """An X.509 authority and a JWT signing key must be active, or nothing of that kind can be signed."""
    if context.state is None:
        return
    authorities = _own(context, context.state)
    for kind in AuthorityKind:
        if _active(authorities, kind) is None:
            yield Finding(
                NO_ACTIVE,
                Severity.ERROR,
                kind.value,
                f"no {_KIND_NAMES[kind]} of {context.config.trust_domain} is active: nothing of that kind can be "
                "signed" + ("" if authorities else " (the datastore holds no authorities at all)"),
                "start the CA with this configuration (it creates and rotates authorities), or activate a prepared "
                "one: `trustmesh-ca authority list`, then `authority activate <id>`",
            )


def check_expiring(context: Context) -> Iterator[Finding]:
    """Each active authority past the points of its life where rotation should have acted (Vault's
    ``ca_validity_period`` for the intermediate the CA is): expired is an error; past 5/6 of its life
    (where a successor is activated) an error without a successor and a warning with one not yet
    activated; past 2/3 without a prepared successor (prepared at 1/2) a warning."""
    if context.state is None:
        return
    authorities = _own(context, context.state)
    now = context.now
    for kind in AuthorityKind:
        active = _active(authorities, kind)
        if active is None:
            continue
        what = f"the active {_KIND_NAMES[kind]} {active.id}"
        successor = any(
            a.kind is kind and a.state is AuthorityState.PREPARED and a.not_after > active.not_after
            for a in authorities
        )
        if active.not_after <= now:
            yield Finding(
                EXPIRING,
                Severity.ERROR,
                active.id,
                f"{what} expired at {active.not_after.isoformat()}: nothing of its kind can be signed",
                "start the CA (its rotation task activates a successor), or `trustmesh-ca authority rotate --now"
                + (" --jwt" if kind is AuthorityKind.JWT else "")
                + "`",
            )
        elif now >= activate_at(active):
            yield Finding(
                EXPIRING,
                Severity.WARNING if successor else Severity.ERROR,
                active.id,
                f"{what} expires in {span(active.not_after - now)} ({active.not_after.isoformat()}) and is past 5/6 "
                "of its life, when its successor should have been activated"
                + ("; a successor is prepared but not active" if successor else "; no successor is prepared"),
                "check the CA's log for the rotation task's error (`trustmesh-ca healthcheck`), then `trustmesh-ca "
                "authority " + ("activate <prepared id>`" if successor else "prepare` and `authority activate <id>`"),
            )
        elif not successor and now >= _successor_overdue_at(active):
            yield Finding(
                EXPIRING,
                Severity.WARNING,
                active.id,
                f"{what} is past 2/3 of its life (it expires {active.not_after.isoformat()}) and no successor is "
                "prepared, although rotation prepares one at 1/2",
                "check the CA's log for the rotation task's error; `trustmesh-ca authority prepare"
                + (" --jwt" if kind is AuthorityKind.JWT else "")
                + "` prepares one by hand",
            )


def _successor_overdue_at(active: AuthorityRecord) -> datetime:
    """2/3 of the authority's life: its successor is prepared at 1/2 (:func:`ca.rotation.prepare_at`), so
    without one by now preparing failed again and again."""
    prepared = prepare_at(active)
    return prepared + (active.not_after - prepared) / 3


def _requested_ttls(context: Context, state: State) -> dict[str, timedelta]:
    config = context.config
    ttls = {"x509_svid.default_ttl": config.x509_svid.default_ttl, "agent_svid.ttl": config.agent_svid.ttl}
    for entry in state.entries:
        if entry.spec.x509_ttl is not None:
            ttls[f"entry {entry.id} ({entry.spec.spiffe_id})"] = entry.spec.x509_ttl
    return ttls


def check_svid_ttl_capped(context: Context) -> Iterator[Finding]:
    """SVID TTLs longer than what the active X.509 authority has left: an SVID never outlives its signer,
    so they are cut to its notAfter and must be renewed sooner than their TTL says."""
    if context.state is None:
        return
    active = _active(_own(context, context.state), AuthorityKind.X509)
    if active is None or active.not_after <= context.now:
        return
    left = active.not_after - context.now
    for source, ttl in sorted(_requested_ttls(context, context.state).items()):
        if ttl > left:
            yield Finding(
                SVID_TTL_CAPPED,
                Severity.WARNING,
                source,
                f"{source} asks for {format_duration(ttl)} but the active X.509 authority {active.id} has "
                f"{span(left)} left: those SVIDs are cut to its notAfter ({active.not_after.isoformat()})",
                "let rotation activate the successor (`trustmesh-ca authority list`), or lower the TTL",
            )


def _upstream_chain(authority: AuthorityRecord) -> tuple[x509.Certificate, ...]:
    if not authority.upstream_chain_pem:
        return ()
    return load_pem_certificates(authority.upstream_chain_pem.encode())


def _published_x509(context: Context, state: State) -> list[AuthorityRecord]:
    return [
        a
        for a in _own(context, state)
        if a.kind is AuthorityKind.X509 and a.state.is_published and a.certificate_der is not None
    ]


def _is_root(certificate: x509.Certificate) -> bool:
    return certificate.issuer == certificate.subject


def check_upstream_expiring(context: Context) -> Iterator[Finding]:
    """The upstream certificates above the authorities (each published authority's chain, and the
    configured ``ca.upstream`` files) close to expiry (Vault's ``ca_validity_period``): expired, expiring
    before a new authority could live its ``ca.ttl`` (rotation then cannot certify a successor that
    outlives the active one), or within 30 days, is an error; a root within a year or an intermediate
    within 60 days a warning."""
    if context.state is None:
        return
    state = context.state
    seen: dict[bytes, x509.Certificate] = {}
    for certificate in [c for a in _published_x509(context, state) for c in _upstream_chain(a)]:
        seen.setdefault(certificate.fingerprint(hashes.SHA256()), certificate)
    for certificate in state.upstream_certificates:
        seen.setdefault(certificate.fingerprint(hashes.SHA256()), certificate)
    ca_ttl = context.config.ca.ttl
    for certificate in seen.values():
        root = _is_root(certificate)
        what = f"upstream {'root' if root else 'intermediate'} {certificate.subject.rfc4514_string()}"
        not_after = certificate.not_valid_after_utc
        left = not_after - context.now
        fix = (
            "have the enterprise PKI issue a new upstream certificate, point ca.upstream at it (the CA mints the "
            "next authority under it; docs/runbooks/root-rotation.md)"
        )
        if left <= timedelta(0):
            yield Finding(UPSTREAM_EXPIRING, Severity.ERROR, what, f"{what} expired at {not_after.isoformat()}", fix)
        elif left < max(ca_ttl, CRITICAL):
            yield Finding(
                UPSTREAM_EXPIRING,
                Severity.ERROR,
                what,
                f"{what} expires in {span(left)} ({not_after.isoformat()}): "
                + (
                    f"less than ca.ttl ({format_duration(ca_ttl)}), so no successor authority can outlive the "
                    "active one and rotation fails"
                    if left < ca_ttl
                    else "within 30 days"
                ),
                fix,
            )
        elif left < (ROOT_WARNING if root else INTERMEDIATE_WARNING):
            yield Finding(
                UPSTREAM_EXPIRING,
                Severity.WARNING,
                what,
                f"{what} expires in {span(left)} ({not_after.isoformat()})",
                fix,
            )


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    if crl.issuer != ca.subject:
        return False
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]  # CA keys are EC or RSA
    except (InvalidSignature, TypeError, ValueError):
        return False


def _chain_cas(context: Context, state: State) -> list[tuple[str, x509.Certificate]]:
    """Every CA on a published chain, named for people: each authority and the upstream certificates above."""
    cas: dict[bytes, tuple[str, x509.Certificate]] = {}
    for authority in _published_x509(context, state):
        assert authority.certificate_der is not None
        own = x509.load_der_x509_certificate(authority.certificate_der)
        cas.setdefault(own.fingerprint(hashes.SHA256()), (f"authority {authority.id}", own))
        for upstream in _upstream_chain(authority):
            name = f"upstream {upstream.subject.rfc4514_string()}"
            cas.setdefault(upstream.fingerprint(hashes.SHA256()), (name, upstream))
    return list(cas.values())


def check_crl_missing(context: Context) -> Iterator[Finding]:
    """A CA of a published chain without its CRL. An authority under an upstream intermediate (whose
    issuer's key trustmesh does not hold) means the CA can publish no CRLs at all; with the running CA's
    CRLs at hand, every CA of every chain must have one that it signed: with none, revoked SVIDs keep
    working in Envoy; with some but not all, Envoy refuses every peer of the chain that lacks one."""
    if context.state is None:
        return
    state = context.state
    for authority in _published_x509(context, state):
        if len(_upstream_chain(authority)) > 1:
            yield Finding(
                CRL_MISSING,
                Severity.ERROR,
                f"authority {authority.id}",
                f"authority {authority.id} chains through an upstream intermediate whose issuer's key trustmesh "
                "does not hold, so the CA publishes no CRLs: revoked X509-SVIDs are not refused by Envoy",
                "sign the CA directly under the upstream root (ca.upstream.cert_file = the root), or have every "
                "CA of the chain publish CRLs Envoy is given (docs/runbooks/revocation.md)",
            )
    crls = state.crls.crls
    if crls is None:
        return
    cas = _chain_cas(context, state)
    if cas and not crls:
        yield Finding(
            CRL_MISSING,
            Severity.ERROR,
            "CRLs",
            "the running CA publishes no CRLs: revoked X509-SVIDs are not refused by Envoy",
            "read the CA's log line 'publishing no CRLs: …' for the reason and fix it",
        )
        return
    for name, ca in cas:
        if not any(_signed_by(crl, ca) for crl in crls):
            yield Finding(
                CRL_MISSING,
                Severity.ERROR,
                name,
                f"{name} ({ca.subject.rfc4514_string()}) is on a published chain but has no published CRL: once "
                "any CRL is given, Envoy refuses every peer whose chain has a CA without one",
                "read the CA's log for why its CRL is not signed; until then `trustmesh-ca crl show` lists what "
                "is published",
            )


def share_used(crl: x509.CertificateRevocationList, now: datetime) -> float | None:
    """How much of a CRL's validity (lastUpdate to nextUpdate) has passed at ``now``; None without a nextUpdate."""
    next_update = crl.next_update_utc
    if next_update is None:
        return None
    validity = (next_update - crl.last_update_utc).total_seconds()
    return 1.0 if validity <= 0 else (now - crl.last_update_utc).total_seconds() / validity


def check_crl_stale(context: Context) -> Iterator[Finding]:
    """Each CRL the running CA publishes, by how much of its validity has passed (Vault's
    ``crl_validity_period``): past nextUpdate or 95 % of its validity is an error (relying parties that
    check CRLs refuse every peer once it expires); past 60 % a warning, as the CA re-signs at half."""
    if context.state is None or context.state.crls.crls is None:
        return
    for crl in context.state.crls.crls:
        share = share_used(crl, context.now)
        next_update = crl.next_update_utc
        if share is None or next_update is None or share <= CRL_LATE_SHARE:
            continue
        issuer = crl.issuer.rfc4514_string()
        expired = next_update <= context.now
        yield Finding(
            CRL_STALE,
            Severity.ERROR if share >= CRL_CRITICAL_SHARE else Severity.WARNING,
            f"CRL of {issuer}",
            f"the CRL of {issuer} "
            + (
                f"expired at {next_update.isoformat()}: Envoy refuses every peer of its chain"
                if expired
                else f"has used {share:.0%} of its validity (nextUpdate {next_update.isoformat()}); the CA "
                "re-signs CRLs at half"
            ),
            "check the CA's log for why CRLs are not re-signed (an upstream that signs the root's CRL may be "
            "unreachable); `trustmesh-ca crl show --json` shows each CRL's nextUpdate",
        )


def check_crl_unchecked(context: Context) -> Iterator[Finding]:
    """Says when the published CRLs could not be read (the CA is stopped or unreachable, or ``--offline``):
    their freshness and completeness were then not checked."""
    if context.state is None or context.state.crls.crls is not None:
        return
    yield Finding(
        CRL_UNCHECKED,
        Severity.INFO,
        "CRLs",
        f"the published CRLs were not checked: {context.state.crls.unreachable}",
        "run analyze where the CA's admin socket (or --server) is reachable to check CRL freshness",
    )
