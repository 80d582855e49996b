"""Envoy bootstrap configs that take their certificates from the agent's SDS socket.

Like Istio's pilot-agent, trustmesh can write the Envoy side of the contract for you: a static
cluster on the agent's Unix socket (HTTP/2, as gRPC needs), and TLS contexts whose certificate
(a SPIFFE ID, or ``default``) and validation context come over SDS with ``initial_fetch_timeout: 0s``
so listeners wait for their first SVID instead of serving without one. Peer authorization is by exact
SPIFFE ID on the URI SAN, or — only when asked for explicitly — by trust domain (any ID under
``spiffe://<trust domain>/``).

The validation context carries Envoy's SPIFFE certificate validator, which verifies a peer with the
bundle of the peer's own trust domain only. It is ``ROOTCA`` (the agent's trust domain) when every
allowed peer is of the agent's trust domain, and ``ALL`` (that one plus each federated trust domain the
workload's entries name, each with its own bundle) as soon as one allowed peer is of a federated trust
domain. The SAN matchers, not the bundles, decide which peers are allowed: ``ALL`` adds no peer.

The inbound listener forwards to the application on a local address (plain HTTP), with the caller's
SPIFFE ID in ``x-forwarded-client-cert`` (``URI=…``; whatever the client sent in that header is
dropped first). Without an application address Envoy answers by itself (a demo and health target).
Connections have a bounded lifetime (``max_connection_duration``, 5 minutes by default), because Envoy
checks revocation only when a connection is made.

Two listeners meet the legacy world (DESIGN §5 "Legacy trust", docs/bridge.md):

* a legacy outbound (:class:`LegacyOutbound`): plain HTTP on 127.0.0.1, forwarded over TLS to a server
  that holds an enterprise certificate, not an SVID. Envoy verifies it as old clients do: its chain to
  the enterprise roots the agent serves as ``legacy/<name>``, and its DNS name (exact DNS SAN match,
  also sent as SNI). Envoy presents its SVID if the server asks for a client certificate;
* a legacy inbound (:class:`LegacyInbound`): TLS with the workload's SVID for clients that have no SVID
  and trust the mesh bundle exported as PEM, verifying the SVID by a DNS name its registration entry
  carries. No client certificate is asked for: the application authenticates these callers as it did
  before the mesh.

The output is plain JSON (a valid Envoy YAML document); ``trustmesh-agent envoy-bootstrap`` prints it.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from bridge.legacy_roots import check_legacy_roots_name
from sds.secrets import ALL, LEGACY_PREFIX, ROOTCA
from spiffe_core.errors import InvalidArgument
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import check_dns_name

SDS_CLUSTER = "trustmesh_sds"
# How long one mTLS connection may live before Envoy closes it (gracefully) and the peer reconnects
# with a fresh handshake, which is where revocation is enforced. 5 minutes: a reconnect per client
# every 5 minutes costs nothing measurable; a revoked peer keeps an open connection at most that long.
DEFAULT_MAX_CONNECTION_DURATION = timedelta(minutes=5)
_TLS = "envoy.transport_sockets.tls"
_TYPES = "type.googleapis.com/envoy.extensions"


@dataclass(frozen=True, slots=True)
class Inbound:
    """Terminate mTLS on ``port``; accept only peers whose SPIFFE ID is in ``allowed_peers``, or any
    peer of a trust domain in ``allowed_trust_domains`` (the agent's own, or a federated one). Forward
    requests to ``upstream`` (HOST:PORT, plain HTTP: the application) with the peer's SPIFFE ID in
    ``x-forwarded-client-cert``; without one, answer 200 with the peer's SPIFFE ID in the
    ``x-peer-spiffe-id`` header (a demo target)."""

    port: int
    allowed_peers: tuple[str, ...]
    upstream: str | None = None
    allowed_trust_domains: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Outbound:
    """Plain HTTP on 127.0.0.1:``port``, forwarded over mTLS to ``upstream`` (host:port) whose SVID
    must be ``upstream_id``."""

    port: int
    upstream: str
    upstream_id: str


@dataclass(frozen=True, slots=True)
class LegacyOutbound:
    """Plain HTTP on 127.0.0.1:``port``, forwarded over TLS to the legacy server ``upstream`` (HOST:PORT),
    whose certificate must chain to the enterprise roots the agent serves as ``legacy/<roots>`` and
    carry the DNS SAN ``server_name`` (sent as SNI too; empty: the host of ``upstream``, when that is a
    DNS name)."""

    port: int
    upstream: str
    roots: str
    server_name: str = ""


@dataclass(frozen=True, slots=True)
class LegacyInbound:
    """TLS with the workload's SVID on ``port`` for clients without an SVID (they trust the mesh bundle
    as PEM); no client certificate. Forwards to ``upstream`` (HOST:PORT, plain HTTP), or answers 200."""

    port: int
    upstream: str | None = None


def _sds_secret(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "sds_config": {
            "resource_api_version": "V3",
            "initial_fetch_timeout": "0s",
            "api_config_source": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": SDS_CLUSTER}}],
            },
        },
    }


def validation_context_name(
    trust_domain: TrustDomain, peer_ids: Sequence[str], peer_trust_domains: Sequence[str]
) -> str:
    """``ROOTCA`` when every allowed peer is of ``trust_domain`` (the agent's), else ``ALL``: a peer of
    a federated trust domain is verified with that trust domain's bundle, which only ``ALL`` carries.
    Raises InvalidArgument for a malformed SPIFFE ID or trust domain."""
    peers = {SpiffeId.parse(p).trust_domain for p in peer_ids} | {TrustDomain.parse(t) for t in peer_trust_domains}
    return ROOTCA if peers <= {trust_domain} else ALL


def _common_tls(
    own_id: str, trust_domain: TrustDomain, peer_ids: Sequence[str], peer_trust_domains: Sequence[str] = ()
) -> dict[str, Any]:
    matchers = [{"san_type": "URI", "matcher": {"exact": p}} for p in peer_ids]
    matchers += [{"san_type": "URI", "matcher": {"prefix": f"spiffe://{td}/"}} for td in peer_trust_domains]
    validation = validation_context_name(trust_domain, peer_ids, peer_trust_domains)
    return {
        "tls_certificate_sds_secret_configs": [_sds_secret(own_id)],
        "combined_validation_context": {
            "default_validation_context": {"match_typed_subject_alt_names": matchers},
            "validation_context_sds_secret_config": _sds_secret(validation),
        },
    }


def _lifetime(max_connection_duration: timedelta | None) -> dict[str, Any]:
    """Envoy's ``HttpProtocolOptions`` bounding how long one connection lives: SDS updates (a new CRL,
    a bundle without a revoked authority) apply to new handshakes only, so this bounds how long an
    already-connected revoked peer keeps talking (docs/runbooks/revocation.md)."""
    if max_connection_duration is None or max_connection_duration <= timedelta(0):
        return {}
    seconds = max_connection_duration.total_seconds()
    return {"common_http_protocol_options": {"max_connection_duration": f"{seconds:g}s"}}


def _http_manager(
    stat_prefix: str,
    route: dict[str, Any],
    max_connection_duration: timedelta | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": f"{_TYPES}.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            **_lifetime(max_connection_duration),
            **(extra or {}),
            "route_config": {"virtual_hosts": [{"name": stat_prefix, "domains": ["*"], "routes": [route]}]},
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": f"{_TYPES}.filters.http.router.v3.Router"},
                }
            ],
        },
    }


def _listener(name: str, port: int, filters: list[dict[str, Any]], tls: dict[str, Any] | None) -> dict[str, Any]:
    chain: dict[str, Any] = {"filters": filters}
    if tls is not None:
        chain["transport_socket"] = {"name": _TLS, "typed_config": tls}
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [chain],
    }


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as (host, port). Raises InvalidArgument naming ``what``."""
    host, _, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"{what} {text!r} is not HOST:PORT with a port from 1 to 65535; e.g. 127.0.0.1:8080")
    return host, int(port)


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _plain_cluster(name: str, address: str, what: str, protocol_options: dict[str, Any]) -> dict[str, Any]:
    """A cluster of one endpoint; an IP address is used as it is, a host name is resolved by Envoy."""
    host, port = parse_host_port(address, what)
    kind = "STATIC" if _is_ip_address(host) else "STRICT_DNS"
    return {
        "name": name,
        "type": kind,
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}
            ],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": f"{_TYPES}.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": {}},
                **protocol_options,
            }
        },
    }


def envoy_bootstrap(
    *,
    node_id: str,
    spiffe_id: str,
    trust_domain: TrustDomain,
    sds_socket: Path,
    admin_port: int,
    inbound: Inbound | None = None,
    outbound: Outbound | None = None,
    max_connection_duration: timedelta | None = DEFAULT_MAX_CONNECTION_DURATION,
    legacy_outbound: Sequence[LegacyOutbound] = (),
    legacy_inbound: LegacyInbound | None = None,
) -> dict[str, Any]:
    """An Envoy v3 bootstrap for one workload identity (``spiffe_id``, or ``default``) of the agent's
    ``trust_domain``. Every mTLS connection, inbound and outbound, ends after
    ``max_connection_duration`` (None or 0: never), so a revoked peer cannot ride on a connection opened
    before its revocation for longer than that.

    Raises InvalidArgument for a bootstrap without a listener, an inbound listener that allows no
    peer (neither SPIFFE IDs nor, explicitly, a trust domain), a malformed SPIFFE ID or trust domain,
    a malformed HOST:PORT, legacy roots name or DNS name, or two listeners on one port."""
    if inbound is None and outbound is None and not legacy_outbound and legacy_inbound is None:
        raise InvalidArgument(
            "an Envoy bootstrap needs a listener: inbound, outbound, legacy outbound or legacy inbound"
        )
    ports = [x.port for x in (inbound, outbound, legacy_inbound, *legacy_outbound) if x is not None]
    if len(set(ports)) != len(ports):
        raise InvalidArgument(f"listener ports {sorted(ports)} repeat a port; give each listener its own")
    if inbound is not None and not inbound.allowed_peers and not inbound.allowed_trust_domains:
        raise InvalidArgument(
            f"the inbound listener on port {inbound.port} allows no peer; name the SPIFFE IDs allowed in "
            "(--allow), or allow every ID of the trust domain explicitly (--allow-trust-domain)"
        )
    listeners: list[dict[str, Any]] = []
    clusters: list[dict[str, Any]] = [
        {
            "name": SDS_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": SDS_CLUSTER,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(sds_socket)}}}}]}],
            },
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": f"{_TYPES}.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
        }
    ]
    if inbound is not None:
        route: dict[str, Any]
        forwarding: dict[str, Any] = {}
        if inbound.upstream is None:
            route = _hello_route(spiffe_id)
        else:
            route = {"match": {"prefix": "/"}, "route": {"cluster": "inbound_upstream"}}
            # The application learns who called from XFCC; a client cannot forge it (SANITIZE_SET).
            forwarding = {
                "forward_client_cert_details": "SANITIZE_SET",
                "set_current_client_cert_details": {"uri": True},
            }
            clusters.append(_plain_cluster("inbound_upstream", inbound.upstream, "inbound upstream", {}))
        tls = {
            "@type": f"{_TYPES}.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": _common_tls(
                spiffe_id, trust_domain, inbound.allowed_peers, inbound.allowed_trust_domains
            ),
        }
        manager = _http_manager("inbound", route, max_connection_duration, forwarding)
        listeners.append(_listener("inbound", inbound.port, [manager], tls))
    if outbound is not None:
        route = {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}
        listeners.append(_listener("outbound", outbound.port, [_http_manager("outbound", route)], None))
        upstream = _plain_cluster("upstream", outbound.upstream, "upstream", _lifetime(max_connection_duration))
        upstream["transport_socket"] = {
            "name": _TLS,
            "typed_config": {
                "@type": f"{_TYPES}.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": _common_tls(spiffe_id, trust_domain, (outbound.upstream_id,)),
            },
        }
        clusters.append(upstream)
    for legacy in legacy_outbound:
        listeners.append(_legacy_outbound_listener(legacy))
        clusters.append(_legacy_cluster(legacy, spiffe_id, max_connection_duration))
    if legacy_inbound is not None:
        route = _hello_route(spiffe_id)
        if legacy_inbound.upstream is not None:
            route = {"match": {"prefix": "/"}, "route": {"cluster": "legacy_inbound_upstream"}}
            clusters.append(
                _plain_cluster("legacy_inbound_upstream", legacy_inbound.upstream, "legacy inbound upstream", {})
            )
        tls = {
            "@type": f"{_TYPES}.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": False,
            "common_tls_context": {"tls_certificate_sds_secret_configs": [_sds_secret(spiffe_id)]},
        }
        manager = _http_manager("legacy_inbound", route, max_connection_duration)
        listeners.append(_listener("legacy_inbound", legacy_inbound.port, [manager], tls))
    return {
        "node": {"id": node_id, "cluster": node_id},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def _hello_route(spiffe_id: str) -> dict[str, Any]:
    """Envoy answers 200 itself, with the caller's SPIFFE ID (if any) in ``x-peer-spiffe-id``."""
    return {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": f"hello from {spiffe_id}\n"}},
        "response_headers_to_add": [{"header": {"key": "x-peer-spiffe-id", "value": "%DOWNSTREAM_PEER_URI_SAN%"}}],
    }


def _legacy_outbound_listener(legacy: LegacyOutbound) -> dict[str, Any]:
    name = f"legacy_{legacy.port}"
    route = {"match": {"prefix": "/"}, "route": {"cluster": name}}
    return _listener(name, legacy.port, [_http_manager(name, route)], None)


def _legacy_cluster(
    legacy: LegacyOutbound, spiffe_id: str, max_connection_duration: timedelta | None
) -> dict[str, Any]:
    """TLS to a legacy server, verified like an old client would: the chain to the enterprise roots
    (``legacy/<roots>`` over SDS) and the DNS name, exactly (a wildcard certificate matches as in TLS)."""
    host, _ = parse_host_port(legacy.upstream, "legacy upstream")
    if not legacy.server_name and _is_ip_address(host):
        raise InvalidArgument(
            f"legacy outbound on port {legacy.port}: upstream {legacy.upstream} is an IP address; name the DNS name "
            "its certificate carries (--legacy-server-name)"
        )
    try:
        check_legacy_roots_name(legacy.roots)
        server_name = check_dns_name(legacy.server_name or host)
    except InvalidArgument as err:
        raise InvalidArgument(f"legacy outbound on port {legacy.port}: {err}") from err
    if server_name.startswith("*."):
        raise InvalidArgument(
            f"legacy outbound on port {legacy.port}: server name {server_name!r} is a wildcard; name the one host "
            "Envoy calls (its certificate may still be a wildcard one)"
        )
    cluster = _plain_cluster(
        f"legacy_{legacy.port}", legacy.upstream, "legacy upstream", _lifetime(max_connection_duration)
    )
    cluster["transport_socket"] = {
        "name": _TLS,
        "typed_config": {
            "@type": f"{_TYPES}.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": server_name,
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [_sds_secret(spiffe_id)],
                "combined_validation_context": {
                    "default_validation_context": {
                        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": server_name}}]
                    },
                    "validation_context_sds_secret_config": _sds_secret(LEGACY_PREFIX + legacy.roots),
                },
            },
        },
    }
    return cluster


def render(bootstrap: dict[str, Any]) -> str:
    return json.dumps(bootstrap, indent=2)
