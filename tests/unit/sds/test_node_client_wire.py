"""The node client's translations (sds/node_client.py): gRPC status codes to error kinds, and SyncUpdate
messages to SyncState values — all of an update or none of it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from sds.node_client import EntryRecord, decode_sync_update, rpc_error
from spiffe_core.errors import (
    AlreadyExists,
    BundleError,
    FailedPrecondition,
    InvalidArgument,
    NotAuthenticated,
    NotAuthorized,
    NotFound,
    TrustmeshError,
    UpstreamUnavailable,
)
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.agent_pki import SigningCa
from wire import node_pb2

TD = TrustDomain("example.org")
PEER = TrustDomain("peer.example")
NOW = datetime.now(UTC)
CA = SigningCa.create(TD, NOW)
PEER_CA = SigningCa.create(PEER, NOW)
ADDRESS = "10.0.0.1:8081"


def failure(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        pytest.param(grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument, id="invalid-argument"),
        pytest.param(grpc.StatusCode.UNAUTHENTICATED, NotAuthenticated, id="unauthenticated"),
        pytest.param(grpc.StatusCode.PERMISSION_DENIED, NotAuthorized, id="permission-denied"),
        pytest.param(grpc.StatusCode.NOT_FOUND, NotFound, id="not-found"),
        pytest.param(grpc.StatusCode.ALREADY_EXISTS, AlreadyExists, id="already-exists"),
        pytest.param(grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition, id="failed-precondition"),
        pytest.param(grpc.StatusCode.INTERNAL, TrustmeshError, id="internal"),
    ],
)
def test_a_refusal_keeps_the_cas_message_under_its_error_kind(code: grpc.StatusCode, kind: type[Exception]) -> None:
    err = rpc_error(failure(code, "entry e-1 is not parented to the agent"), "SignX509Svids", ADDRESS)
    assert type(err) is kind
    assert str(err) == f"node API SignX509Svids at {ADDRESS} refused: entry e-1 is not parented to the agent"


@pytest.mark.parametrize(
    "code",
    [
        pytest.param(grpc.StatusCode.UNAVAILABLE, id="unavailable"),
        pytest.param(grpc.StatusCode.DEADLINE_EXCEEDED, id="deadline"),
    ],
)
def test_an_unreachable_ca_is_upstream_unavailable(code: grpc.StatusCode) -> None:
    err = rpc_error(failure(code, "failed to connect"), "Sync", ADDRESS)
    assert type(err) is UpstreamUnavailable
    assert (
        str(err) == f"node API Sync at {ADDRESS} is unavailable (failed to connect); is the CA running and reachable?"
    )


@pytest.mark.parametrize(
    ("details", "problem"),
    [
        pytest.param(
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.1:8081: Tls handshake failed "
            "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:"
            "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate: OK",
            "the CA's certificate does not verify: unable to get local issuer certificate",
            id="unknown-issuer",
        ),
        pytest.param(
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.1:8081: Custom verification "
            "check failed with error: UNAUTHENTICATED: Hostname Verification Check failed.",
            "the CA's certificate does not carry the expected server name",
            id="server-name",
        ),
    ],
)
def test_a_failed_handshake_is_a_trust_failure_naming_what_was_checked(details: str, problem: str) -> None:
    err = rpc_error(failure(grpc.StatusCode.UNAVAILABLE, details), "Attest", ADDRESS, "the example.org bundle")
    assert type(err) is NotAuthenticated
    assert str(err) == (
        f"node API Attest at {ADDRESS}: TLS handshake failed, {problem} (checked against the example.org bundle); "
        "the agent's trust bundle and server_name must match the CA's ('trustmesh-ca bundle show', "
        "server.server_name)"
    )


def update(**fields: object) -> node_pb2.SyncUpdate:
    message = node_pb2.SyncUpdate(version=3, bundle=CA.bundle().to_json().encode())
    for name, value in fields.items():
        if isinstance(value, dict):
            getattr(message, name).update(value)
        else:
            getattr(message, name).extend(value)
    return message


def test_decodes_a_full_update() -> None:
    entry = node_pb2.RegistrationEntry(
        id="e-web",
        spiffe_id="spiffe://example.org/web",
        parent_id="spiffe://example.org/trustmesh/agent/join_token/node-1",
        selectors=["unix:uid:1000"],
        dns_names=["web.example.org"],
        x509_svid_ttl_seconds=1800,
        jwt_svid_ttl_seconds=0,
        federates_with=["peer.example"],
        admin=True,
        hint="external",
        revision=4,
    )
    state = decode_sync_update(
        TD,
        update(
            entries=[entry],
            federated_bundles={"peer.example": PEER_CA.bundle().to_json().encode()},
            tainted_authority_ids=["ab12"],
            revoked_serials=["1f2e"],
            crls=[b"crl"],
        ),
    )
    assert state.version == 3
    assert state.bundle == CA.bundle()
    assert dict(state.federated_bundles) == {PEER: PEER_CA.bundle()}
    assert state.entries == (
        EntryRecord(
            id="e-web",
            spiffe_id=SpiffeId.parse("spiffe://example.org/web"),
            parent_id=SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-1"),
            selectors=frozenset({Selector("unix", "uid:1000")}),
            dns_names=("web.example.org",),
            x509_svid_ttl=timedelta(minutes=30),
            jwt_svid_ttl=None,
            federates_with=frozenset({PEER}),
            admin=True,
            hint="external",
            revision=4,
        ),
    )
    assert (state.tainted_authority_ids, state.revoked_serials, state.crls) == (
        frozenset({"ab12"}),
        frozenset({0x1F2E}),
        (b"crl",),
    )


@pytest.mark.parametrize(
    ("fields", "kind", "message"),
    [
        pytest.param(
            {"revoked_serials": ["xyz"]}, InvalidArgument, "revoked serial 'xyz' is not hexadecimal", id="bad-serial"
        ),
        pytest.param(
            {"federated_bundles": {"example.org": CA.bundle().to_json().encode()}},
            InvalidArgument,
            "federated bundle for example.org is the agent's own trust domain; bundles are never merged",
            id="own-trust-domain-as-federated",
        ),
        pytest.param(
            {"federated_bundles": {"peer.example": b"{}"}},
            BundleError,
            "bundle has no 'keys' array; a SPIFFE bundle is a JWK Set",
            id="malformed-federated-bundle",
        ),
    ],
)
def test_refuses_a_malformed_update_as_a_whole(fields: dict[str, object], kind: type[Exception], message: str) -> None:
    with pytest.raises(kind) as caught:
        decode_sync_update(TD, update(**fields))
    assert str(caught.value) == message
