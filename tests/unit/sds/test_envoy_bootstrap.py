"""Envoy bootstraps (sds/envoy_bootstrap.py) as configuration: the inbound listener forwards to the
application or answers itself, peers are allowed by exact SPIFFE ID or — only when asked — by trust
domain (the own or a federated one, validated then with every trust domain's own bundle: ``ALL``), and
a bootstrap without a listener or an inbound listener that allows nobody is refused.
Real Envoy runs them in tests/e2e/test_agent_lifecycle.py and tests/e2e/test_mesh.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sds.envoy_bootstrap import Inbound, LegacyInbound, LegacyOutbound, Outbound, envoy_bootstrap, parse_host_port
from spiffe_core.errors import InvalidArgument
from spiffe_core.spiffe_id import TrustDomain

SDS = Path("/run/agent/sds.sock")
WEB = "spiffe://example.org/web"
API = "spiffe://example.org/api"
PARTNER_WEB = "spiffe://partner.example/web"


def bootstrap(
    inbound: Inbound | None = None,
    outbound: Outbound | None = None,
    *,
    legacy_outbound: tuple[LegacyOutbound, ...] = (),
    legacy_inbound: LegacyInbound | None = None,
) -> dict[str, Any]:
    return envoy_bootstrap(
        node_id="n",
        spiffe_id=API,
        trust_domain=TrustDomain("example.org"),
        sds_socket=SDS,
        admin_port=0,
        inbound=inbound,
        outbound=outbound,
        legacy_outbound=legacy_outbound,
        legacy_inbound=legacy_inbound,
    )


def validation_context(config: dict[str, Any], listener_or_cluster: str) -> str:
    """The SDS secret name of the validation context the inbound listener or the upstream cluster uses."""
    if listener_or_cluster == "inbound":
        (listener,) = [x for x in config["static_resources"]["listeners"] if x["name"] == "inbound"]
        tls = listener["filter_chains"][0]["transport_socket"]["typed_config"]
    else:
        tls = cluster(config, listener_or_cluster)["transport_socket"]["typed_config"]
    name: str = tls["common_tls_context"]["combined_validation_context"]["validation_context_sds_secret_config"]["name"]
    return name


def inbound_parts(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    (listener,) = [x for x in config["static_resources"]["listeners"] if x["name"] == "inbound"]
    chain = listener["filter_chains"][0]
    manager = chain["filters"][0]["typed_config"]
    tls = chain["transport_socket"]["typed_config"]["common_tls_context"]
    matchers = tls["combined_validation_context"]["default_validation_context"]["match_typed_subject_alt_names"]
    return manager, manager["route_config"]["virtual_hosts"][0]["routes"][0], matchers


def cluster(config: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in config["static_resources"]["clusters"] if c["name"] == name]
    return found


def test_inbound_with_an_upstream_forwards_to_it_with_the_callers_id_in_xfcc() -> None:
    config = bootstrap(Inbound(8443, (WEB,), upstream="127.0.0.1:8080"))
    manager, route, matchers = inbound_parts(config)
    assert route == {"match": {"prefix": "/"}, "route": {"cluster": "inbound_upstream"}}
    assert manager["forward_client_cert_details"] == "SANITIZE_SET"
    assert manager["set_current_client_cert_details"] == {"uri": True}
    assert matchers == [{"san_type": "URI", "matcher": {"exact": WEB}}]
    app = cluster(config, "inbound_upstream")
    assert app["type"] == "STATIC"
    assert app["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "socket_address": {"address": "127.0.0.1", "port_value": 8080}
    }
    assert "transport_socket" not in app  # plain HTTP to the application on this host


def test_an_upstream_named_by_host_name_is_resolved_by_envoy() -> None:
    assert (
        cluster(bootstrap(Inbound(8443, (WEB,), upstream="app.local:80")), "inbound_upstream")["type"] == "STRICT_DNS"
    )


def test_inbound_without_an_upstream_answers_itself() -> None:
    manager, route, _ = inbound_parts(bootstrap(Inbound(8443, (WEB,))))
    assert route["direct_response"]["status"] == 200
    assert "forward_client_cert_details" not in manager


def test_the_whole_trust_domain_is_allowed_only_by_a_prefix_of_that_trust_domain() -> None:
    _, _, matchers = inbound_parts(bootstrap(Inbound(8443, (), allowed_trust_domains=("example.org",))))
    assert matchers == [{"san_type": "URI", "matcher": {"prefix": "spiffe://example.org/"}}]


def test_peers_of_the_own_trust_domain_are_validated_with_its_bundle_alone() -> None:
    config = bootstrap(Inbound(8443, (WEB,), allowed_trust_domains=("example.org",)), Outbound(10000, "b:1", WEB))
    assert (validation_context(config, "inbound"), validation_context(config, "upstream")) == ("ROOTCA", "ROOTCA")


def test_a_peer_of_a_federated_trust_domain_is_validated_with_every_trust_domains_own_bundle() -> None:
    config = bootstrap(Inbound(8443, (WEB, PARTNER_WEB)), Outbound(10000, "b:1", PARTNER_WEB))
    assert (validation_context(config, "inbound"), validation_context(config, "upstream")) == ("ALL", "ALL")


def test_a_federated_trust_domain_is_allowed_by_its_own_prefix() -> None:
    config = bootstrap(Inbound(8443, (WEB,), allowed_trust_domains=("partner.example",)))
    _, _, matchers = inbound_parts(config)
    assert matchers == [
        {"san_type": "URI", "matcher": {"exact": WEB}},
        {"san_type": "URI", "matcher": {"prefix": "spiffe://partner.example/"}},
    ]
    assert validation_context(config, "inbound") == "ALL"


def test_a_malformed_allowed_trust_domain_is_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        bootstrap(Inbound(8443, (), allowed_trust_domains=("Partner.Example",)))
    assert str(caught.value) == (
        "trust domain 'Partner.Example' has uppercase letters; trust domains are lowercase — use 'partner.example'"
    )


def test_inbound_that_allows_no_peer_is_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        bootstrap(Inbound(8443, ()))
    assert str(caught.value) == (
        "the inbound listener on port 8443 allows no peer; name the SPIFFE IDs allowed in (--allow), "
        "or allow every ID of the trust domain explicitly (--allow-trust-domain)"
    )


def test_a_bootstrap_without_a_listener_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="needs a listener: inbound, outbound, legacy outbound or legacy inbound"):
        bootstrap()


def test_two_listeners_on_one_port_are_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"listener ports \[8443, 8443\] repeat a port"):
        bootstrap(Inbound(8443, (WEB,)), legacy_inbound=LegacyInbound(8443))


def legacy_tls(config: dict[str, Any], name: str) -> dict[str, Any]:
    tls: dict[str, Any] = cluster(config, name)["transport_socket"]["typed_config"]
    return tls


def test_legacy_outbound_verifies_the_server_by_enterprise_roots_and_dns_name() -> None:
    config = bootstrap(legacy_outbound=(LegacyOutbound(10001, "10.0.0.5:443", "corp", "web01.corp.example.com"),))

    tls = legacy_tls(config, "legacy_10001")
    validation = tls["common_tls_context"]["combined_validation_context"]
    assert tls["@type"].endswith("UpstreamTlsContext")
    assert tls["sni"] == "web01.corp.example.com"
    assert validation["validation_context_sds_secret_config"]["name"] == "legacy/corp"
    assert validation["default_validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "web01.corp.example.com"}}
    ]
    assert tls["common_tls_context"]["tls_certificate_sds_secret_configs"][0]["name"] == API  # if the server asks
    (listener,) = [x for x in config["static_resources"]["listeners"] if x["name"] == "legacy_10001"]
    assert "transport_socket" not in listener["filter_chains"][0]  # plain HTTP from the application on this host
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 10001}


def test_legacy_outbound_names_the_server_by_its_upstream_host_unless_told() -> None:
    config = bootstrap(legacy_outbound=(LegacyOutbound(10001, "db01.data.corp.example.com:5432", "corp"),))

    assert legacy_tls(config, "legacy_10001")["sni"] == "db01.data.corp.example.com"
    assert cluster(config, "legacy_10001")["type"] == "STRICT_DNS"


def test_several_legacy_servers_get_a_listener_and_cluster_each() -> None:
    config = bootstrap(
        legacy_outbound=(
            LegacyOutbound(10001, "web01.corp.example.com:443", "corp"),
            LegacyOutbound(10002, "db01.data.corp.example.com:443", "data"),
        )
    )

    names = {x["name"] for x in config["static_resources"]["listeners"]}
    assert names == {"legacy_10001", "legacy_10002"}
    assert legacy_tls(config, "legacy_10002")["sni"] == "db01.data.corp.example.com"


@pytest.mark.parametrize(
    ("legacy", "message"),
    [
        pytest.param(
            LegacyOutbound(10001, "10.0.0.5:443", "corp"),
            "legacy outbound on port 10001: upstream 10.0.0.5:443 is an IP address; name the DNS name its certificate "
            "carries (--legacy-server-name)",
            id="ip-without-server-name",
        ),
        pytest.param(
            LegacyOutbound(10001, "web01.corp.example.com:443", "Corp"),
            "legacy outbound on port 10001: legacy roots name 'Corp' must be 1-64",
            id="bad-roots-name",
        ),
        pytest.param(
            LegacyOutbound(10001, "10.0.0.5:443", "corp", "web 01"),
            "legacy outbound on port 10001: DNS name 'web 01' is not a valid hostname",
            id="bad-server-name",
        ),
        pytest.param(
            LegacyOutbound(10001, "10.0.0.5:443", "corp", "*.corp.example.com"),
            "legacy outbound on port 10001: server name '*.corp.example.com' is a wildcard",
            id="wildcard-server-name",
        ),
    ],
)
def test_a_legacy_outbound_that_names_no_verifiable_server_is_refused(legacy: LegacyOutbound, message: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        bootstrap(legacy_outbound=(legacy,))

    assert str(refused.value).startswith(message)


def test_legacy_inbound_serves_the_svid_and_asks_for_no_client_certificate() -> None:
    config = bootstrap(legacy_inbound=LegacyInbound(8444, upstream="127.0.0.1:8080"))

    (listener,) = [x for x in config["static_resources"]["listeners"] if x["name"] == "legacy_inbound"]
    chain = listener["filter_chains"][0]
    tls = chain["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is False
    assert list(tls["common_tls_context"]) == ["tls_certificate_sds_secret_configs"]  # no validation context
    assert tls["common_tls_context"]["tls_certificate_sds_secret_configs"][0]["name"] == API
    route = chain["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]
    assert route == {"match": {"prefix": "/"}, "route": {"cluster": "legacy_inbound_upstream"}}
    assert "transport_socket" not in cluster(config, "legacy_inbound_upstream")


def test_outbound_keeps_mtls_to_the_upstream_and_a_bounded_connection_lifetime() -> None:
    upstream = cluster(bootstrap(outbound=Outbound(10000, "127.0.0.1:8443", WEB)), "upstream")
    options = upstream["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert options["common_http_protocol_options"] == {"max_connection_duration": "300s"}
    assert upstream["transport_socket"]["typed_config"]["@type"].endswith("UpstreamTlsContext")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("127.0.0.1:8080", ("127.0.0.1", 8080), id="ipv4"),
        pytest.param("[::1]:8080", ("::1", 8080), id="ipv6"),
        pytest.param("app.local:80", ("app.local", 80), id="host-name"),
    ],
)
def test_parses_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text, "upstream") == expected


@pytest.mark.parametrize("text", ["8080", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", ":80", "host:http"])
def test_refuses_malformed_host_port(text: str) -> None:
    with pytest.raises(InvalidArgument, match=f"upstream '{text}' is not HOST:PORT"):
        parse_host_port(text, "upstream")
