"""B's scheduled CA rotation under continuous mTLS traffic from A (issue 9's acceptance list): the
federation of test_federation_e2e, with B's authorities living 36 seconds, so B's rotator prepares the
next X.509 authority 18 s after B's CA started, publishes it in B's bundle (A fetches B every second),
and activates it at 30 s, retiring the old one — nobody asks it to. Should the setup outlast those 30 s
(a loaded machine), the test watches the next generation, activated at most 18 s later.

Its own module: a rotator moving every 18 s would collide with the officer rotations of
test_federation_e2e (a manual prepare is refused while a scheduled one is prepared, and an activation
races the rotator's).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from cryptography import x509

from sds.workload_client import WorkloadApiClient
from tests.e2e.test_federation_e2e import B_WEB, B, Federation, Side, envoy_trust_bundle, federated, poll
from tests.support.traffic import continuous_requests

pytestmark = pytest.mark.e2e

# B's CA lives 36 s: prepare at 18 s, activate at 30 s. SVIDs at most ca.ttl/6; the refresh hint (1 s,
# from the federation's setup) is in force, so the prepared authority is published 12 s before it signs.
CA_TTL = timedelta(seconds=36)
SHORT_LIVED_B = f"""
[ca]
ttl = "{int(CA_TTL.total_seconds())}s"
[x509_svid]
default_ttl = "6s"
max_ttl = "6s"
[jwt_svid]
default_ttl = "6s"
max_ttl = "6s"
[agent_svid]
ttl = "6s"
"""
ROTATOR = "system:rotator"


@pytest.fixture(scope="module")
def federation() -> Iterator[Federation]:
    with federated(SHORT_LIVED_B) as running:
        yield running


def x509_authorities(side: Side) -> list[dict[str, Any]]:
    with side.admin() as admin:
        listed = admin.get("/v1/authorities").raise_for_status().json()["authorities"]
    return [x for x in listed if x["kind"] == "x509"]


def authority_records(side: Side) -> list[dict[str, Any]]:
    """Every ``authority.*`` record of the side's audit log, oldest first."""
    with side.admin() as admin:
        page = admin.get("/v1/audit", params={"action": "authority.", "limit": 1000}).raise_for_status().json()
    records: list[dict[str, Any]] = page["records"]
    return records


def issuer_id(certificate: x509.Certificate) -> str:
    """The ID of the authority that signed ``certificate`` (its authority key identifier, hex)."""
    aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None
    return aki.key_identifier.hex()


def serves_svid_of(b: Side, authority_id: str) -> bool:
    """Whether B's Envoy serves B's web SVID as B's agent hands it out now, signed by ``authority_id``."""
    assert b.envoy is not None
    (svid,) = [s for s in WorkloadApiClient(b.mesh.workload_socket).fetch_x509_svids() if s.spiffe_id == B_WEB]
    leaf = svid.cert_chain[0]
    return issuer_id(leaf) == authority_id and leaf.serial_number in b.envoy.certificate_serials()


def test_bs_scheduled_rotation_reaches_a_before_the_new_authority_signs_and_no_request_from_a_fails(
    federation: Federation,
) -> None:
    a, b = federation.a, federation.b
    assert a.envoy is not None
    (first,) = [x for x in x509_authorities(b) if x["state"] == "active"]
    life = datetime.fromisoformat(first["not_after"]) - datetime.fromisoformat(first["created_at"])
    held_while_prepared: set[str] = set()  # prepared authorities of B that A's Envoy already trusted
    with continuous_requests(a.outbound_port) as traffic:
        deadline = time.monotonic() + CA_TTL.total_seconds()
        while time.monotonic() < deadline:
            # A's side first: whatever B still lists as prepared afterwards was held by A before it signed.
            trusted = envoy_trust_bundle(a.envoy, B)
            listed = x509_authorities(b)
            for prepared in (x for x in listed if x["state"] == "prepared"):
                if x509.load_pem_x509_certificate(prepared["certificate_pem"].encode()) in trusted:
                    held_while_prepared.add(prepared["id"])
            (active,) = [x for x in listed if x["state"] == "active"]
            if active["id"] != first["id"]:
                break
            time.sleep(0.2)
        assert active["id"] != first["id"], f"B's rotator activated nothing within {CA_TTL}"
        retired = {x["id"]: x["state"] for x in listed}.get(first["id"])
        poll(lambda: serves_svid_of(b, active["id"]), bool, "B's Envoy to serve an SVID of the new authority")
        done = len(traffic.results)
        poll(lambda: len(traffic.results), lambda n: n >= done + 50, "requests after the rotation")
    assert active["id"] in held_while_prepared, f"A's Envoy did not trust {active['id']} before it was activated"
    assert retired == "retired"
    created, activated = datetime.fromisoformat(active["created_at"]), datetime.fromisoformat(active["activated_at"])
    born = datetime.fromisoformat(first["created_at"])
    assert created >= born + life / 2  # prepared at half of the old authority's life
    assert activated >= born + life * 5 / 6  # activated at 5/6 of it,
    assert activated - created >= timedelta(seconds=2)  # published two of B's refresh hints before
    changes = [(r["actor"], r["action"], r["target"]) for r in authority_records(b) if r["target"] == active["id"]]
    assert changes == [(ROTATOR, "authority.prepare", active["id"]), (ROTATOR, "authority.activate", active["id"])]
    assert {r["actor"] for r in authority_records(b)} == {ROTATOR}  # no officer moved B's authorities
    # Requests ran through the rotation and after it (a loaded machine starves the traffic thread, so
    # counts, not a rate): zero failures among them is the point.
    assert done >= 50
    assert traffic.failures == []
