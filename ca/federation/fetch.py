"""Fetching one partner's bundle from its bundle endpoint, and every check that a bundle must pass before
it replaces the last good one (SPIFFE_Federation.md §5, §6; DESIGN §3 "Federation").

A refused bundle changes nothing: the caller keeps the last good one and reports the reason. Refused:

* an endpoint that is not who it must be — ``https_web``: a certificate that does not chain to the
  Web PKI roots or does not name the URL's host; ``https_spiffe``: a chain that is not an X509-SVID of
  the configured endpoint SPIFFE ID verified against the partner's *current* bundle (the last good one,
  the bootstrap bundle at first);
* an answer other than 200, larger than ``max_bytes``, or slower than ``timeout`` (all of it: connect,
  TLS, headers and body);
* JSON that is not a SPIFFE bundle (:meth:`~spiffe_core.bundle.Bundle.parse_jwks`), one with no key at
  all, or with more than ``max_keys`` keys;
* a bundle of another trust domain: a signing certificate whose SPIFFE ID (URI SAN) names another one;
* a ``spiffe_sequence`` lower than the last good bundle's (a replay of an older bundle).
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from cryptography import x509

from spiffe_core.bundle import Bundle
from spiffe_core.errors import BundleError, SpiffeIdError, TrustmeshError, X509SvidError
from spiffe_core.peers import peer_certificate_chain
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from spiffe_core.x509_svid import verify_x509_svid

PROFILE_HTTPS_WEB = "https_web"
PROFILE_HTTPS_SPIFFE = "https_spiffe"
PROFILES = (PROFILE_HTTPS_WEB, PROFILE_HTTPS_SPIFFE)


class BundleRefused(TrustmeshError):
    """A partner's endpoint or bundle failed a check; the message says which (it goes to the status)."""


@dataclass(frozen=True, slots=True)
class FetchLimits:
    """Everything a partner can make us hold or wait for."""

    timeout_seconds: float
    max_bytes: int
    max_keys: int


@dataclass(frozen=True, slots=True)
class PartnerEndpoint:
    trust_domain: TrustDomain
    url: str
    profile: str
    endpoint_spiffe_id: SpiffeId | None


def _spiffe_client_context() -> ssl.SSLContext:
    """``https_spiffe``: OpenSSL checks nothing; the chain is verified as an X509-SVID after the handshake
    and before the request is sent."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def web_client_context(ca_file: str | None) -> ssl.SSLContext:
    """``https_web``: the system's roots, or those of ``federation.web_ca_file``; host names checked."""
    return ssl.create_default_context(cafile=ca_file)


async def fetch_partner_bundle(
    endpoint: PartnerEndpoint,
    current: Bundle | None,
    limits: FetchLimits,
    web_context: ssl.SSLContext,
    now: datetime,
) -> Bundle:
    """Fetch and check the partner's bundle; raises BundleRefused with the reason."""
    spiffe = endpoint.profile == PROFILE_HTTPS_SPIFFE
    if spiffe and current is None:
        raise BundleRefused(
            f"no bundle of {endpoint.trust_domain} to authenticate its https_spiffe endpoint with; recreate the "
            "relationship with --bundle-file (the partner's current bundle)"
        )
    context = _spiffe_client_context() if spiffe else web_context
    try:
        async with (
            httpx.AsyncClient(verify=context, timeout=limits.timeout_seconds, follow_redirects=False) as client,
            client.stream("GET", endpoint.url, headers={"Accept": "application/json"}) as response,
        ):
            if spiffe:
                assert current is not None
                stream = response.extensions["network_stream"]
                _check_endpoint_svid(endpoint, stream.get_extra_info("ssl_object"), current, now)
            if response.status_code != 200:
                raise BundleRefused(f"the endpoint answered HTTP {response.status_code}, not 200")
            body = await _read_bounded(response, limits.max_bytes)
    except httpx.HTTPError as err:
        raise BundleRefused(f"fetching {endpoint.url} failed: {err or type(err).__name__}") from err
    return check_partner_bundle(endpoint.trust_domain, body, current, limits.max_keys)


async def _read_bounded(response: httpx.Response, max_bytes: int) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > max_bytes:
            raise BundleRefused(f"the bundle is larger than federation.max_bundle_bytes ({max_bytes} bytes)")
    return bytes(body)


def _check_endpoint_svid(endpoint: PartnerEndpoint, ssl_object: Any, current: Bundle, now: datetime) -> None:
    try:
        chain = list(peer_certificate_chain(ssl_object))
        presented, _ = verify_x509_svid(chain, current, now)
    except X509SvidError as err:
        raise BundleRefused(
            f"the https_spiffe endpoint did not present an X509-SVID of {endpoint.trust_domain} that its current "
            f"bundle verifies ({err})"
        ) from err
    if presented != endpoint.endpoint_spiffe_id:
        raise BundleRefused(
            f"the https_spiffe endpoint presented {presented}, not the configured {endpoint.endpoint_spiffe_id}"
        )


def check_partner_bundle(trust_domain: TrustDomain, body: bytes | str, current: Bundle | None, max_keys: int) -> Bundle:
    """Parse and check a partner bundle document (see the module docstring); BundleRefused if it fails."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise BundleRefused(f"the bundle is not JSON: {err}") from err
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if isinstance(keys, list) and len(keys) > max_keys:
        raise BundleRefused(f"the bundle has {len(keys)} keys, more than federation.max_bundle_keys ({max_keys})")
    try:
        bundle = Bundle.parse_jwks(trust_domain, doc)
    except BundleError as err:
        raise BundleRefused(f"the bundle is malformed: {err}") from err
    if not bundle.x509_authorities and not bundle.jwt_authorities:
        raise BundleRefused("the bundle holds no X.509 or JWT authority")
    for cert in bundle.x509_authorities:
        other = _other_trust_domain(cert, trust_domain)
        if other is not None:
            raise BundleRefused(f"the bundle is {other}'s, not {trust_domain}'s (a signing certificate names {other})")
    if current is not None and bundle.sequence < current.sequence:
        raise BundleRefused(
            f"the bundle's spiffe_sequence {bundle.sequence} is lower than the last good one's ({current.sequence}): "
            "an older bundle replayed"
        )
    return bundle


def _other_trust_domain(cert: x509.Certificate, trust_domain: TrustDomain) -> TrustDomain | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        try:
            named = SpiffeId.parse(uri).trust_domain
        except SpiffeIdError:
            continue
        if named != trust_domain:
            return named
    return None
