"""What the agent saves (sds/persistence.py, sds/files.py): round trips, file modes, and how foreign or
corrupt files are treated."""

from __future__ import annotations

import json
import logging
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from sds.files import write_private_file, write_public_file
from sds.node_client import EntryRecord, SyncState
from sds.persistence import AgentStore
from sds.planning import HeldSvid
from spiffe_core.bundle import Bundle
from spiffe_core.errors import FailedPrecondition
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.agent_pki import SigningCa

TD = TrustDomain("example.org")
PEER = TrustDomain("peer.example")
NOW = datetime.now(UTC).replace(microsecond=0)
CA = SigningCa.create(TD, NOW)
PEER_CA = SigningCa.create(PEER, NOW)
AGENT = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-1")
WEB = SpiffeId.parse("spiffe://example.org/web")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def full_state() -> SyncState:
    web = EntryRecord(
        id="e-web",
        spiffe_id=WEB,
        parent_id=AGENT,
        selectors=frozenset({Selector("unix", "uid:1000"), Selector("unix", "path:/usr/bin/web")}),
        dns_names=("web.example.org",),
        x509_svid_ttl=timedelta(minutes=30),
        jwt_svid_ttl=None,
        federates_with=frozenset({PEER}),
        admin=True,
        hint="external",
        revision=3,
    )
    return SyncState(
        version=42,
        bundle=CA.bundle(sequence=9),
        federated_bundles={PEER: Bundle(PEER, (PEER_CA.cert,), sequence=2, refresh_hint=300)},
        entries=(web,),
        tainted_authority_ids=frozenset({"ab12"}),
        revoked_serials=frozenset({0x1F2E}),
        crls=(b"\x30\x82der-crl",),
        legacy_roots={"corp": PEER_CA.cert.public_bytes(serialization.Encoding.PEM)},
    )


def held_web() -> HeldSvid:
    svid = CA.issue(WEB, not_before=NOW, not_after=NOW + timedelta(hours=1))
    return HeldSvid("e-web", 3, WEB, svid.cert_chain, svid.private_key, NOW + timedelta(minutes=31))


def test_agent_svid_and_bundle_round_trip_in_a_private_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "agent"
    store = AgentStore(data_dir, TD)
    svid = CA.issue(AGENT, not_before=NOW, not_after=NOW + timedelta(hours=1))
    store.save_agent(svid, CA.bundle(sequence=4))
    loaded = store.load_agent()
    assert loaded is not None
    assert loaded.svid == svid
    assert loaded.svid.private_key.private_numbers() == svid.private_key.private_numbers()  # type: ignore[union-attr]
    assert loaded.bundle == CA.bundle(sequence=4)
    assert mode(store.agent_path) == 0o600
    assert mode(data_dir) == 0o700


def test_workload_state_and_svids_round_trip(tmp_path: Path) -> None:
    store = AgentStore(tmp_path, TD)
    held = held_web()
    store.save_workloads(full_state(), (held,))
    loaded = store.load_workloads()
    assert loaded is not None
    assert loaded.state == full_state()
    assert loaded.svids == (held,)
    assert loaded.svids[0].private_key.public_key() == held.private_key.public_key()
    assert mode(store.workloads_path) == 0o600


def test_a_state_saved_before_legacy_roots_existed_loads_without_them(tmp_path: Path) -> None:
    store = AgentStore(tmp_path, TD)
    store.save_workloads(full_state(), (held_web(),))
    document = json.loads(store.workloads_path.read_text())
    del document["state"]["legacy_roots"]
    store.workloads_path.write_text(json.dumps(document))

    loaded = store.load_workloads()

    assert loaded is not None
    assert dict(loaded.state.legacy_roots) == {}


def test_the_bundle_is_read_from_the_agent_file_without_its_key(tmp_path: Path) -> None:
    store = AgentStore(tmp_path, TD)
    store.save_agent(CA.issue(AGENT, not_before=NOW, not_after=NOW + timedelta(hours=1)), CA.bundle(sequence=7))
    document = json.loads(store.agent_path.read_text())
    document["key_pem"] = "not read"
    store.agent_path.write_text(json.dumps(document))

    assert store.load_bundle() == CA.bundle(sequence=7)


def test_nothing_saved_loads_as_none(tmp_path: Path) -> None:
    store = AgentStore(tmp_path, TD)
    assert store.load_agent() is None
    assert store.load_workloads() is None
    assert store.load_bundle() is None


def test_agent_file_of_another_trust_domain_stops_the_agent_with_the_fix(tmp_path: Path) -> None:
    AgentStore(tmp_path, TD).save_agent(
        CA.issue(AGENT, not_before=NOW, not_after=NOW + timedelta(hours=1)), CA.bundle()
    )
    with pytest.raises(FailedPrecondition) as caught:
        AgentStore(tmp_path, TrustDomain("other.example")).load_agent()
    assert str(caught.value) == (
        f"{tmp_path / 'agent.json'} belongs to trust domain 'example.org', not the configured other.example; "
        "point data_dir at another directory, or delete the file to attest afresh"
    )


def test_corrupt_agent_file_stops_the_agent_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "agent.json").write_text("{not json")
    with pytest.raises(FailedPrecondition, match=r"agent\.json is unreadable \(.*\); delete it and restart the agent"):
        AgentStore(tmp_path, TD).load_agent()


def test_corrupt_workload_file_is_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "workloads.json").write_text('{"format": 1, "trust_domain": "example.org"}')
    with caplog.at_level(logging.WARNING, logger="sds.persistence"):
        assert AgentStore(tmp_path, TD).load_workloads() is None
    assert caplog.messages == [
        f"ignoring the saved workload SVIDs in {tmp_path / 'workloads.json'} ('state'); they will be signed again"
    ]


@pytest.mark.parametrize(
    ("write", "expected_mode"),
    [pytest.param(write_private_file, 0o600, id="private"), pytest.param(write_public_file, 0o644, id="public")],
)
def test_files_are_replaced_atomically_with_their_mode(
    tmp_path: Path, write: Callable[[Path, bytes], None], expected_mode: int
) -> None:
    path = tmp_path / "sub" / "file.pem"
    write(path, b"first")
    write(path, b"second")
    assert path.read_bytes() == b"second"
    assert mode(path) == expected_mode
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.pem"]  # no temporary files left
