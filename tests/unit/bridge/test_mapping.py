"""Identity mapping rules (bridge/mapping.py): validation, overlap refusal, matching and `explain`."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography import x509

from bridge.mapping import (
    KeepDns,
    LegacyIdentity,
    MappingRule,
    Match,
    check_rule,
    check_rule_set,
    explain,
    map_identity,
    parse_rules_document,
    rule_from_dict,
)
from spiffe_core.errors import InvalidArgument, NotAuthorized
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.enterprise_pki import EnterprisePki

TD = TrustDomain.parse("example.org")
PAYMENTS = MappingRule(
    "payments", Match(dns="*.payments.corp.example.com"), "spiffe://example.org/legacy/payments/{host}"
)
WEB01 = LegacyIdentity(
    ("web01.payments.corp.example.com", "web01.corp.example.com"),
    "web01.payments.corp.example.com",
    "CN=Example Corp Issuing CA 1",
    "corp",
)


def rule(**fields: Any) -> MappingRule:
    document = {"name": "r", "match": {"dns": "*.corp.example.com"}, "spiffe_id": "/legacy/{host}", **fields}
    return rule_from_dict(document)


def test_rule_maps_the_matching_san_through_its_template() -> None:
    mapped = map_identity(WEB01, [PAYMENTS], TD)
    assert mapped.spiffe_id == SpiffeId.parse("spiffe://example.org/legacy/payments/web01")
    assert mapped.dns_names == ("web01.payments.corp.example.com",)
    assert mapped.common_name == "web01.payments.corp.example.com"


def test_keep_dns_all_keeps_every_san_and_keep_cn_false_drops_the_cn() -> None:
    keep_all = MappingRule(PAYMENTS.name, PAYMENTS.match, PAYMENTS.spiffe_id, KeepDns.ALL, keep_cn=False)
    mapped = map_identity(WEB01, [keep_all], TD)
    assert mapped.dns_names == WEB01.dns_names
    assert mapped.common_name is None


def test_dns_label_placeholders_pick_labels_of_the_matched_name_and_paths_mean_own_trust_domain() -> None:
    labelled = MappingRule("p", Match(dns="*.payments.corp.example.com"), "/legacy/{dns_label[1]}/{dns_label[0]}")
    assert str(map_identity(WEB01, [labelled], TD).spiffe_id) == "spiffe://example.org/legacy/payments/web01"


def test_wildcard_matches_exactly_one_leftmost_label() -> None:
    deeper = LegacyIdentity(("a.web01.payments.corp.example.com",))
    with pytest.raises(NotAuthorized, match="no mapping rule matches"):
        map_identity(deeper, [PAYMENTS], TD)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"match": {}}, "matches nothing in particular"),
        ({"match": {"dns": "*"}}, "matches everything"),
        ({"match": {"dns": "web*.corp.example.com"}}, "not a lowercase DNS name"),
        ({"match": {"subject_cn": "a.*.example.com"}}, "other than a whole leftmost label"),
        ({"spiffe_id": "/legacy/{hostname}"}, "unknown placeholder {hostname}"),
        ({"match": {"issuer": "CN=X"}}, "ambiguous: its spiffe_id uses a DNS placeholder"),
        ({"spiffe_id": "spiffe://other.org/legacy/{host}"}, "not in trust domain example.org"),
        ({"spiffe_id": "/trustmesh/agent/{host}"}, "outside /trustmesh/"),
        ({"name": "Bad Name"}, "must be 1-64 lowercase"),
    ],
)
def test_bad_rules_are_refused_with_the_reason(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason.replace("{", r"\{").replace("*", r"\*")):
        check_rule(rule(**fields), TD)


def test_unknown_keys_are_refused_so_a_typo_never_widens_a_rule() -> None:
    with pytest.raises(InvalidArgument, match="unknown match key"):
        rule_from_dict({"name": "r", "match": {"dsn": "a.example.com"}, "spiffe_id": "/x"})


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"dns": "*.payments.corp.example.com"}, {"dns": "web01.payments.corp.example.com"}),
        ({"dns": "*.payments.corp.example.com"}, {"dns": "*.payments.corp.example.com", "issuer": "CN=X"}),
        ({"dns": "*.payments.corp.example.com"}, {"subject_cn": "web01.payments.corp.example.com"}),
    ],
)
def test_overlapping_rules_are_refused_naming_both(first: dict[str, str], second: dict[str, str]) -> None:
    a = rule_from_dict({"name": "a", "match": first, "spiffe_id": "/legacy/a/{host}"})
    b = rule_from_dict({"name": "b", "match": second, "spiffe_id": "/legacy/b"})
    with pytest.raises(InvalidArgument, match="rule 'b' overlaps rule 'a': an identity can match both"):
        check_rule_set([a, b], TD)


def test_rules_told_apart_by_one_criterion_do_not_overlap() -> None:
    check_rule_set(
        [
            rule_from_dict({"name": "a", "match": {"dns": "*.payments.corp.example.com"}, "spiffe_id": "/a/{host}"}),
            rule_from_dict({"name": "b", "match": {"dns": "*.data.corp.example.com"}, "spiffe_id": "/b/{host}"}),
            rule_from_dict({"name": "c", "match": {"dns": "web01.corp.example.com"}, "spiffe_id": "/c"}),
        ],
        TD,
    )


def test_same_name_twice_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="used twice"):
        check_rule_set([PAYMENTS, PAYMENTS], TD)


def test_a_certificate_matching_two_disjoint_rules_is_refused_naming_both() -> None:
    corp = MappingRule("corp", Match(dns="*.corp.example.com"), "/legacy/corp/{host}")
    explanation = explain(WEB01, [PAYMENTS, corp], TD)
    assert explanation.mapped is None
    assert explanation.refusal is not None
    assert "matches rules 'payments' and 'corp'" in explanation.refusal
    with pytest.raises(NotAuthorized, match="matches rules 'payments' and 'corp'"):
        map_identity(WEB01, [PAYMENTS, corp], TD)


def test_explain_names_the_match_the_id_and_what_the_svid_keeps() -> None:
    lines = explain(WEB01, [PAYMENTS], TD).lines()
    assert "matches rule 'payments'" in lines
    assert "SPIFFE ID: spiffe://example.org/legacy/payments/web01" in lines
    assert "SVID keeps DNS SANs: web01.payments.corp.example.com" in lines


def test_explain_says_per_rule_why_it_does_not_match() -> None:
    data = MappingRule("data", Match(dns="*.data.corp.example.com"), "/legacy/data/{host}")
    other_anchor = MappingRule("dmz", Match(subject_cn="*.dmz.example.com", trust_anchor="dmz"), "/legacy/dmz")
    lines = explain(WEB01, [data, other_anchor], TD).lines()
    assert "no rule matches" in lines
    assert (
        "rule 'data' does not match: no DNS SAN matches '*.data.corp.example.com' "
        "(SANs: web01.payments.corp.example.com, web01.corp.example.com)"
    ) in lines
    assert "rule 'dmz' does not match: it needs trust anchor 'dmz'; the certificate's is corp" in lines


def test_identity_is_read_from_an_enterprise_certificate(enterprise_pki: EnterprisePki) -> None:
    cert = x509.load_pem_x509_certificate(enterprise_pki.web.cert.read_bytes())
    identity = LegacyIdentity.from_certificate(cert, "corp")
    assert identity == WEB01


def test_rules_file_in_toml_and_json_give_the_same_rules() -> None:
    toml = """
[[rule]]
name = "payments"
spiffe_id = "spiffe://example.org/legacy/payments/{host}"
match = { dns = "*.payments.corp.example.com" }
"""
    json_text = '[{"name": "payments", "match": {"dns": "*.payments.corp.example.com"},'
    json_text += ' "spiffe_id": "spiffe://example.org/legacy/payments/{host}"}]'
    assert parse_rules_document(toml, "rules.toml") == parse_rules_document(json_text, "rules.json") == [PAYMENTS]


def test_rules_file_that_is_neither_toml_nor_json_is_refused_with_its_name() -> None:
    with pytest.raises(InvalidArgument, match=r"rules\.txt: neither JSON nor TOML"):
        parse_rules_document("name: payments\n", "rules.txt")
