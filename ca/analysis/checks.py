"""Every check ``analyze`` runs, by its stable ID (docs/analyze.md lists them with their fixes), and
running them."""

from __future__ import annotations

from dataclasses import dataclass

from ca.analysis import authority_checks as authorities
from ca.analysis import config_checks as configuration
from ca.analysis import federation_checks as federation
from ca.analysis import registration_checks as registration
from ca.analysis.findings import Check, Context, Finding, Severity, by_severity
from spiffe_core.errors import TrustmeshError

CHECK_FAILED = "analyze.check_failed"


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """One check: its stable ID, the function, and one line saying what it looks for (``analyze --list``)."""

    id: str
    run: Check
    summary: str


CHECKS: tuple[CheckSpec, ...] = (
    CheckSpec(configuration.TTL_ARITHMETIC, configuration.check_ttl_arithmetic, "TTLs that break rotation"),
    CheckSpec(configuration.CRL_TTL_SHORT, configuration.check_crl_ttl, "CRLs that expire before the SVIDs they guard"),
    CheckSpec(configuration.KEY_CUSTODY, configuration.check_key_custody, "where the authorities' keys live"),
    CheckSpec(
        configuration.LEGACY_CRL_STALE,
        configuration.check_legacy_crl_stale,
        "CRLs in legacy_roots files past or near nextUpdate",
    ),
    CheckSpec(authorities.NO_ACTIVE, authorities.check_no_active, "no active X.509 authority or JWT key"),
    CheckSpec(authorities.EXPIRING, authorities.check_expiring, "active authorities expiring without rotation"),
    CheckSpec(
        authorities.SVID_TTL_CAPPED, authorities.check_svid_ttl_capped, "SVID TTLs longer than the authority has left"
    ),
    CheckSpec(authorities.UPSTREAM_EXPIRING, authorities.check_upstream_expiring, "upstream certificates expiring"),
    CheckSpec(authorities.CRL_MISSING, authorities.check_crl_missing, "a CA of a published chain without its CRL"),
    CheckSpec(authorities.CRL_STALE, authorities.check_crl_stale, "published CRLs past or near nextUpdate"),
    CheckSpec(authorities.CRL_UNCHECKED, authorities.check_crl_unchecked, "the running CA's CRLs could not be read"),
    CheckSpec(registration.PARENT_MISSING, registration.check_parent_missing, "entries whose parent does not exist"),
    CheckSpec(registration.TTL_OVER_MAX, registration.check_ttl_over_max, "entry TTLs over the configured maximum"),
    CheckSpec(registration.DNS_LOCALHOST, registration.check_dns_localhost, "entries with localhost DNS names"),
    CheckSpec(registration.DNS_WILDCARD, registration.check_dns_wildcard, "entries with wildcard DNS names"),
    CheckSpec(registration.MAPPING_INVALID, registration.check_mapping_invalid, "mapping rules that break the rules"),
    CheckSpec(registration.MAPPING_OVERLAP, registration.check_mapping_overlap, "mapping rules that overlap"),
    CheckSpec(
        registration.TOKEN_NEVER_EXPIRES, registration.check_token_never_expires, "join tokens that never expire"
    ),
    CheckSpec(registration.TOKEN_LONG_LIVED, registration.check_token_long_lived, "join tokens valid for weeks"),
    CheckSpec(registration.AGENT_EXPIRED, registration.check_agent_expired, "agents gone for over a day"),
    CheckSpec(registration.RETENTION_BEHIND, registration.check_retention_behind, "issuance records not pruned"),
    CheckSpec(registration.TOO_MANY_RECORDS, registration.check_too_many_records, "too many issuance records"),
    CheckSpec(federation.NO_BUNDLE, federation.check_no_bundle, "partners whose bundle is not held"),
    CheckSpec(federation.FAILING, federation.check_failing, "partners whose last fetch failed"),
    CheckSpec(federation.STALE, federation.check_stale, "partners not fetched for three refresh intervals"),
    CheckSpec(
        federation.PARTNER_KEY_EXPIRING, federation.check_partner_key_expiring, "partners about to lose their last key"
    ),
)


def run_checks(context: Context) -> list[Finding]:
    """Every check's findings, errors first. A check that cannot judge the data it was given (an
    unparsable certificate in the datastore) is reported as an error of its own instead of stopping the
    others."""
    findings: list[Finding] = []
    for check in CHECKS:
        try:
            findings += check.run(context)
        except (TrustmeshError, ValueError) as err:
            findings.append(
                Finding(
                    CHECK_FAILED,
                    Severity.ERROR,
                    check.id,
                    f"check {check.id} could not judge what it read: {err}",
                    "report this with the datastore's state; the other checks ran",
                )
            )
    return by_severity(findings)


def exit_code(findings: list[Finding]) -> int:
    """1 when any finding is an error (CI and GitOps gates fail), else 0."""
    return 1 if any(f.severity is Severity.ERROR for f in findings) else 0
