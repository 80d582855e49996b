"""Registration checks of ``analyze`` (ca/analysis/registration_checks.py): entries, mapping rules, join
tokens, agents and issuance records — each finds its seeded problem and stays silent on a healthy state."""

from __future__ import annotations

from bridge.mapping import MappingRule, Match
from ca.analysis import registration_checks as checks
from ca.analysis.findings import Check, Context, Severity
from spiffe_core.spiffe_id import SpiffeId
from tests.support.analysis import AGENT, DAY, HOUR, agent, broken, entry, healthy, token
from tests.support.store import NOW

GONE = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/gone")


def found(check: Check, context: Context) -> list[tuple[Severity, str]]:
    return [(f.severity, f.subject) for f in check(context)]


def rule(name: str, dns: str, template: str = "spiffe://example.org/legacy/{host}") -> MappingRule:
    return MappingRule(name=name, match=Match(dns=dns), spiffe_id=template)


# --- entry.parent_missing ------------------------------------------------------------------------------


def test_an_entry_under_an_agent_that_never_attested_is_a_warning() -> None:
    context = broken(entries=(entry("/web", GONE),))
    assert found(checks.check_parent_missing, context) == [(Severity.WARNING, "entry e-1 (spiffe://example.org/web)")]


def test_an_entry_under_an_agent_a_join_token_will_attest_as_is_info() -> None:
    context = broken(entries=(entry("/web", GONE),), unused_tokens=(token(NOW + HOUR, agent_id=GONE),))
    assert [f.severity for f in checks.check_parent_missing(context)] == [Severity.INFO]


def test_an_entry_under_a_workload_no_entry_names_is_a_warning() -> None:
    context = broken(entries=(entry("/web", SpiffeId.parse("spiffe://example.org/nobody")),))
    [finding] = checks.check_parent_missing(context)
    assert finding.message.endswith("which is neither an agent nor the SPIFFE ID of any entry")


def test_parent_missing_is_silent_for_entries_under_agents_and_other_entries() -> None:
    nested = entry("/sidecar", SpiffeId.parse("spiffe://example.org/web"), entry_id="e-2")
    assert found(checks.check_parent_missing, broken(entries=(entry("/web"), nested))) == []


# --- entry.ttl_over_max --------------------------------------------------------------------------------


def test_an_entry_ttl_over_the_maximum_is_an_error() -> None:
    [finding] = checks.check_ttl_over_max(broken(entries=(entry("/web", x509_ttl=48 * HOUR),)))
    assert (finding.severity, finding.fix) == (
        Severity.ERROR,
        "`trustmesh-ca entry update e-1 --x509-ttl 1d`, or raise x509_svid.max_ttl",
    )


def test_entry_ttls_within_the_maximum_are_silent() -> None:
    assert found(checks.check_ttl_over_max, broken(entries=(entry("/web", x509_ttl=HOUR),))) == []


# --- entry.dns_localhost / entry.dns_wildcard ----------------------------------------------------------


def test_a_localhost_dns_name_is_a_warning() -> None:
    context = broken(entries=(entry("/web", dns_names=("web.example.org", "localhost")),))
    [finding] = checks.check_dns_localhost(context)
    assert (finding.severity, finding.message.split(": ")[0]) == (
        Severity.WARNING,
        "entry e-1 (spiffe://example.org/web) puts localhost in its SVIDs",
    )


def test_a_wildcard_dns_name_is_a_warning() -> None:
    context = broken(entries=(entry("/web", dns_names=("*.example.org",)),))
    assert [f.severity for f in checks.check_dns_wildcard(context)] == [Severity.WARNING]


def test_ordinary_dns_names_are_silent() -> None:
    context = broken(entries=(entry("/web", dns_names=("web.example.org",)),))
    assert found(checks.check_dns_localhost, context) == found(checks.check_dns_wildcard, context) == []


# --- mapping.invalid / mapping.overlap -----------------------------------------------------------------


def test_a_mapping_rule_into_another_trust_domain_is_an_error() -> None:
    context = broken(mappings=(rule("elsewhere", "*.corp.example.com", "spiffe://other.org/{host}"),))
    assert found(checks.check_mapping_invalid, context) == [(Severity.ERROR, "mapping elsewhere")]


def test_overlapping_mapping_rules_are_an_error() -> None:
    context = broken(mappings=(rule("a", "*.corp.example.com"), rule("b", "web.corp.example.com")))
    [finding] = checks.check_mapping_overlap(context)
    assert (finding.subject, finding.message.split(":")[0]) == (
        "mappings a, b",
        "mapping rule 'a' overlaps rule 'b'",
    )


def test_disjoint_valid_mapping_rules_are_silent() -> None:
    context = broken(mappings=(rule("a", "*.corp.example.com"), rule("b", "*.lab.example.com")))
    assert found(checks.check_mapping_invalid, context) == found(checks.check_mapping_overlap, context) == []


# --- join_token.never_expires / join_token.long_lived --------------------------------------------------


def test_a_token_valid_longer_than_the_ca_ever_issues_is_an_error() -> None:
    context = broken(unused_tokens=(token(NOW + 400 * DAY, created_at=NOW - DAY),))
    assert found(checks.check_token_never_expires, context) == [(Severity.ERROR, "join token abababababababab")]
    assert found(checks.check_token_long_lived, context) == []


def test_an_unused_token_valid_for_weeks_is_a_warning() -> None:
    context = broken(unused_tokens=(token(NOW + 20 * DAY),))
    assert found(checks.check_token_long_lived, context) == [(Severity.WARNING, "join token abababababababab")]


def test_a_token_for_the_next_hour_is_silent() -> None:
    context = broken(unused_tokens=(token(NOW + HOUR),))
    assert found(checks.check_token_never_expires, context) == found(checks.check_token_long_lived, context) == []


# --- agent.expired -------------------------------------------------------------------------------------


def test_an_agent_whose_svid_expired_days_ago_is_info() -> None:
    context = broken(agents=(agent(expires_at=NOW - 3 * DAY),))
    assert found(checks.check_agent_expired, context) == [(Severity.INFO, str(AGENT))]


def test_a_banned_or_current_agent_is_silent() -> None:
    context = broken(agents=(agent(expires_at=NOW - 3 * DAY, banned=True), agent(GONE)))
    assert found(checks.check_agent_expired, context) == []


# --- retention.behind / issued.too_many ----------------------------------------------------------------


def test_records_past_their_retention_are_a_warning() -> None:
    [finding] = checks.check_retention_behind(broken(overdue_records=42))
    assert finding.severity is Severity.WARNING
    assert finding.message.startswith("42 issued-certificate records expired more than 25h ago")


def test_retention_is_silent_when_nothing_is_overdue() -> None:
    assert found(checks.check_retention_behind, healthy()) == []


def test_a_million_records_are_a_warning_and_five_million_an_error() -> None:
    assert [f.severity for f in checks.check_too_many_records(broken(issued_records=1_000_000))] == [Severity.WARNING]
    assert [f.severity for f in checks.check_too_many_records(broken(issued_records=5_000_000))] == [Severity.ERROR]


def test_an_ordinary_number_of_records_is_silent() -> None:
    assert found(checks.check_too_many_records, broken(issued_records=999_999)) == []


def test_state_checks_are_silent_without_a_state() -> None:
    context = Context(healthy().config, NOW, None)
    assert [f for check in (checks.check_parent_missing, checks.check_too_many_records) for f in check(context)] == []
