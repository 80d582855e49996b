"""Registration entry rules (DESIGN §3 "Registration entries") and who may use an entry."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ca.entries import (
    EntryPolicy,
    authorize,
    check_dns_name,
    check_entry_spec,
    entitled_by_id,
    is_agent_id,
)
from ca.store.records import EntrySpec, RegistrationEntry
from spiffe_core.errors import InvalidArgument, NotAuthorized
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain

TD = TrustDomain("example.org")
POLICY = EntryPolicy(TD, max_x509_ttl=timedelta(hours=24), max_jwt_ttl=timedelta(hours=1))
AGENT = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-1")
OTHER_AGENT = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-2")
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SPEC = EntrySpec(
    spiffe_id=SpiffeId.parse("spiffe://example.org/web"),
    parent_id=AGENT,
    selectors=frozenset({Selector("unix", "uid:1000")}),
)


def sid(text: str) -> SpiffeId:
    return SpiffeId.parse(text)


def entry(entry_id: str, parent: SpiffeId) -> RegistrationEntry:
    return RegistrationEntry(entry_id, replace(SPEC, parent_id=parent), NOW, NOW, 1)


def test_accepts_a_workload_entry_under_an_agent() -> None:
    check_entry_spec(
        replace(
            SPEC,
            dns_names=("web.example.org", "*.web.example.org"),
            x509_ttl=timedelta(hours=24),
            jwt_ttl=timedelta(minutes=5),
            federates_with=frozenset({TrustDomain("partner.example")}),
            admin=True,
            hint="blue",
        ),
        POLICY,
    )


def test_accepts_an_entry_parented_to_another_workload() -> None:
    check_entry_spec(replace(SPEC, spiffe_id=sid("spiffe://example.org/web/sidecar"), parent_id=SPEC.spiffe_id), POLICY)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param(
            {"spiffe_id": sid("spiffe://other.org/web")},
            "SPIFFE ID spiffe://other.org/web is not in trust domain example.org; this CA issues only example.org IDs",
            id="foreign-trust-domain",
        ),
        pytest.param(
            {"spiffe_id": sid("spiffe://example.org")},
            "SPIFFE ID spiffe://example.org has no path; a workload's ID needs one, e.g. spiffe://example.org/web",
            id="trust-domain-id",
        ),
        pytest.param(
            {"spiffe_id": sid("spiffe://example.org/trustmesh/agent/join_token/node-9")},
            "SPIFFE ID spiffe://example.org/trustmesh/agent/join_token/node-9 is under the reserved path "
            "/trustmesh/ (the CA's and agents' own identities, issued only by attestation); choose another path",
            id="agent-id-as-workload",
        ),
        pytest.param(
            {"spiffe_id": sid("spiffe://example.org/trustmesh")},
            "SPIFFE ID spiffe://example.org/trustmesh is under the reserved path /trustmesh/",
            id="reserved-root",
        ),
        pytest.param(
            {"parent_id": sid("spiffe://other.org/trustmesh/agent/join_token/node-1")},
            "parent ID spiffe://other.org/trustmesh/agent/join_token/node-1 is not in trust domain example.org",
            id="foreign-parent",
        ),
        pytest.param(
            {"parent_id": sid("spiffe://example.org/trustmesh/server")},
            "parent ID spiffe://example.org/trustmesh/server is reserved but not an agent ID",
            id="reserved-parent",
        ),
        pytest.param(
            {"parent_id": sid("spiffe://example.org")},
            "parent ID spiffe://example.org has no path; name an agent or a workload",
            id="trust-domain-parent",
        ),
        pytest.param(
            {"parent_id": sid("spiffe://example.org/web")},
            "entry for spiffe://example.org/web names itself as its parent; name its agent instead",
            id="self-parent",
        ),
        pytest.param(
            {"selectors": frozenset()},
            "entry for spiffe://example.org/web has no selectors; it needs at least one 'type:value'",
            id="no-selectors",
        ),
        pytest.param(
            {"selectors": frozenset({Selector("unix", "")})},
            "selector 'unix:' must be written 'type:value'",
            id="selector-without-value",
        ),
        pytest.param(
            {"dns_names": ("web.example.org", "web.example.org")},
            "entry for spiffe://example.org/web lists a DNS name twice",
            id="duplicate-dns-name",
        ),
        pytest.param(
            {"x509_ttl": timedelta(0)},
            "X509-SVID TTL must be a positive whole number of seconds, got 0s",
            id="zero-x509-ttl",
        ),
        pytest.param(
            {"jwt_ttl": timedelta(seconds=-5)},
            "JWT-SVID TTL must be a positive whole number of seconds, got -5s",
            id="negative-jwt-ttl",
        ),
        pytest.param(
            {"x509_ttl": timedelta(hours=25)},
            "X509-SVID TTL 90000s is over the CA's maximum of 86400s; ask for less or raise the configured max_ttl",
            id="x509-ttl-over-max",
        ),
        pytest.param(
            {"jwt_ttl": timedelta(hours=2)},
            "JWT-SVID TTL 7200s is over the CA's maximum of 3600s",
            id="jwt-ttl-over-max",
        ),
        pytest.param(
            {"federates_with": frozenset({TD})},
            "entry federates with its own trust domain example.org; list only other trust domains",
            id="federates-with-itself",
        ),
        pytest.param({"hint": "x" * 1025}, "hint is 1025 characters; at most 1024 allowed", id="long-hint"),
    ],
)
def test_rejects_entry_breaking_a_rule(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_entry_spec(replace(SPEC, **changes), POLICY)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("web", id="single-label"),
        pytest.param("web-1.example.org", id="dashes-and-digits"),
        pytest.param("*.example.org", id="wildcard"),
        pytest.param("a" * 63 + ".org", id="63-char-label"),
    ],
)
def test_accepts_host_names(name: str) -> None:
    check_dns_name(name)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        pytest.param("", "DNS name is empty", id="empty"),
        pytest.param("Web.example.org", "DNS name 'Web.example.org' has uppercase letters", id="uppercase"),
        pytest.param("-web.example.org", "DNS name '-web.example.org' has the label '-web'", id="leading-dash"),
        pytest.param("web..example.org", "DNS name 'web..example.org' has the label ''", id="empty-label"),
        pytest.param("web_1.example.org", "DNS name 'web_1.example.org' has the label 'web_1'", id="underscore"),
        pytest.param("*.org", "DNS name '*.org' has the label '*'", id="wildcard-over-a-tld"),
        pytest.param("a.*.org", "DNS name 'a.*.org' has the label '*'", id="inner-wildcard"),
        pytest.param("a" * 64 + ".org", f"DNS name '{'a' * 64}.org' has the label", id="64-char-label"),
        pytest.param(
            "a." * 127 + "org", f"DNS name '{'a.' * 127}org' is 257 characters; at most 253 allowed", id="too-long"
        ),
    ],
)
def test_rejects_malformed_host_names(name: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_dns_name(name)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("spiffe_id", "expected"),
    [
        pytest.param("spiffe://example.org/trustmesh/agent/join_token/node-1", True, id="agent"),
        pytest.param("spiffe://example.org/trustmesh/agent", False, id="agent-prefix-only"),
        pytest.param("spiffe://example.org/trustmesh/server", False, id="ca-server"),
        pytest.param("spiffe://example.org/web", False, id="workload"),
        pytest.param("spiffe://other.org/trustmesh/agent/join_token/node-1", False, id="foreign-agent"),
    ],
)
def test_recognizes_agent_ids_of_the_own_trust_domain(spiffe_id: str, expected: bool) -> None:
    assert is_agent_id(sid(spiffe_id), TD) is expected


def test_an_agent_gets_an_entry_parented_to_it() -> None:
    mine = entry("e-1", AGENT)
    assert authorize("e-1", entitled_by_id([mine]), AGENT) == mine


def test_an_agent_is_refused_an_entry_parented_to_another_agent() -> None:
    theirs = entry("e-2", OTHER_AGENT)
    with pytest.raises(NotAuthorized) as caught:
        authorize("e-2", entitled_by_id([theirs]), AGENT)
    assert str(caught.value) == f"entry e-2 is not parented to {AGENT}"


def test_an_unknown_entry_is_refused_like_someone_elses() -> None:
    with pytest.raises(NotAuthorized) as caught:
        authorize("e-404", entitled_by_id([entry("e-1", AGENT)]), AGENT)
    assert str(caught.value) == f"entry e-404 is not parented to {AGENT}"


def test_an_entry_parented_to_a_workload_of_the_agent_is_not_the_agents() -> None:
    nested = RegistrationEntry(
        "e-3", replace(SPEC, spiffe_id=sid("spiffe://example.org/web/sidecar"), parent_id=SPEC.spiffe_id), NOW, NOW, 1
    )
    with pytest.raises(NotAuthorized):
        authorize("e-3", entitled_by_id([nested]), AGENT)
