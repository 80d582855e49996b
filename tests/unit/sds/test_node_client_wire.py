"""The node client's translations (sds/node_client.py): gRPC status codes to error kinds, and SyncUpdate
messages to SyncState values — all of an update or none of it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from sds.node_client import EntryRecord, NodeClient, check_roots_trust_domain, decode_sync_update, rpc_error
from spiffe_core.errors import (
    AlreadyExists,
    BundleError,
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    NotAuthenticated,
    NotAuthorized,
    NotFound,
    ResourceExhausted,
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
LEAF = CA.issue(SpiffeId.parse("spiffe://example.org/web"), not_before=NOW, not_after=NOW + timedelta(hours=1)).leaf
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
        pytest.param(grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted, id="resource-exhausted"),
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
    ("trailer", "seconds"),
    [
        pytest.param(("retry-after-ms", "2500"), 2.5, id="hint"),
        pytest.param(("retry-after-ms", "soon"), 0.0, id="unreadable-hint"),
        pytest.param(("other", "1"), 0.0, id="no-hint"),
    ],
)
def test_a_rate_limit_refusal_keeps_the_cas_retry_hint(trailer: tuple[str, str], seconds: float) -> None:
    refused = grpc.aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), grpc.aio.Metadata(trailer), details="slow down"
    )
    err = rpc_error(refused, "SignX509Svids", ADDRESS)
    assert isinstance(err, ResourceExhausted)
    assert err.retry_after == seconds


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


def test_decodes_legacy_roots_as_canonical_pem() -> None:
    root = CA.cert.public_bytes(serialization.Encoding.PEM)

    state = decode_sync_update(TD, update(legacy_roots={"corp": b"# corp\n" + root + root}))

    assert dict(state.legacy_roots) == {"corp": root}


@pytest.mark.parametrize(
    ("fields", "kind", "message"),
    [
        pytest.param(
            {"legacy_roots": {"Corp": CA.cert.public_bytes(serialization.Encoding.PEM)}},
            InvalidArgument,
            "legacy roots name 'Corp' must be 1-64 of a-z, 0-9, '.', '_', '-' (starting with a letter or digit); "
            "Envoy asks for it as the SDS secret legacy/<name>",
            id="bad-legacy-roots-name",
        ),
        pytest.param(
            {"legacy_roots": {"corp": LEAF.public_bytes(serialization.Encoding.PEM)}},
            InvalidArgument,
            f"legacy roots 'corp': {LEAF.subject.rfc4514_string() or '(empty subject)'} is not a CA certificate; give "
            "the root (or issuing CA) certificate that signed the servers' certificates",
            id="legacy-roots-of-a-leaf",
        ),
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


def test_roots_of_another_trust_domain_are_refused_before_anything_is_sent() -> None:
    with pytest.raises(ConfigError) as raised:
        check_roots_trust_domain(PEER_CA.bundle(), TD)
    assert str(raised.value) == (
        f"trust_domain: the agent is configured for 'example.org' but the CA's root certificate "
        f"{PEER_CA.cert.subject.rfc4514_string()!r} is of trust domain 'peer.example'; set trust_domain = "
        "'peer.example', or point trust_bundle_path and attestation_address at the CA of 'example.org' "
        "(the join token was not sent)"
    )


def test_roots_of_the_own_trust_domain_pass() -> None:
    check_roots_trust_domain(CA.bundle(), TD)


async def test_attest_against_roots_of_another_trust_domain_does_not_dial_the_ca() -> None:
    client = NodeClient(
        trust_domain=TD, server_address=ADDRESS, attestation_address=ADDRESS, server_name="trustmesh-ca"
    )
    with pytest.raises(ConfigError):
        await client.attest(PEER_CA.bundle(), "join_token", b"the-token", b"csr")
    await client.close()
