"""The agent's Envoy SDS v3 server: StreamSecrets, DeltaSecrets and FetchSecrets (DESIGN §4).

Implements ``envoy/service/secret/v3/sds.proto`` following the xDS transport protocol
(``api-docs/xds_protocol.rst``). The servicer is a thin edge: it attests the caller when a stream
opens through a :class:`CallerAttestor` (and again before every response, ending the stream with
PERMISSION_DENIED when the caller's selectors changed or its process is gone), asks
:func:`sds.secrets.build_secrets` what the caller may have (once per snapshot for every distinct
subscription, shared by the streams that ask the same: :class:`sds.secrets.SnapshotMemo`), and keeps
per-stream protocol state. A StreamSecrets response is encoded once for all those streams, too: what
differs between them is the nonce alone, appended to the shared encoding (:class:`SotwAnswer`), so a
change pushed to 1,000 streams of one workload serializes its response once, not 1,000 times.

State of the world (StreamSecrets):
  * every response carries a fresh nonce and a ``version_info`` made of the snapshot version and a
    hash of the response content;
  * a request whose ``response_nonce`` is not the latest nonce sent on the stream is stale and is
    ignored (the client will send the current one with its full subscription); the first request of
    a stream carries no nonce and is always answered;
  * a request carrying the latest nonce is an ACK, or a NACK when ``error_detail`` is set — a NACK
    is logged and the rejected content is never sent again;
  * names that are added are answered at once with what is available; names not available yet are
    remembered and pushed as soon as a snapshot has them; a response holds every subscribed resource
    the caller may have, each name once;
  * a new cache snapshot is pushed only when it changes the content of this stream's resources.

Incremental (DeltaSecrets): subscriptions change by ``resource_names_subscribe`` / ``_unsubscribe``
and are applied from every request (a stale nonce only means the ACK/NACK is for an older response);
the server tracks which version of each resource the client holds (seeded from
``initial_resource_versions`` on the first request), sends only resources whose version differs, and
lists in ``removed_resources`` those the client holds that disappeared or are no longer entitled.

FetchSecrets is the unary variant: all named resources or ``NOT_FOUND``. Envoy itself never calls it
(its REST subscriptions use HTTP/JSON, not this gRPC method); it exists for tools and debugging.

Limits, so one caller's subscription cannot stall the others: a request, and a stream's whole
subscription, names at most ``max_resource_names`` resources, each at most
:data:`MAX_RESOURCE_NAME_BYTES` long. Beyond them the call ends with RESOURCE_EXHAUSTED (too many
names) or INVALID_ARGUMENT (a name too long), checked before any name is looked at.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2

from sds.attestor import check_still_attested
from sds.cache import CacheSnapshot, WorkloadCache
from sds.metrics import SDS, AgentMetrics
from sds.refusal import Context, Refused, refusing_stream, refusing_unary
from sds.secrets import SECRET_TYPE_URL, SdsResource, SnapshotMemo, build_secrets
from spiffe_core.errors import NotAuthorized, shown, transport_status
from spiffe_core.selectors import Selector

logger = logging.getLogger(__name__)

# What a stream asks for its resources: build_secrets, or a SnapshotMemo's get.
Build = Callable[[CacheSnapshot, frozenset[Selector], Iterable[str]], Mapping[str, SdsResource]]
SERVICE = sds_pb2.DESCRIPTOR.services_by_name["SecretDiscoveryService"].full_name

# Names a stream may subscribe to (the agent's limits.sds_max_resource_names). Envoy asks for one or a
# few per stream ('default', 'ROOTCA', a SPIFFE ID, 'legacy/<name>'); the bound keeps a stream's work per
# request and per snapshot small. Unknown names cost nothing beyond their place in this bound.
MAX_RESOURCE_NAMES = 1024
# The longest name: SPIFFE IDs are at most 2048 bytes (SPIFFE-ID.md §2.3), the other names are shorter.
MAX_RESOURCE_NAME_BYTES = 2048


class CallerAttestor(Protocol):
    """Who is calling, as selectors. Raises :class:`~spiffe_core.errors.NotAuthorized` for a caller
    the agent does not know. Peer-credential attestation lives elsewhere; this edge only consumes it."""

    async def attest(self, context: Context) -> frozenset[Selector]: ...


@dataclass(frozen=True, slots=True)
class SotwAnswer:
    """A StreamSecrets response to one subscription of one snapshot, encoded once for every stream that
    asks the same; only the nonce is a stream's own (:meth:`with_nonce`)."""

    versions: Mapping[str, str]  # name → version of each resource in it
    encoded: bytes  # the DiscoveryResponse without its nonce

    @classmethod
    def of(cls, snapshot: CacheSnapshot, resources: Mapping[str, SdsResource]) -> SotwAnswer:
        response = discovery_pb2.DiscoveryResponse(
            version_info=_version_info(snapshot, resources),
            resources=[r.to_any() for r in resources.values()],
            type_url=SECRET_TYPE_URL,
        )
        return cls(_versions(resources), response.SerializeToString())

    def with_nonce(self, nonce: str) -> bytes:
        """The whole response. Protobuf parses two encodings one after the other as their merge, and the
        shared part has no nonce, so appending the encoding of a message holding only the nonce is exactly
        the encoding of the response with that nonce."""
        nonce_field: bytes = discovery_pb2.DiscoveryResponse(nonce=nonce).SerializeToString()
        return self.encoded + nonce_field


def add_sds_servicer(servicer: SecretDiscoveryService, server: grpc.aio.Server) -> None:
    """Serve ``servicer`` on ``server`` as the generated ``add_SecretDiscoveryServiceServicer_to_server``
    does, except that StreamSecrets responses leave as the bytes the servicer encoded (no serializer)."""
    handlers = {
        "StreamSecrets": grpc.stream_stream_rpc_method_handler(
            servicer.StreamSecrets,
            request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
            response_serializer=None,  # already encoded: SotwAnswer.with_nonce
        ),
        "DeltaSecrets": grpc.stream_stream_rpc_method_handler(
            servicer.DeltaSecrets,
            request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
            response_serializer=discovery_pb2.DeltaDiscoveryResponse.SerializeToString,
        ),
        "FetchSecrets": grpc.unary_unary_rpc_method_handler(
            servicer.FetchSecrets,
            request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
            response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


class SecretDiscoveryService:
    """Served on a grpc.aio server by :func:`add_sds_servicer`."""

    def __init__(
        self,
        cache: WorkloadCache,
        attestor: CallerAttestor,
        *,
        max_resource_names: int = MAX_RESOURCE_NAMES,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self._cache = cache
        self._attestor = attestor
        self._max_names = max_resource_names
        self._secrets = SnapshotMemo(build_secrets)  # streams asking the same of one snapshot share one build
        self._answers = SnapshotMemo(self._answer)  # ... and one encoded StreamSecrets answer
        self._metrics = metrics or AgentMetrics()

    def _answer(self, snapshot: CacheSnapshot, selectors: frozenset[Selector], names: Iterable[str]) -> SotwAnswer:
        return SotwAnswer.of(snapshot, self._secrets.get(snapshot, selectors, names))

    @refusing_stream
    async def StreamSecrets(
        self, request_iterator: AsyncIterator[Any], context: Context
    ) -> AsyncGenerator[bytes, None]:
        selectors = await self._attest(context)
        stream = _SotwStream(selectors, context.peer(), self._max_names, self._answers.get)
        async for response in self._serve(stream, selectors, request_iterator, context):
            yield response

    @refusing_stream
    async def DeltaSecrets(self, request_iterator: AsyncIterator[Any], context: Context) -> AsyncGenerator[Any, None]:
        selectors = await self._attest(context)
        stream = _DeltaStream(selectors, context.peer(), self._max_names, self._secrets.get)
        async for response in self._serve(stream, selectors, request_iterator, context):
            yield response

    @refusing_unary
    async def FetchSecrets(self, request: Any, context: Context) -> Any:
        selectors = await self._attest(context)
        _refuse(_type_url_problem(request.type_url))
        _refuse(_names_problem(request.resource_names, self._max_names))
        names = _unique(request.resource_names)
        if not names:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                "FetchSecrets needs resource_names; SDS has no wildcard — name the secrets "
                "('default', 'ROOTCA', 'ALL', a SPIFFE ID, 'spiffe://<trust domain>' or 'legacy/<name>')",
            )
        snapshot = self._cache.get_snapshot()
        resources = build_secrets(snapshot, selectors, names)
        missing = [n for n in names if n not in resources]
        if missing:
            raise Refused(
                grpc.StatusCode.NOT_FOUND,
                f"secrets {_names_shown(missing)} are not available to this caller: unknown names, not entitled by its "
                "selectors, or not issued yet — retry later or use StreamSecrets to wait for them",
            )
        await self._recheck(selectors, context)
        return discovery_pb2.DiscoveryResponse(
            version_info=_version_info(snapshot, resources),
            resources=[resources[n].to_any() for n in names],
            type_url=SECRET_TYPE_URL,
            nonce=_nonce(),
        )

    async def _serve(
        self, stream: _StreamState, selectors: frozenset[Selector], requests: AsyncIterator[Any], context: Context
    ) -> AsyncGenerator[Any, None]:
        """Feed a stream's requests and the cache's snapshots to its protocol state; yield its responses.
        A response to a new snapshot (not to a request) is a push: its latency is measured."""

        def judge(request: Any) -> _Outcome | None:
            refusal = _type_url_problem(request.type_url) or stream.names_problem(request)
            if refusal is not None:
                return _Refused(refusal)
            answer = stream.on_request(request, self._cache.get_snapshot())
            return None if answer is None else _Answer(answer)

        with self._metrics.stream(SDS):
            async with aclosing(_events(requests, judge, self._cache)) as events:
                async for event in events:
                    if isinstance(event, CacheSnapshot):
                        response = stream.on_snapshot(event)
                    elif isinstance(event, _Refused):
                        raise Refused(*event.refusal)
                    else:
                        response = event.response
                    if response is not None:
                        await self._recheck(selectors, context)
                        if isinstance(event, CacheSnapshot):
                            self._metrics.pushed(SDS, event)
                        yield response

    async def _recheck(self, admitted: frozenset[Selector], context: Context) -> None:
        """Attest again right before a response leaves: a caller whose process executed another binary
        (or exited) since it was admitted gets nothing more."""
        now = await self._attest(context)
        try:
            check_still_attested(admitted, now)
        except NotAuthorized as err:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"SDS caller is not authorized: {err}") from err

    async def _attest(self, context: Context) -> frozenset[Selector]:
        try:
            return await self._attestor.attest(context)
        except NotAuthorized as err:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"SDS caller is not authorized: {err}") from err
        except Exception as err:
            status = transport_status(err)
            if status is None:
                logger.exception("attesting the SDS caller %s failed", context.peer())
                raise Refused(grpc.StatusCode.INTERNAL, "internal error while attesting the SDS caller") from err
            raise Refused(grpc.StatusCode[status[1]], str(err)) from err


class _StreamState(Protocol):
    def names_problem(self, request: Any) -> _Refusal | None: ...
    def on_request(self, request: Any, snapshot: CacheSnapshot) -> Any | None: ...
    def on_snapshot(self, snapshot: CacheSnapshot) -> Any | None: ...


class _SotwStream:
    """Protocol state of one StreamSecrets stream (pure: requests and snapshots in, responses out)."""

    def __init__(
        self,
        selectors: frozenset[Selector],
        peer: str,
        max_names: int,
        answer: Callable[[CacheSnapshot, frozenset[Selector], Iterable[str]], SotwAnswer],
    ) -> None:
        self._answer = answer
        self._selectors = selectors
        self._peer = peer
        self._max_names = max_names
        self._names: tuple[str, ...] = ()
        self._nonce: str | None = None  # of the latest response; None until the first one is sent
        self._sent: Mapping[str, str] = {}  # name → version in the latest response
        self._rejected = False  # the latest response was NACKed

    def names_problem(self, request: Any) -> _Refusal | None:
        """Why the request's names end the stream (each request is the whole subscription), or None."""
        return _names_problem(request.resource_names, self._max_names)

    def on_request(self, request: Any, snapshot: CacheSnapshot) -> bytes | None:
        first = self._nonce is None
        if not first:
            if request.response_nonce != self._nonce:
                logger.debug("SDS %s: ignoring request with stale nonce %r", self._peer, request.response_nonce)
                return None
            self._rejected = request.HasField("error_detail")
            if self._rejected:
                logger.warning(
                    "SDS %s rejected version %r of %s: %s",
                    self._peer,
                    request.version_info,
                    sorted(self._sent),
                    request.error_detail.message,
                )
        names = _unique(request.resource_names)
        added = set(names) - set(self._names)
        self._names = names
        if not first and not added:
            return None
        answer = self._answer(snapshot, self._selectors, names)
        if self._rejected and answer.versions == self._sent:
            return None  # the added names are not available yet; answering would repeat rejected content
        return self._respond(answer)

    def on_snapshot(self, snapshot: CacheSnapshot) -> bytes | None:
        if self._nonce is None:
            return None  # nothing asked yet; the first request is answered from the newest snapshot
        answer = self._answer(snapshot, self._selectors, self._names)
        if answer.versions == {n: v for n, v in self._sent.items() if n in self._names}:
            return None
        return self._respond(answer)

    def _respond(self, answer: SotwAnswer) -> bytes:
        self._nonce = _nonce()
        self._sent = answer.versions
        self._rejected = False
        return answer.with_nonce(self._nonce)


class _DeltaStream:
    """Protocol state of one DeltaSecrets stream (pure: requests and snapshots in, responses out)."""

    def __init__(
        self,
        selectors: frozenset[Selector],
        peer: str,
        max_names: int = MAX_RESOURCE_NAMES,
        build: Build = build_secrets,
    ) -> None:
        self._build = build
        self._selectors = selectors
        self._peer = peer
        self._max_names = max_names
        self._subscribed: dict[str, None] = {}  # ordered set
        self._client_versions: dict[str, str] = {}  # what the client holds, by name
        self._nonce: str | None = None
        self._started = False

    def names_problem(self, request: Any) -> _Refusal | None:
        """Why the request ends the stream: it names too many or too long names, or the subscription
        it leaves would be too large. None when it may be applied."""
        problem = _names_problem(request.resource_names_subscribe, self._max_names) or _names_problem(
            request.resource_names_unsubscribe, self._max_names, "resource_names_unsubscribe"
        )
        if problem is None and not self._started:
            problem = _names_problem(request.initial_resource_versions, self._max_names, "initial_resource_versions")
        if problem is not None:
            return problem
        after = (self._subscribed.keys() | set(request.resource_names_subscribe)) - set(
            request.resource_names_unsubscribe
        )
        if len(after) > self._max_names:
            return _too_many(len(after), self._max_names, "the stream's subscription")
        return None

    def on_request(self, request: Any, snapshot: CacheSnapshot) -> Any | None:
        if request.response_nonce and request.response_nonce == self._nonce:
            if request.HasField("error_detail"):
                logger.warning("SDS %s rejected delta update: %s", self._peer, request.error_detail.message)
        elif request.response_nonce:
            logger.debug("SDS %s: delta request answers stale nonce %r", self._peer, request.response_nonce)
        for name in request.resource_names_subscribe:
            self._subscribed[name] = None
        for name in request.resource_names_unsubscribe:
            self._subscribed.pop(name, None)
            self._client_versions.pop(name, None)
        if not self._started:
            self._started = True
            self._client_versions = {
                n: v for n, v in request.initial_resource_versions.items() if n in self._subscribed
            }
        return self._diff(snapshot)

    def on_snapshot(self, snapshot: CacheSnapshot) -> Any | None:
        return self._diff(snapshot) if self._started else None

    def _diff(self, snapshot: CacheSnapshot) -> Any | None:
        resources = self._build(snapshot, self._selectors, self._subscribed)
        changed = [r for n, r in resources.items() if self._client_versions.get(n) != r.version]
        removed = [n for n in self._client_versions if n not in resources]
        if not changed and not removed:
            return None
        for resource in changed:
            self._client_versions[resource.name] = resource.version
        for name in removed:
            del self._client_versions[name]
        self._nonce = _nonce()
        return discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=str(snapshot.version),
            resources=[discovery_pb2.Resource(name=r.name, version=r.version, resource=r.to_any()) for r in changed],
            removed_resources=removed,
            type_url=SECRET_TYPE_URL,
            nonce=self._nonce,
        )


@dataclass(frozen=True, slots=True)
class _Answer:
    """A request's answer, to be sent by the stream."""

    response: Any


@dataclass(frozen=True, slots=True)
class _Refused:
    """A request that ends the stream with this status."""

    refusal: _Refusal


_Outcome = _Answer | _Refused


async def _events(
    requests: AsyncIterator[Any], judge: Callable[[Any], _Outcome | None], cache: WorkloadCache
) -> AsyncGenerator[_Outcome | CacheSnapshot, None]:
    """What a stream must act on, as it comes: the outcome of each request that has one, and cache
    snapshots; ends when the client half-closes.

    Both sources are read concurrently, so a push never waits for the client to speak. One reader task
    per stream takes the client's requests and passes each to ``judge`` as it arrives (the protocol state is
    the stream's, on the same event loop); a request with nothing to send — every ACK — ends there.
    An outcome is handed to the stream before the next request is read, so a client cannot make the
    stream hold more than one. Snapshots come from ``cache.next_change`` (newest wins: a slow stream
    skips intermediate ones). Either source wakes the stream through a future of its own: a push to
    1,000 streams and their ACKs cost less than with an ``asyncio.wait`` and a task per request, and an
    ACK does not wake the stream at all (docs/performance.md). The stream's wait for a snapshot is
    forgotten when the stream ends."""
    inbox = _Inbox(cache)
    reader = asyncio.ensure_future(inbox.read(requests, judge))
    reader.add_done_callback(inbox.wake)
    try:
        while True:
            if inbox.outcome is not None:
                yield inbox.take_outcome()
            elif inbox.snapshot.done():
                yield inbox.take_snapshot()
            elif reader.done():
                reader.result()  # the client's stream failed: raise as it did
                return
            else:
                await inbox.wait()
    finally:
        inbox.close()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


class _Inbox:
    """What :func:`_events` has to hand its stream: at most one request's outcome and the next snapshot."""

    def __init__(self, cache: WorkloadCache) -> None:
        self._cache = cache
        self._loop = asyncio.get_running_loop()
        self._woken: asyncio.Future[None] | None = None  # the stream is waiting on it
        self._taken: asyncio.Future[None] | None = None  # the reader is waiting on it
        self.outcome: _Outcome | None = None
        self.snapshot = cache.next_change(seen=-1)
        self.snapshot.add_done_callback(self.wake)

    async def read(self, requests: AsyncIterator[Any], judge: Callable[[Any], _Outcome | None]) -> None:
        """The reader task: judge each request; hand over an outcome and wait until the stream took it."""
        async for request in requests:
            outcome = judge(request)
            if outcome is None:
                continue
            self.outcome = outcome
            self._taken = self._loop.create_future()
            self.wake()
            await self._taken

    def take_outcome(self) -> _Outcome:
        outcome, self.outcome = self.outcome, None
        assert outcome is not None
        if self._taken is not None and not self._taken.done():
            self._taken.set_result(None)
        return outcome

    def take_snapshot(self) -> CacheSnapshot:
        snapshot = self.snapshot.result()
        self.snapshot = self._cache.next_change(seen=snapshot.version)
        self.snapshot.add_done_callback(self.wake)
        return snapshot

    def wake(self, _: object = None) -> None:
        if self._woken is not None and not self._woken.done():
            self._woken.set_result(None)

    async def wait(self) -> None:
        self._woken = self._loop.create_future()
        await self._woken

    def close(self) -> None:
        self._cache.forget(self.snapshot)


# How much of what a client sent a refusal repeats: status details travel as an HTTP/2 header, which
# gRPC caps at 16 KiB, and a request may hold megabytes (a type URL, 1,024 names of 2 KiB).
_SHOWN_CHARACTERS = 100
_SHOWN_NAMES = 5


def _names_shown(names: Sequence[str]) -> str:
    listed = ", ".join(shown(name, _SHOWN_CHARACTERS) for name in names[:_SHOWN_NAMES])
    more = len(names) - _SHOWN_NAMES
    return f"[{listed}{f', and {more} more' if more > 0 else ''}]"


def _type_url_problem(type_url: str) -> _Refusal | None:
    if type_url and type_url != SECRET_TYPE_URL:
        return (
            grpc.StatusCode.INVALID_ARGUMENT,
            f"type_url {shown(type_url, _SHOWN_CHARACTERS)} is not served here; the SDS endpoint serves only "
            f"{SECRET_TYPE_URL!r}",
        )
    return None


_Refusal = tuple[grpc.StatusCode, str]


def _refuse(refusal: _Refusal | None) -> None:
    if refusal is not None:
        raise Refused(*refusal)


def _names_problem(names: Collection[str], max_names: int, what: str = "the request") -> _Refusal | None:
    """Too many names (counted before any is read), or one longer than a SPIFFE ID may be."""
    if len(names) > max_names:
        return _too_many(len(names), max_names, what)
    for index, name in enumerate(names):
        size = len(name.encode("utf-8", "surrogatepass"))
        if size > MAX_RESOURCE_NAME_BYTES:
            return (
                grpc.StatusCode.INVALID_ARGUMENT,
                f"resource name #{index} of {what} ({name[:32]!r}…) is {size} bytes long; SDS names are "
                f"'default', 'ROOTCA', 'ALL', 'legacy/<name>' or SPIFFE IDs, at most {MAX_RESOURCE_NAME_BYTES} bytes "
                "(SPIFFE-ID.md §2.3)",
            )
    return None


def _too_many(count: int, max_names: int, what: str) -> _Refusal:
    return (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"{what} names {count} resources; an SDS stream may subscribe to at most {max_names} "
        "(agent setting limits.sds_max_resource_names) — subscribe to the secrets this proxy uses",
    )


def _unique(names: Iterable[str]) -> tuple[str, ...]:
    """Requested names in order, each once (a response must never repeat a name)."""
    return tuple(dict.fromkeys(names))


def _versions(resources: Mapping[str, SdsResource]) -> dict[str, str]:
    return {name: r.version for name, r in resources.items()}


def _version_info(snapshot: CacheSnapshot, resources: Mapping[str, SdsResource]) -> str:
    digest = hashlib.sha256("\n".join(f"{n}={r.version}" for n, r in sorted(resources.items())).encode())
    return f"{snapshot.version}-{digest.hexdigest()[:12]}"


# xDS asks a nonce to tell one response of a stream from another, nothing more: a counter of the
# agent process does (a reconnecting proxy opens a new stream), and costs less than a random value on
# each of 1,000 pushes.
_NONCES = itertools.count(1)


def _nonce() -> str:
    return str(next(_NONCES))
