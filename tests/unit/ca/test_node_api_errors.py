"""The node API's one error table at the gRPC edge: domain errors keep their message under their status
code; anything else is INTERNAL with a generic message (the detail goes to the log only)."""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import grpc
import pytest

from ca.node_api import NodeServicer
from spiffe_core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NoActiveAuthority,
    NotAuthenticated,
    NotAuthorized,
    NotFound,
    UpstreamUnavailable,
)
from wire import node_pb2


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details


class FakeContext:
    """Just what the edge uses: the peer's auth context (no certificate) and abort."""

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise Aborted(code, details)


class RaisingNode:
    def __init__(self, error: Exception) -> None:
        self._error = error

    def check_trust_domain(self, _claimed: str) -> None:
        return None

    def attest(self, *_args: Any) -> NoReturn:
        raise self._error


async def attest_refused(error: Exception) -> Aborted:
    servicer = NodeServicer(RaisingNode(error), None, None, None)  # type: ignore[arg-type]
    with pytest.raises(Aborted) as caught:
        await servicer.Attest(node_pb2.AttestRequest(method="join_token"), FakeContext())  # type: ignore[arg-type]
    return caught.value


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
