"""Checks of the federation relationships (docs/analyze.md "Federation"): partners whose bundle the CA
does not hold, cannot fetch, has not fetched for long, or whose keys as held are about to expire — after
which this trust domain's workloads refuse every SVID of that partner."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from ca.analysis.findings import Context, Finding, Severity, span
from ca.federation.relationships import parsed_bundle
from spiffe_core.durations import format_duration
from spiffe_core.errors import TrustmeshError

NO_BUNDLE = "federation.no_bundle"
FAILING = "federation.failing"
STALE = "federation.stale"
PARTNER_KEY_EXPIRING = "federation.partner_key_expiring"

# A partner is stale after this many of the longest refresh intervals without a good fetch.
STALE_AFTER_REFRESHES = 3
# Warn this long before the last X.509 authority of a partner's held bundle expires (or two of the
# longest refresh intervals, if longer: the fetches that could bring its successor).
KEY_WARNING = timedelta(hours=24)


def _subject(trust_domain: object) -> str:
    return f"federation {trust_domain}"


def check_no_bundle(context: Context) -> Iterator[Finding]:
    """Relationships with no bundle at all (no bootstrap bundle, never fetched): nothing of the partner
    verifies, and its endpoint cannot be authenticated with the https_spiffe profile."""
    if context.state is None:
        return
    for relationship in context.state.relationships:
        if relationship.bundle is None:
            subject = _subject(relationship.trust_domain)
            yield Finding(
                NO_BUNDLE,
                Severity.ERROR,
                subject,
                f"the CA holds no bundle of {relationship.trust_domain}: its SVIDs verify nowhere in this trust domain",
                f"`trustmesh-ca federation refresh {relationship.trust_domain}`, or recreate the relationship with its "
                "bootstrap bundle (docs/federation.md)",
            )


def check_failing(context: Context) -> Iterator[Finding]:
    """Relationships whose last fetch failed: the partner's rotations stop reaching this trust domain."""
    if context.state is None:
        return
    for relationship in context.state.relationships:
        if relationship.last_error:
            subject = _subject(relationship.trust_domain)
            yield Finding(
                FAILING,
                Severity.WARNING,
                subject,
                f"fetching the bundle of {relationship.trust_domain} from {relationship.bundle_endpoint_url} failed: "
                f"{relationship.last_error}",
                f"fix what the error names, then `trustmesh-ca federation refresh {relationship.trust_domain}`",
            )


def check_stale(context: Context) -> Iterator[Finding]:
    """Relationships without a good fetch for three of the longest refresh intervals
    (``federation.max_refresh``; never fetched counts from the relationship's creation): the partner's
    newer keys are not held, so its SVIDs signed by them fail."""
    if context.state is None:
        return
    limit = context.config.federation.max_refresh * STALE_AFTER_REFRESHES
    for relationship in context.state.relationships:
        since = relationship.last_success_at or relationship.created_at
        if context.now - since <= limit:
            continue
        subject = _subject(relationship.trust_domain)
        ago = span(context.now - since)
        when = "never fetched" if relationship.last_success_at is None else f"last fetched {ago} ago"
        yield Finding(
            STALE,
            Severity.ERROR,
            subject,
            f"the bundle of {relationship.trust_domain} is stale: {when}, over {STALE_AFTER_REFRESHES} x "
            f"federation.max_refresh ({format_duration(limit)})",
            f"`trustmesh-ca federation show {relationship.trust_domain}` names the last error; fix it, then "
            f"`trustmesh-ca federation refresh {relationship.trust_domain}`",
        )


def check_partner_key_expiring(context: Context) -> Iterator[Finding]:
    """Partners whose held bundle is about to lose its last X.509 authority: when the latest one expires,
    no X509-SVID of that partner verifies here. An error once all have expired, a warning within a day
    (or two refresh intervals) of it."""
    if context.state is None:
        return
    window = max(KEY_WARNING, context.config.federation.max_refresh * 2)
    for relationship in context.state.relationships:
        try:
            bundle = parsed_bundle(relationship)
        except TrustmeshError:
            continue  # a stored bundle is parsed when stored; an unreadable one is for no_bundle's fetch
        if bundle is None or not bundle.x509_authorities:
            continue
        latest = max(cert.not_valid_after_utc for cert in bundle.x509_authorities)
        subject = _subject(relationship.trust_domain)
        fix = (
            f"ask {relationship.trust_domain}'s operators to publish their next authority, and check fetching: "
            f"`trustmesh-ca federation refresh {relationship.trust_domain}`"
        )
        if latest <= context.now:
            yield Finding(
                PARTNER_KEY_EXPIRING,
                Severity.ERROR,
                subject,
                f"every X.509 authority of {relationship.trust_domain} held here has expired (the last at "
                f"{latest.isoformat()}): none of its X509-SVIDs verify",
                fix,
            )
        elif latest - context.now < window:
            yield Finding(
                PARTNER_KEY_EXPIRING,
                Severity.WARNING,
                subject,
                f"the last X.509 authority of {relationship.trust_domain} held here expires in "
                f"{span(latest - context.now)} ({latest.isoformat()}) and no later one is held",
                fix,
            )
