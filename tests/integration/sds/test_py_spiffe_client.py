"""py-spiffe (the ``spiffe`` package, unmodified) as the Workload API client (DESIGN §4): it runs in a
child process (tests/support/pyspiffe_workload_client.py), is attested from its own peer credentials
through the public socket, and reads what our server sends with its own generated stubs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf import descriptor_pb2

from sds.cache import WorkloadCache, WorkloadSvid
from spiffe_core.errors import JwtSvidError
from spiffe_core.jwt_svid import validate_jwt_svid
from spiffe_core.spiffe_id import SpiffeId
from tests.support.sds_snapshots import TestCa, snapshot
from tests.support.workload_api import FakeJwtMinter, TestJwtKey, serve_workload_api, socket_directory, with_jwt_key
from wire import workload_pb2

CLIENT = str(Path(__file__).parents[2] / "support" / "pyspiffe_workload_client.py")
ME = f"unix:uid:{os.getuid()}"
STRANGER = "unix:uid:4242424"
CHILD_TIMEOUT = 60.0


@dataclass
class Served:
    ca: TestCa
    partner: TestCa
    jwt_key: TestJwtKey
    partner_jwt_key: TestJwtKey
    svids: list[WorkloadSvid]
    socket: Path


async def ask_pyspiffe(*args: str) -> tuple[int, dict[str, Any]]:
    """Run the py-spiffe client without blocking the event loop that serves it; its exit code and answer."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, CLIENT, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        stdout, stderr = await asyncio.wait_for(child.communicate(), CHILD_TIMEOUT)
    except TimeoutError:
        child.kill()
        await child.wait()
        raise
    assert stdout, stderr.decode()
    return child.returncode or 0, json.loads(stdout)


async def pyspiffe_answer(*args: str) -> dict[str, Any]:
    code, answer = await ask_pyspiffe(*args)
    assert code == 0, answer
    return answer


def sha256_der(cert: Any) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def sha256_key(key: Any) -> str:
    return hashlib.sha256(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).hexdigest()


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    ca = TestCa.create("example.org")
    partner = TestCa.create("partner.org")
    jwt_key = TestJwtKey.create(ca.trust_domain)
    partner_jwt_key = TestJwtKey.create(partner.trust_domain, "partner-key")
    svids = [
        ca.svid("/web", [ME], federates_with=["partner.org"]),
        ca.svid("/cli", [ME]),
        ca.svid("/db", [STRANGER]),
    ]
    federated = {"partner.org": partner_jwt_key.publish_in(partner.bundle())}
    cache = WorkloadCache(with_jwt_key(snapshot(ca, svids, federated=federated), jwt_key))
    with socket_directory() as directory:
        async with serve_workload_api(cache, FakeJwtMinter(jwt_key), directory / "workload.sock") as endpoint:
            yield Served(ca, partner, jwt_key, partner_jwt_key, svids, endpoint.public_socket)


async def test_wire_definitions_match_py_spiffe() -> None:
    answer = await pyspiffe_answer("descriptor")
    theirs = descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(answer["file_descriptor"]))
    ours = descriptor_pb2.FileDescriptorProto()
    workload_pb2.DESCRIPTOR.CopyToProto(ours)
    assert (ours.package, list(ours.dependency)) == (theirs.package, list(theirs.dependency))
    assert list(ours.message_type) == list(theirs.message_type)
    assert list(ours.service) == list(theirs.service)


async def test_fetches_x509_context(served: Served) -> None:
    answer = await pyspiffe_answer("x509-context", str(served.socket))
    assert answer["svids"] == [
        {
            "spiffe_id": str(svid.spiffe_id),
            "chain": [sha256_der(svid.cert_chain[0])],
            "public_key": sha256_key(svid.private_key.public_key()),
        }
        for svid in served.svids[:2]
    ]
    assert answer["bundles"] == {
        "example.org": [sha256_der(served.ca.cert)],
        "partner.org": [sha256_der(served.partner.cert)],
    }


async def test_fetches_x509_bundles(served: Served) -> None:
    answer = await pyspiffe_answer("x509-bundles", str(served.socket))
    assert answer["bundles"] == {
        "example.org": [sha256_der(served.ca.cert)],
        "partner.org": [sha256_der(served.partner.cert)],
    }


async def test_fetches_jwt_bundles(served: Served) -> None:
    answer = await pyspiffe_answer("jwt-bundles", str(served.socket))
    assert answer["bundles"] == {
        "example.org": {"jwt-key-1": sha256_key(served.jwt_key.key.public_key())},
        "partner.org": {"partner-key": sha256_key(served.partner_jwt_key.key.public_key())},
    }


async def test_fetches_a_jwt_svid_that_validates_through_the_api_and_locally(served: Served) -> None:
    answer = await pyspiffe_answer("jwt-round-trip", str(served.socket), "payments")
    assert answer == {
        "fetched": {"spiffe_id": "spiffe://example.org/web", "audience": ["payments"]},
        "validated_by_api": "spiffe://example.org/web",
        "validated_locally": {"spiffe_id": "spiffe://example.org/web", "audience": ["payments"]},
    }


async def test_fetches_a_jwt_svid_for_a_chosen_identity(served: Served) -> None:
    answer = await pyspiffe_answer("jwt-svid-for", str(served.socket), "payments", "spiffe://example.org/cli")
    assert answer == {"spiffe_id": "spiffe://example.org/cli"}


async def test_is_denied_another_workloads_jwt_svid(served: Served) -> None:
    code, answer = await ask_pyspiffe("jwt-svid-for", str(served.socket), "payments", "spiffe://example.org/db")
    assert code == 1
    assert answer["error"] == (
        "FetchJwtSvidError: Error fetching JWT SVID: Could not process response from the Workload API: the caller "
        "is not entitled to spiffe://example.org/db: no registration entry for it matches the caller's selectors; "
        "ask for one of its own identities or leave spiffe_id empty (StatusCode.PERMISSION_DENIED)"
    )


async def test_validation_refuses_a_token_for_another_audience(served: Served) -> None:
    now = datetime.now(UTC)
    token = served.jwt_key.mint(SpiffeId.parse("spiffe://example.org/web"), ["billing"], now)
    with pytest.raises(JwtSvidError) as reason:
        validate_jwt_svid(
            token, audience=["payments"], bundle_source=served.jwt_key.publish_in(served.ca.bundle()), now=now
        )
    code, answer = await ask_pyspiffe("validate", str(served.socket), token, "payments")
    assert (code, answer["error"]) == (
        1,
        "ValidateJwtSvidError: JWT SVID is not valid: Could not process response from the Workload API: "
        f"JWT-SVID is not valid: {reason.value} (StatusCode.INVALID_ARGUMENT)",
    )
