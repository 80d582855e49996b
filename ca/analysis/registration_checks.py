"""Checks of what operators registered and what the CA recorded (docs/analyze.md "Registration"): entries
whose parent does not exist, TTLs over the maxima, DNS names no workload should hold, mapping rules that
overlap, join tokens that (practically) never expire, agents long gone, and issuance records that pile up."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from bridge.mapping import check_rule, overlap
from ca.analysis.findings import Context, Finding, Severity, span
from ca.attestation import MAX_JOIN_TOKEN_TTL
from ca.entries import is_agent_id
from ca.retention import PRUNE_INTERVAL
from spiffe_core.durations import format_duration
from spiffe_core.errors import InvalidArgument

PARENT_MISSING = "entry.parent_missing"
TTL_OVER_MAX = "entry.ttl_over_max"
DNS_LOCALHOST = "entry.dns_localhost"
DNS_WILDCARD = "entry.dns_wildcard"
MAPPING_INVALID = "mapping.invalid"
MAPPING_OVERLAP = "mapping.overlap"
TOKEN_NEVER_EXPIRES = "join_token.never_expires"  # noqa: S105 - a check ID, not a secret
TOKEN_LONG_LIVED = "join_token.long_lived"  # noqa: S105 - a check ID, not a secret
AGENT_EXPIRED = "agent.expired"
RETENTION_BEHIND = "retention.behind"
TOO_MANY_RECORDS = "issued.too_many"

# Unused tokens valid longer than this from now are a bearer credential lying around.
LONG_LIVED_TOKEN = timedelta(days=7)
# Agents whose SVID expired this long ago are records of nodes that are gone (or must attest again).
AGENT_GONE_AFTER = timedelta(days=1)
# Vault's too_many_certs, scaled: trustmesh records every SVID, and short TTLs make many.
RECORDS_WARNING = 1_000_000
RECORDS_CRITICAL = 5_000_000
# DNS names that name the workload's own host, whoever it is (Vault's role_allows_localhost).
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def _entry_subject(entry_id: str, spiffe_id: object) -> str:
    return f"entry {entry_id} ({spiffe_id})"


def check_parent_missing(context: Context) -> Iterator[Finding]:
    """Entries whose parent does not exist: an agent ID no agent attested as (info while an unused join
    token will attest as it), or a workload ID no entry names. Their workloads get no SVIDs."""
    if context.state is None:
        return
    state = context.state
    agents = {agent.spiffe_id for agent in state.agents}
    pending = {token.agent_spiffe_id for token in state.unused_tokens if token.agent_spiffe_id is not None}
    workloads = {entry.spec.spiffe_id for entry in state.entries}
    trust_domain = context.config.trust_domain
    for entry in state.entries:
        parent = entry.spec.parent_id
        subject = _entry_subject(entry.id, entry.spec.spiffe_id)
        if is_agent_id(parent, trust_domain):
            if parent in agents:
                continue
            waiting = parent in pending
            yield Finding(
                PARENT_MISSING,
                Severity.INFO if waiting else Severity.WARNING,
                subject,
                f"{subject} is parented to agent {parent}, which "
                + ("has not attested yet (an unused join token will attest as it)" if waiting else "does not exist"),
                "nothing to do until the node attests"
                if waiting
                else f"generate a join token for that node (`trustmesh-ca token generate --node-name "
                f"{parent.path.rpartition('/')[2]}`), or re-parent or delete the entry",
            )
        elif parent not in workloads:
            yield Finding(
                PARENT_MISSING,
                Severity.WARNING,
                subject,
                f"{subject} is parented to {parent}, which is neither an agent nor the SPIFFE ID of any entry",
                "parent the entry to the agent of the node it runs on (`trustmesh-ca inventory agents`), or delete it",
            )


def check_ttl_over_max(context: Context) -> Iterator[Finding]:
    """Entries asking for a TTL over the configured maximum (the maximum was lowered after they were
    stored): the CA refuses to sign their SVIDs, so their workloads get none."""
    if context.state is None:
        return
    config = context.config
    for entry in context.state.entries:
        subject = _entry_subject(entry.id, entry.spec.spiffe_id)
        for what, ttl, key, maximum in (
            ("X509-SVID", entry.spec.x509_ttl, "x509_svid.max_ttl", config.x509_svid.max_ttl),
            ("JWT-SVID", entry.spec.jwt_ttl, "jwt_svid.max_ttl", config.jwt_svid.max_ttl),
        ):
            if ttl is not None and ttl > maximum:
                yield Finding(
                    TTL_OVER_MAX,
                    Severity.ERROR,
                    subject,
                    f"{subject} asks for {what} TTL {format_duration(ttl)}, over {key} ({format_duration(maximum)}): "
                    "the CA refuses to sign its SVIDs",
                    f"`trustmesh-ca entry update {entry.id} --{what[:4].lower()}-ttl {format_duration(maximum)}`, or "
                    f"raise {key}",
                )


def check_dns_localhost(context: Context) -> Iterator[Finding]:
    """DNS names that name every host (Vault's ``role_allows_localhost``): a certificate for ``localhost``
    proves nothing about which workload holds it."""
    if context.state is None:
        return
    for entry in context.state.entries:
        local = [name for name in entry.spec.dns_names if name in _LOCAL_NAMES or name.endswith(".localhost")]
        if local:
            subject = _entry_subject(entry.id, entry.spec.spiffe_id)
            yield Finding(
                DNS_LOCALHOST,
                Severity.WARNING,
                subject,
                f"{subject} puts {', '.join(local)} in its SVIDs: any workload on any host answers to that name",
                f"`trustmesh-ca entry update {entry.id} --dns <its real name>` (or --clear-dns)",
            )


def check_dns_wildcard(context: Context) -> Iterator[Finding]:
    """Wildcard DNS names (Vault's ``role_allows_glob_wildcards``): one workload's SVID then vouches for
    every host under the domain."""
    if context.state is None:
        return
    for entry in context.state.entries:
        wildcards = [name for name in entry.spec.dns_names if name.startswith("*.")]
        if wildcards:
            subject = _entry_subject(entry.id, entry.spec.spiffe_id)
            yield Finding(
                DNS_WILDCARD,
                Severity.WARNING,
                subject,
                f"{subject} puts the wildcard {', '.join(wildcards)} in its SVIDs: one workload's key then vouches "
                "for every host under that domain",
                f"name the hosts it serves instead: `trustmesh-ca entry update {entry.id} --dns <name> ...`",
            )


def check_mapping_invalid(context: Context) -> Iterator[Finding]:
    """Stored mapping rules that break the rules (:func:`bridge.mapping.check_rule`), e.g. after the trust
    domain changed: x509pop attestation cannot use them."""
    if context.state is None:
        return
    for rule in context.state.mappings:
        try:
            check_rule(rule, context.config.trust_domain)
        except InvalidArgument as err:
            yield Finding(
                MAPPING_INVALID,
                Severity.ERROR,
                f"mapping {rule.name}",
                str(err),
                f"fix or delete it: `trustmesh-ca mapping delete {rule.name}` (docs/bridge.md)",
            )


def check_mapping_overlap(context: Context) -> Iterator[Finding]:
    """Pairs of stored mapping rules that one legacy identity can match both of
    (:func:`bridge.mapping.overlap`, the check that refuses such a rule when it is added): which SPIFFE ID
    that identity gets would depend on the order of the rules."""
    if context.state is None:
        return
    rules = context.state.mappings
    for index, rule in enumerate(rules):
        for other in rules[index + 1 :]:
            why = overlap(rule, other)
            if why is not None:
                yield Finding(
                    MAPPING_OVERLAP,
                    Severity.ERROR,
                    f"mappings {rule.name}, {other.name}",
                    why,
                    "narrow one rule's match (dns, subject_cn, issuer or trust_anchor) or delete one "
                    "(`trustmesh-ca mapping delete <name>`)",
                )


def check_token_never_expires(context: Context) -> Iterator[Finding]:
    """Unused join tokens valid for longer than the CA ever issues them (30 days): written around the CA,
    or by an older version; for practical purposes they never expire."""
    if context.state is None:
        return
    for token in context.state.unused_tokens:
        lifetime = token.expires_at - token.created_at
        if lifetime > MAX_JOIN_TOKEN_TTL:
            yield Finding(
                TOKEN_NEVER_EXPIRES,
                Severity.ERROR,
                f"join token {token.token_id}",
                f"join token {token.token_id} (for {token.agent_spiffe_id or 'any node'}) is unused and valid for "
                f"{span(lifetime)}, past the {MAX_JOIN_TOKEN_TTL.days} days the CA allows: a bearer credential that "
                "practically never expires",
                "find out who created it; the admin API cannot withdraw a token, so delete its row (token_hash "
                f"starting {token.token_id}) from the datastore's join_tokens table",
            )


def check_token_long_lived(context: Context) -> Iterator[Finding]:
    """Unused join tokens that stay valid for more than 7 days from now: a one-time bearer credential
    lying around for a node that may never come."""
    if context.state is None:
        return
    for token in context.state.unused_tokens:
        left = token.expires_at - context.now
        if left > LONG_LIVED_TOKEN and token.expires_at - token.created_at <= MAX_JOIN_TOKEN_TTL:
            yield Finding(
                TOKEN_LONG_LIVED,
                Severity.WARNING,
                f"join token {token.token_id}",
                f"join token {token.token_id} (for {token.agent_spiffe_id or 'any node'}) is unused and valid for "
                f"another {span(left)}",
                "generate tokens just before the node needs them, with --ttl of hours, not weeks",
            )


def check_agent_expired(context: Context) -> Iterator[Finding]:
    """Agents whose own SVID expired over a day ago and who are not banned: nodes that are gone, or that
    must attest again; their records (and entries) linger."""
    if context.state is None:
        return
    for agent in context.state.agents:
        if not agent.banned and agent.expires_at + AGENT_GONE_AFTER <= context.now:
            yield Finding(
                AGENT_EXPIRED,
                Severity.INFO,
                str(agent.spiffe_id),
                f"agent {agent.spiffe_id}'s SVID expired {span(context.now - agent.expires_at)} ago; it cannot call "
                "the CA until it attests again",
                f"if the node is gone: `trustmesh-ca agent evict {agent.spiffe_id}` and delete its entries",
            )


def check_retention_behind(context: Context) -> Iterator[Finding]:
    """Issuance records the retention should have deleted well ago (Vault's ``tidy_last_run``): the CA's
    pruning task is not running (the CA is stopped) or keeps failing."""
    if context.state is None or context.state.overdue_records == 0:
        return
    retention = context.config.datastore.issued_certificate_retention
    yield Finding(
        RETENTION_BEHIND,
        Severity.WARNING,
        "issued_certificates",
        f"{context.state.overdue_records} issued-certificate records expired more than "
        f"{format_duration(retention + overdue_slack())} ago (datastore.issued_certificate_retention plus an "
        "hour) and are still stored: pruning is not running",
        "start the CA, or read its log for 'pruning expired issued-certificate records failed'",
    )


def overdue_slack() -> timedelta:
    """How far past the retention a record may be before pruning counts as behind: a few of its runs."""
    return max(timedelta(hours=1), PRUNE_INTERVAL * 3)


def check_too_many_records(context: Context) -> Iterator[Finding]:
    """How many issuance records the datastore holds (Vault's ``too_many_certs``, with thresholds for a
    CA that records every short-lived SVID): every CRL rebuild and revocation by SPIFFE ID reads them."""
    if context.state is None:
        return
    count = context.state.issued_records
    if count >= RECORDS_WARNING:
        yield Finding(
            TOO_MANY_RECORDS,
            Severity.ERROR if count >= RECORDS_CRITICAL else Severity.WARNING,
            "issued_certificates",
            f"the datastore holds {count} issued-certificate records",
            "shorten datastore.issued_certificate_retention, or lengthen X509-SVID TTLs so fewer are signed",
        )
