"""A StreamSecrets answer is encoded once per snapshot and subscription and sent to every stream that
asks the same; each stream appends its own nonce. The result must be exactly the response built whole."""

from __future__ import annotations

from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2

from sds.sds_v3 import SotwAnswer
from sds.secrets import DEFAULT, ROOTCA, SECRET_TYPE_URL, SdsResource, build_secrets
from spiffe_core.selectors import Selector
from tests.support.sds_snapshots import TestCa, snapshot

CALLER = frozenset({Selector("unix", "uid:1000")})


def test_an_answer_with_a_nonce_is_byte_for_byte_the_response_built_whole() -> None:
    ca = TestCa.create("example.org")
    snap = snapshot(ca, [ca.svid("/web")], version=3)
    resources = build_secrets(snap, CALLER, [DEFAULT, ROOTCA])

    sent = SotwAnswer.of(snap, resources).with_nonce("42")

    whole = discovery_pb2.DiscoveryResponse(
        version_info=discovery_pb2.DiscoveryResponse.FromString(sent).version_info,
        resources=[r.to_any() for r in resources.values()],
        type_url=SECRET_TYPE_URL,
        nonce="42",
    )
    assert sent == whole.SerializeToString()
    assert whole.version_info.startswith("3-")
    assert [r.value for r in whole.resources] == [r.serialized for r in resources.values()]


def test_one_answer_gives_each_nonce_its_own_response() -> None:
    ca = TestCa.create("example.org")
    snap = snapshot(ca, [ca.svid("/web")])
    answer = SotwAnswer.of(snap, build_secrets(snap, CALLER, [DEFAULT]))

    first, second = (discovery_pb2.DiscoveryResponse.FromString(answer.with_nonce(n)) for n in ("1", "2"))

    assert (first.nonce, second.nonce) == ("1", "2")
    assert first.resources == second.resources
    assert first.version_info == second.version_info
    assert answer.versions == {DEFAULT: SdsResource.of(secret_pb2.Secret.FromString(first.resources[0].value)).version}
