"""The agent's SPIFFE Workload API servicer (SPIFFE_Workload_API.md §4-§6, SPIFFE_Workload_Endpoint.md §3, §6).

A thin edge over the agent's :class:`~sds.cache.WorkloadCache`: every call must carry the metadata
``workload.spiffe.io: true`` (else INVALID_ARGUMENT, checked before anything else, as SSRF hardening
asks); the caller is then attested from its connection and gets what the registration entries
matching its selectors entitle it to.

* Streams (FetchX509SVID, FetchX509Bundles, FetchJWTBundles) answer at once with the full state and
  then again only when the caller's content changes (§4.3); each message is complete, never a diff
  (§4.4). A caller entitled to nothing gets PERMISSION_DENIED — at the start, or later when its last
  identity is redacted, which ends the stream (§5.2.1: a client then stops using its SVIDs). Bundles
  go only to callers with an identity, as SPIRE does by default.
* The caller is attested again before every stream message and before a unary answer leaves; if its
  selectors changed (its process executed another binary) or its process is gone, the call ends with
  PERMISSION_DENIED instead (see :func:`sds.attestor.check_still_attested`).
* Bundles are keyed by the trust domain's SPIFFE ID (``spiffe://<td>``) and never merged: the own
  trust domain's, plus the federated ones the caller's entries name (``federates_with``).
* FetchJWTSVID returns one JWT-SVID per entitled SPIFFE ID (or the one requested), minted through a
  :class:`JwtSvidMinter` (the agent's manager, which asks the CA). Hints stay unique in a response
  (§5.2.1, §6.2.1): a later SVID repeating a hint is left out and the misconfiguration logged.
* ValidateJWTSVID checks a token with the bundle of its subject's own trust domain: the own bundle
  (for any attested caller, since it hands out no credential) or exactly the federated bundle of that
  trust domain, if the caller's entries federate with it — a workload not federated with a trust
  domain cannot validate its JWT-SVIDs, even when another workload on this agent can. When the
  token names a key that the caller's copy of a federated trust domain's bundle lacks, the agent asks
  the CA for that partner's bundle at once (:class:`FederatedBundleRefresher`, the node API's
  ``RefreshFederatedBundle``) and validates once more with the answer, so a partner's brand-new key
  validates without waiting for the next refresh hint.

Domain errors are turned into status codes by the one table in :mod:`spiffe_core.errors`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any, Protocol

import grpc
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from google.protobuf import struct_pb2

from sds.attestor import check_still_attested
from sds.cache import CacheSnapshot, WorkloadCache, WorkloadSvid
from sds.metrics import WORKLOAD_API, AgentMetrics
from sds.refusal import Context, Refused, refusing_stream, refusing_unary
from spiffe_core.backoff import LogThrottle
from spiffe_core.bundle import Bundle
from spiffe_core.clock import Clock
from spiffe_core.errors import InvalidArgument, NotAuthorized, TrustmeshError, UnknownJwtKey, transport_status
from spiffe_core.jwt_svid import JwtSvid, check_audience, validate_jwt_svid
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from wire import workload_pb2

logger = logging.getLogger(__name__)


SECURITY_HEADER = "workload.spiffe.io"
SECURITY_HEADER_VALUE = "true"
# The largest request the Workload API server takes (gRPC's default is 4 MiB). Requests are small: the
# biggest legitimate one is a ValidateJWTSVID token or a FetchJWTSVID audience list (at most 32 KiB,
# spiffe_core.jwt_svid.check_audience).
MAX_REQUEST_BYTES = 1024 * 1024


class CallerAttestor(Protocol):
    """Who is calling, as selectors; raises :class:`~spiffe_core.errors.NotAuthorized` for a caller
    that cannot be attested (see :class:`sds.peer_endpoint.PeerAttestor`)."""

    async def attest(self, context: Context) -> frozenset[Selector]: ...


class JwtSvidMinter(Protocol):
    """Mints JWT-SVIDs for identities the agent holds (the agent's manager, which asks the CA)."""

    async def fetch_jwt_svid(self, spiffe_id: SpiffeId, audience: Sequence[str]) -> str:
        """A compact JWT-SVID for ``spiffe_id`` and ``audience``; raises TrustmeshError kinds."""
        ...


class FederatedBundleRefresher(Protocol):
    """Gets a federated trust domain's bundle from the CA now (the agent's manager, which asks the CA to
    fetch it when the CA's copy lacks ``key_id`` too)."""

    async def refresh_federated_bundle(self, trust_domain: TrustDomain, key_id: str) -> Bundle | None:
        """The CA's bundle of ``trust_domain`` after it tried to get one holding ``key_id`` (None before
        any); raises TrustmeshError kinds."""
        ...


@dataclass(frozen=True, slots=True)
class CallerBundles:
    """A :class:`~spiffe_core.sources.BundleSource` over the bundles one caller may use (the own trust
    domain's and those its entries federate with): exactly the trust domain asked for, never a merge."""

    bundles: Mapping[TrustDomain, Bundle]

    def get_bundle_for_trust_domain(self, trust_domain: TrustDomain) -> Bundle | None:
        return self.bundles.get(trust_domain)


_Builder = Callable[[CacheSnapshot, tuple[WorkloadSvid, ...], Mapping[TrustDomain, Bundle]], Any]


class WorkloadApiService:
    """Registered with ``workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server``."""

    def __init__(
        self,
        cache: WorkloadCache,
        attestor: CallerAttestor,
        jwt_minter: JwtSvidMinter,
        clock: Clock,
        *,
        bundle_refresher: FederatedBundleRefresher | None = None,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self._cache = cache
        self._attestor = attestor
        self._minter = jwt_minter
        self._clock = clock
        self._refresher = bundle_refresher  # None: validate with the bundles held, never ask the CA
        self._throttle = LogThrottle()
        self._metrics = metrics or AgentMetrics()

    @refusing_stream
    async def FetchX509SVID(self, request: Any, context: Context) -> AsyncGenerator[Any, None]:
        selectors = await self._admit(context)
        async for response in self._stream(selectors, _x509_svid_response, context):
            yield response

    @refusing_stream
    async def FetchX509Bundles(self, request: Any, context: Context) -> AsyncGenerator[Any, None]:
        selectors = await self._admit(context)
        async for response in self._stream(selectors, _x509_bundles_response, context):
            yield response

    @refusing_stream
    async def FetchJWTBundles(self, request: Any, context: Context) -> AsyncGenerator[Any, None]:
        selectors = await self._admit(context)
        async for response in self._stream(selectors, _jwt_bundles_response, context):
            yield response

    @refusing_unary
    async def FetchJWTSVID(self, request: Any, context: Context) -> Any:
        selectors = await self._admit(context)
        try:
            audience = check_audience(request.audience)
        except InvalidArgument as err:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"FetchJWTSVID audience refused: {err}") from err
        svids = _one_per_spiffe_id(self._cache.get_snapshot().svids_for(selectors))
        if request.spiffe_id:
            wanted = _parse_spiffe_id(request.spiffe_id)
            svids = tuple(s for s in svids if s.spiffe_id == wanted)
            if not svids:
                raise Refused(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"the caller is not entitled to {wanted}: no registration entry for it matches the "
                    "caller's selectors; ask for one of its own identities or leave spiffe_id empty",
                )
        elif not svids:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, _no_identity(selectors))
        minted = []
        for svid in _unique_hints(svids):
            token = await self._mint(svid.spiffe_id, audience)
            minted.append(workload_pb2.JWTSVID(spiffe_id=str(svid.spiffe_id), svid=token, hint=svid.hint))
        await self._recheck(selectors, context)
        return workload_pb2.JWTSVIDResponse(svids=minted)

    @refusing_unary
    async def ValidateJWTSVID(self, request: Any, context: Context) -> Any:
        selectors = await self._admit(context)
        for field, what in (("audience", "the audience this relying party answers to"), ("svid", "the token")):
            if not getattr(request, field):
                raise Refused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{field} is required: ValidateJWTSVID needs {what} (SPIFFE_Workload_API.md §6.2.3)",
                )
        snapshot = self._cache.get_snapshot()
        bundles = snapshot.bundles_for(snapshot.svids_for(selectors))
        try:
            svid = await self._validate(request.svid, request.audience, bundles, snapshot.trust_domain)
        except InvalidArgument as err:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"JWT-SVID is not valid: {err}") from err
        claims = struct_pb2.Struct()
        claims.update(dict(svid.claims))
        return workload_pb2.ValidateJWTSVIDResponse(spiffe_id=str(svid.spiffe_id), claims=claims)

    async def _validate(
        self, token: str, audience: str, bundles: Mapping[TrustDomain, Bundle], own: TrustDomain
    ) -> JwtSvid:
        """Validate with the caller's bundles; when the key is missing from the caller's copy of a
        federated trust domain's bundle, once more with the CA's fresh copy. Raises JwtSvidError kinds."""
        try:
            return validate_jwt_svid(
                token, audience=[audience], bundle_source=CallerBundles(bundles), now=self._clock.now()
            )
        except UnknownJwtKey as err:
            if self._refresher is None or err.trust_domain == own:
                raise  # the own trust domain's keys arrive on Sync before they sign
            unknown = err
        try:
            fresh = await self._refresher.refresh_federated_bundle(unknown.trust_domain, unknown.key_id)
        except TrustmeshError as err:
            self._log_refresh_failure(unknown.trust_domain, err)
            raise unknown from err  # refused as it would have been without asking
        if fresh is None or fresh.find_jwt_authority(unknown.key_id) is None:
            raise UnknownJwtKey(
                f"{unknown}; the CA's fresh copy of {unknown.trust_domain}'s bundle lacks it too",
                unknown.trust_domain,
                unknown.key_id,
            ) from unknown
        retry = CallerBundles({**bundles, unknown.trust_domain: fresh})
        return validate_jwt_svid(token, audience=[audience], bundle_source=retry, now=self._clock.now())

    def _log_refresh_failure(self, trust_domain: TrustDomain, err: TrustmeshError) -> None:
        """At most one line per trust domain per 10 s: a workload may send such tokens in a loop."""
        key = trust_domain.name  # bounded: only trust domains the caller federates with get here
        if self._throttle.should_log(time.monotonic(), key):
            logger.warning(
                "could not get a fresh bundle of %s from the CA for an unknown JWT key: %s%s",
                trust_domain,
                err,
                self._throttle.note(key),
            )

    async def _admit(self, context: Context) -> frozenset[Selector]:
        """The security header first (it guards against SSRF, so nothing else runs without it), then
        the caller's selectors."""
        metadata = context.invocation_metadata() or ()
        if not any(key == SECURITY_HEADER and value == SECURITY_HEADER_VALUE for key, value in metadata):
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"security header missing from request: every Workload API call must carry the gRPC "
                f"metadata '{SECURITY_HEADER}: {SECURITY_HEADER_VALUE}' (SPIFFE_Workload_Endpoint.md §3)",
            )
        try:
            return await self._attestor.attest(context)
        except NotAuthorized as err:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"the caller could not be attested: {err}") from err
        except Exception as err:
            raise _refusal_for(err, "attesting the caller") from err

    async def _recheck(self, admitted: frozenset[Selector], context: Context) -> None:
        """Attest the caller again right before something is sent: a process that executed another
        binary since (or exited) is refused what it was admitted for."""
        try:
            check_still_attested(admitted, await self._attestor.attest(context))
        except NotAuthorized as err:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"the caller is no longer attested: {err}") from err
        except Exception as err:
            raise _refusal_for(err, "attesting the caller again") from err

    async def _mint(self, spiffe_id: SpiffeId, audience: Sequence[str]) -> str:
        try:
            return await self._minter.fetch_jwt_svid(spiffe_id, audience)
        except Exception as err:
            raise _refusal_for(err, f"minting a JWT-SVID for {spiffe_id}") from err

    async def _stream(self, selectors: frozenset[Selector], build: _Builder, context: Context) -> AsyncIterator[Any]:
        """One response per snapshot that changes what this caller receives; the first at once, the
        others are pushes (their latency is measured)."""
        last: bytes | None = None
        with self._metrics.stream(WORKLOAD_API):
            async with aclosing(self._cache.subscribe()) as snapshots:
                async for snapshot in snapshots:
                    svids = snapshot.svids_for(selectors)
                    if not svids:
                        raise Refused(grpc.StatusCode.PERMISSION_DENIED, _no_identity(selectors))
                    bundles = snapshot.bundles_for(svids)
                    own = bundles.get(snapshot.trust_domain)
                    if own is None or not own.x509_authorities:
                        raise Refused(
                            grpc.StatusCode.UNAVAILABLE,
                            f"the agent holds no bundle for its trust domain {snapshot.trust_domain} yet; retry "
                            "with backoff (it arrives with the agent's first update from the CA)",
                        )
                    response = build(snapshot, svids, bundles)
                    encoded = response.SerializeToString(deterministic=True)
                    if encoded != last:
                        await self._recheck(selectors, context)
                        if last is not None:
                            self._metrics.pushed(WORKLOAD_API, snapshot)
                        last = encoded
                        yield response


def _x509_svid_response(
    snapshot: CacheSnapshot, svids: tuple[WorkloadSvid, ...], bundles: Mapping[TrustDomain, Bundle]
) -> Any:
    own = bundles[snapshot.trust_domain]  # the agent holds SVIDs of its own trust domain only
    return workload_pb2.X509SVIDResponse(
        svids=[
            workload_pb2.X509SVID(
                spiffe_id=str(svid.spiffe_id),
                x509_svid=b"".join(cert.public_bytes(Encoding.DER) for cert in svid.cert_chain),
                x509_svid_key=svid.private_key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption()),
                bundle=_x509_der(own),
                hint=svid.hint,
            )
            for svid in _unique_hints(svids)
        ],
        crl=snapshot.crls,
        federated_bundles=_x509_bundles(b for td, b in bundles.items() if td != snapshot.trust_domain),
    )


def _x509_bundles_response(
    snapshot: CacheSnapshot, svids: tuple[WorkloadSvid, ...], bundles: Mapping[TrustDomain, Bundle]
) -> Any:
    return workload_pb2.X509BundlesResponse(crl=snapshot.crls, bundles=_x509_bundles(bundles.values()))


def _jwt_bundles_response(
    snapshot: CacheSnapshot, svids: tuple[WorkloadSvid, ...], bundles: Mapping[TrustDomain, Bundle]
) -> Any:
    """JWK Sets with only the JWT authorities (§6.2.2: no keys of other uses). An empty set is kept:
    it is valid JSON that says "trust no key of this trust domain"."""
    return workload_pb2.JWTBundlesResponse(
        bundles={
            str(td.id): json.dumps(
                replace(bundle, x509_authorities=()).to_jwks(), sort_keys=True, separators=(",", ":")
            ).encode()
            for td, bundle in bundles.items()
        }
    )


def _x509_bundles(bundles: Iterable[Bundle]) -> dict[str, bytes]:
    """DER authorities per trust domain; a trust domain without X.509 authorities (a peer that
    publishes only JWT keys) is left out, since an empty DER string is not a bundle clients can read."""
    return {str(b.trust_domain.id): _x509_der(b) for b in bundles if b.x509_authorities}


def _x509_der(bundle: Bundle) -> bytes:
    return b"".join(cert.public_bytes(Encoding.DER) for cert in bundle.x509_authorities)


def _unique_hints(svids: Iterable[WorkloadSvid]) -> tuple[WorkloadSvid, ...]:
    seen: set[str] = set()
    kept: list[WorkloadSvid] = []
    for svid in svids:
        if svid.hint:
            if svid.hint in seen:
                logger.warning(
                    "registration entry %s (%s) repeats the hint %r of an earlier entry of the same caller; "
                    "hints must be unique per workload, so it is left out — give it another hint",
                    svid.entry_id,
                    svid.spiffe_id,
                    svid.hint,
                )
                continue
            seen.add(svid.hint)
        kept.append(svid)
    return tuple(kept)


def _one_per_spiffe_id(svids: Iterable[WorkloadSvid]) -> tuple[WorkloadSvid, ...]:
    """A JWT-SVID names only the SPIFFE ID: two entries with one ID need one token (the first's hint)."""
    seen: set[SpiffeId] = set()
    kept: list[WorkloadSvid] = []
    for svid in svids:
        if svid.spiffe_id not in seen:
            seen.add(svid.spiffe_id)
            kept.append(svid)
    return tuple(kept)


def _no_identity(selectors: frozenset[Selector]) -> str:
    return (
        f"no identity issued to this caller: no registration entry on this agent matches its selectors "
        f"({', '.join(str(s) for s in sorted(selectors))}); register an entry with these selectors, "
        "or retry with backoff if one was just created"
    )


def _parse_spiffe_id(text: str) -> SpiffeId:
    try:
        return SpiffeId.parse(text)
    except InvalidArgument as err:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"spiffe_id is not a SPIFFE ID: {err}") from err


def _refusal_for(err: Exception, doing: str) -> Refused:
    """The status the error table gives the error's kind; anything else is logged and answered
    INTERNAL without detail."""
    status = transport_status(err)
    if status is None:
        logger.error("internal error while %s", doing, exc_info=err)
        return Refused(grpc.StatusCode.INTERNAL, f"internal error while {doing}")
    return Refused(grpc.StatusCode[status[1]], str(err))
