"""The node API's one error table at the gRPC edge: domain errors keep their message under their status
code; anything else is INTERNAL with a generic message (the detail goes to the log only)."""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import grpc
import pytest

from ca.node_api import NodeServicer, peer_source
from spiffe_core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NoActiveAuthority,
    NotAuthenticated,
    NotAuthorized,
    NotFound,
    ResourceExhausted,
    UpstreamUnavailable,
)
from wire import node_pb2


class FakeContext:
    """Just what the edge uses: the peer's address, metadata and auth context (no certificate), and the
    status it sets."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.trailing_metadata: tuple[tuple[str, str], ...] = ()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5000"

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("user-agent", "trustmesh-agent/0.0.1 grpc-python/1.0"),)

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailing_metadata = tuple(metadata)


class RaisingNode:
    def __init__(self, error: Exception) -> None:
        self._error = error

    def attest(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        raise self._error


async def attest_refused(error: Exception) -> FakeContext:
    """The status the edge sets for ``error``; the call ends without an answer."""
    servicer = NodeServicer(RaisingNode(error), None, None, None)  # type: ignore[arg-type]
    context = FakeContext()
    answer = await servicer.Attest(node_pb2.AttestRequest(method="join_token"), context)  # type: ignore[arg-type]
    assert answer is None
    return context


@pytest.mark.parametrize(
    ("error", "code"),
    [
        pytest.param(InvalidArgument("bad CSR"), grpc.StatusCode.INVALID_ARGUMENT, id="invalid"),
        pytest.param(NotAuthenticated("no cert"), grpc.StatusCode.UNAUTHENTICATED, id="unauthenticated"),
        pytest.param(NotAuthorized("not yours"), grpc.StatusCode.PERMISSION_DENIED, id="not-authorized"),
        pytest.param(NotFound("gone"), grpc.StatusCode.NOT_FOUND, id="not-found"),
        pytest.param(AlreadyExists("twice"), grpc.StatusCode.ALREADY_EXISTS, id="exists"),
        pytest.param(FailedPrecondition("stale"), grpc.StatusCode.FAILED_PRECONDITION, id="precondition"),
        pytest.param(NoActiveAuthority("none"), grpc.StatusCode.FAILED_PRECONDITION, id="no-authority"),
        pytest.param(UpstreamUnavailable("db down"), grpc.StatusCode.UNAVAILABLE, id="unavailable"),
        pytest.param(ResourceExhausted("slow down", 1.0), grpc.StatusCode.RESOURCE_EXHAUSTED, id="exhausted"),
    ],
)
async def test_domain_errors_keep_their_message_under_their_code(error: Exception, code: grpc.StatusCode) -> None:
    aborted = await attest_refused(error)
    assert (aborted.code, aborted.details) == (code, str(error))


async def test_unknown_errors_are_internal_without_their_detail(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="ca.node_api"):
        aborted = await attest_refused(RuntimeError("secret detail: /var/lib/key"))
    assert (aborted.code, aborted.details) == (grpc.StatusCode.INTERNAL, "internal error; see the CA's log")
    assert "secret detail" in caplog.text


async def test_a_rate_limit_refusal_carries_its_wait_in_milliseconds() -> None:
    aborted = await attest_refused(ResourceExhausted("slow down; retry in 0.3 s", retry_after=0.25))
    assert aborted.trailing_metadata == (("retry-after-ms", "250"),)


@pytest.mark.parametrize(
    ("peer", "source"),
    [
        pytest.param("ipv4:10.1.2.3:50051", "10.1.2.3", id="ipv4"),
        pytest.param("ipv6:[2001:db8::1]:50051", "2001:db8::1", id="ipv6"),
        pytest.param("ipv6:%5B::1%5D:50051", "::1", id="ipv6-percent-encoded"),
        pytest.param("unix:/run/x.sock", "unix:/run/x.sock", id="unix"),
    ],
)
def test_the_attestation_source_is_the_peer_address_without_its_port(peer: str, source: str) -> None:
    assert peer_source(peer) == source
