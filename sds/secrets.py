"""What each SDS resource name means: a cache snapshot and a caller's selectors → Envoy ``Secret``\\s.

DESIGN §4 (Envoy SDS v3) fixes the names Envoy may ask the agent for:

``default``
    The first X509-SVID the caller is entitled to, as a ``tls_certificate`` (chain and key).
a SPIFFE ID (``spiffe://example.org/web``)
    That X509-SVID, if the caller is entitled to it.
``ROOTCA``
    A validation context for the agent's own trust domain.
``ALL``
    A validation context for the own trust domain and every trust domain the caller's SVIDs
    federate with.
``spiffe://<trust domain>``
    A validation context for that one trust domain, if it is the own one or one the caller's
    SVIDs federate with.
``legacy/<name>``
    A validation context for legacy (non-SPIFFE) TLS servers: the enterprise roots the CA serves
    under ``<name>`` (``[bridge] legacy_roots``), as ``trusted_ca`` for Envoy's default certificate
    validator. The proxy's own config names the server (``match_typed_subject_alt_names``: its DNS
    name). Like ``ROOTCA`` it is given to every caller the agent attests: the roots are public
    certificates, and they add trust only where a proxy's config asks for them by name.

Validation contexts use Envoy's SPIFFE certificate validator (``envoy.tls.cert_validator.spiffe``,
``tls_spiffe_validator_config.proto``), which keeps one trust bundle per trust domain and picks the
bundle by the peer's trust domain — the SPIFFE rule that bundles of different trust domains are never
merged. That validator ignores ``CertificateValidationContext.crl``: it reads CRLs only from the PEM
of a trust domain's ``trust_bundle``, and then checks revocation for every certificate of the chain.
So the own trust domain's CRLs are appended to its trust bundle PEM, and nowhere else.

Pure: no I/O, no logging. Key material stays inside :class:`SdsResource`, whose ``repr`` shows only
the name and the content version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_spiffe_validator_config_pb2
from google.protobuf import any_pb2

from bridge.legacy_roots import holds_crls
from sds.cache import CacheSnapshot, WorkloadSvid
from spiffe_core.bundle import Bundle
from spiffe_core.errors import SpiffeIdError
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain

DEFAULT: Final = "default"
ROOTCA: Final = "ROOTCA"
ALL: Final = "ALL"
LEGACY_PREFIX: Final = "legacy/"
SECRET_TYPE_URL: Final = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"  # noqa: S105 (a type name)
SPIFFE_VALIDATOR: Final = "envoy.tls.cert_validator.spiffe"


@dataclass(frozen=True, slots=True)
class SdsResource:
    """One named Envoy ``Secret`` ready to send, with a version derived from its exact content.

    ``version`` is a SHA-256 prefix of the deterministic serialization, so two snapshots that
    produce the same secret give the same version and the servicer can tell "nothing changed"."""

    name: str
    version: str
    secret: Any = field(repr=False, compare=False)  # envoy ...tls.v3.Secret (holds the private key)
    serialized: bytes = field(repr=False, compare=False)

    @classmethod
    def of(cls, secret: Any) -> SdsResource:
        serialized: bytes = secret.SerializeToString(deterministic=True)
        return cls(secret.name, hashlib.sha256(serialized).hexdigest()[:16], secret, serialized)

    def to_any(self) -> any_pb2.Any:
        return any_pb2.Any(type_url=SECRET_TYPE_URL, value=self.serialized)


def build_secrets(
    snapshot: CacheSnapshot, selectors: frozenset[Selector], names: Iterable[str]
) -> dict[str, SdsResource]:
    """The resources among ``names`` that this caller may have right now, keyed by name.

    Names that are unknown, malformed, not entitled or not available yet are simply absent: the
    servicer remembers them and asks again when the next snapshot arrives."""
    svids = snapshot.svids_for(selectors)
    bundles: dict[TrustDomain, Bundle] | None = None  # computed on first need: most streams ask for one cert
    result: dict[str, SdsResource] = {}
    for name in names:
        if name in result:
            continue
        if name == DEFAULT:
            secret = _tls_certificate(name, svids[0]) if svids else None
        elif name in (ROOTCA, ALL) or name.startswith("spiffe://"):
            if bundles is None:
                bundles = snapshot.bundles_for(svids)
            secret = _named_validation_context(snapshot, svids, bundles, name)
        elif name.startswith(LEGACY_PREFIX):
            secret = _legacy_validation_context(name, snapshot.legacy_roots.get(name.removeprefix(LEGACY_PREFIX)))
        else:
            secret = None
        if secret is not None:
            result[name] = SdsResource.of(secret)
    return result


# Distinct (selectors, names) subscriptions whose results one snapshot keeps for sharing.
MAX_SHARED_SUBSCRIPTIONS = 1024

T = TypeVar("T")


class SnapshotMemo(Generic[T]):
    """``make(snapshot, selectors, names)``, done once per snapshot for every distinct (selectors, names)
    and handed to every stream that asks the same: when a change reaches 1,000 streams of one workload,
    its certificate and key are encoded once (``SnapshotMemo(build_secrets)``), and so is the SDS
    response that carries them. Only the newest snapshot's results are held (at most
    :data:`MAX_SHARED_SUBSCRIPTIONS` of them; beyond, results are made and not kept). The results are
    shared: callers must not change them. One event loop uses it: no lock."""

    def __init__(
        self,
        make: Callable[[CacheSnapshot, frozenset[Selector], tuple[str, ...]], T],
        max_subscriptions: int = MAX_SHARED_SUBSCRIPTIONS,
    ) -> None:
        self._make = make
        self._max = max_subscriptions
        self._snapshot: CacheSnapshot | None = None
        self._made: dict[tuple[frozenset[Selector], tuple[str, ...]], T] = {}

    def get(self, snapshot: CacheSnapshot, selectors: frozenset[Selector], names: Iterable[str]) -> T:
        if snapshot is not self._snapshot:
            self._snapshot, self._made = snapshot, {}
        key = (selectors, tuple(names))
        if key in self._made:
            return self._made[key]
        made = self._make(snapshot, selectors, key[1])
        if len(self._made) < self._max:
            self._made[key] = made
        return made


def _named_validation_context(
    snapshot: CacheSnapshot, svids: tuple[WorkloadSvid, ...], bundles: Mapping[TrustDomain, Bundle], name: str
) -> Any | None:
    own = snapshot.trust_domain
    if name == ROOTCA:
        chosen = [own]
    elif name == ALL:
        chosen = [own, *sorted((td for td in bundles if td != own), key=lambda td: td.name)]
    else:
        try:
            spiffe_id = SpiffeId.parse(name)
        except SpiffeIdError:
            return None
        if not spiffe_id.is_trust_domain_id:
            svid = next((s for s in svids if s.spiffe_id == spiffe_id), None)
            return None if svid is None else _tls_certificate(name, svid)
        chosen = [spiffe_id.trust_domain]
    return _validation_context(name, [(td, bundles[td]) for td in chosen if td in bundles], own, snapshot.crls)


def _legacy_validation_context(name: str, roots_pem: bytes | None) -> Any | None:
    """Envoy's default validator over the enterprise roots: chain to one of them; which server (DNS
    name) is the proxy's config's business. CRLs in the set go with the roots in ``trusted_ca``, where
    Envoy reads them; it then checks the server's own certificate against its issuer's CRL (and needs
    one: :mod:`bridge.legacy_roots`). None for a name the CA serves no roots under."""
    if roots_pem is None:
        return None
    return secret_pb2.Secret(
        name=name,
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_bytes=roots_pem),
            only_verify_leaf_cert_crl=holds_crls(roots_pem),
        ),
    )


def _tls_certificate(name: str, svid: WorkloadSvid) -> Any:
    chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in svid.cert_chain)
    key_pem = svid.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return secret_pb2.Secret(
        name=name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=chain_pem),
            private_key=base_pb2.DataSource(inline_bytes=key_pem),
        ),
    )


def _validation_context(
    name: str, bundles: list[tuple[TrustDomain, Bundle]], own: TrustDomain, crls: tuple[bytes, ...]
) -> Any | None:
    entries = []
    for td, bundle in bundles:
        if not bundle.x509_authorities:
            continue  # Envoy refuses a trust domain with no certificate; leave it out rather than be NACKed
        pem = bundle.x509_authorities_pem()
        if td == own:
            pem += b"".join(_crl_pem(der) for der in crls)
        entries.append(
            tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig.TrustDomain(
                name=td.name, trust_bundle=base_pb2.DataSource(inline_bytes=pem)
            )
        )
    if not entries:
        return None
    typed_config = any_pb2.Any()
    typed_config.Pack(
        tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig(trust_domains=entries), deterministic=True
    )
    return secret_pb2.Secret(
        name=name,
        validation_context=common_pb2.CertificateValidationContext(
            custom_validator_config=extension_pb2.TypedExtensionConfig(name=SPIFFE_VALIDATOR, typed_config=typed_config)
        ),
    )


def _crl_pem(der: bytes) -> bytes:
    return x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM)
