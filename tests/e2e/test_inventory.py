"""The inventory agrees with what was issued (issue 11 acceptance): one real ``trustmesh-ca run`` and one
``trustmesh-agent run``, a scripted scenario (an agent attests, gets SVIDs for two entries, an officer
mints two SVIDs and revokes one), then ``trustmesh-ca inventory … --json`` checked against the
certificates the CLI wrote and against the datastore's own rows: counts, expiry timestamps, agents,
revoked flags, tokens and owners.

The CLI runs in this process (``ca.cli.main``, the code ``trustmesh-ca`` runs) against the CA process's
admin socket: a fresh interpreter per command would cost a second each."""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from ca.cli import main
from sds.version import package_version
from tests.support.mesh import Mesh
from tests.support.processes import wait_until

pytestmark = pytest.mark.e2e

WEB = "spiffe://example.org/inv/web"
DB = "spiffe://example.org/inv/db"
KEPT = "spiffe://example.org/inv/minted-kept"
REVOKED = "spiffe://example.org/inv/minted-revoked"


@dataclass(frozen=True)
class Minted:
    serial: str
    not_after: datetime


def cli(config: Path, *args: str) -> str:
    """``trustmesh-ca --config <config> <args>``, run in this process; its standard output."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--config", str(config), *args])
    assert code == 0, err.getvalue()
    return out.getvalue()


def as_json(config: Path, *args: str) -> Any:
    return json.loads(cli(config, *args, "--json"))


def svids(config: Path, *args: str) -> list[dict[str, Any]]:
    """``inventory svids`` with ``args``: every match (the listing's total is all of them)."""
    reply = as_json(config, "inventory", "svids", "--limit", "1000", *args)
    assert reply["total"] == len(reply["svids"])
    return list(reply["svids"])


def join_token(config: Path, node_name: str) -> tuple[str, str]:
    reply = as_json(config, "token", "generate", "--node-name", node_name)
    return reply["token"], reply["spiffe_id"]


def mint(config: Path, spiffe_id: str, out: Path) -> Minted:
    """``x509 mint`` a 10-minute SVID; its serial and notAfter as the certificate written says."""
    reply = as_json(config, "x509", "mint", "--spiffe-id", spiffe_id, "--ttl", "10m", "--out", str(out))
    leaf = x509.load_pem_x509_certificate((out / "svid.pem").read_bytes())
    assert format(leaf.serial_number, "x") == reply["serial"]
    return Minted(reply["serial"], leaf.not_valid_after_utc)


@dataclass(frozen=True)
class Scenario:
    mesh: Mesh
    agent_id: str
    used_token: str
    unused_token: str
    kept: Minted
    revoked: Minted

    def cli(self, *args: str) -> str:
        return cli(self.mesh.ca_config, *args)

    def inventory(self, *args: str) -> Any:
        return as_json(self.mesh.ca_config, "inventory", *args)

    def svids(self, *args: str) -> list[dict[str, Any]]:
        return svids(self.mesh.ca_config, *args)

    def rows(self) -> list[tuple[str, str, str | None, str, str | None]]:
        """The datastore's unexpired issuance records: serial, SPIFFE ID, agent, notAfter, revoked_at."""
        with sqlite3.connect(self.mesh.root / "ca" / "datastore.sqlite3") as db:
            query = (
                "SELECT serial, spiffe_id, agent_id, not_after, revoked_at FROM issued_certificates "
                "WHERE not_after > ? ORDER BY serial"
            )
            return list(db.execute(query, (datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),)))


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    mesh = Mesh(tmp_path_factory.mktemp("inv"))
    config = mesh.ca_config
    with mesh.running_ca():
        used_token, agent_id = join_token(config, "inv-node")
        with mesh.running_agent(mesh.write_agent_config(used_token)):
            entry = ("entry", "create", "--parent-id", agent_id, "--spiffe-id")
            cli(config, *entry, WEB, "--selector", "unix:uid:1000", "--owner", "web-team@example.org")
            cli(config, *entry, DB, "--selector", "unix:uid:1001", "--x509-ttl", "30m")
            kept, revoked = mint(config, KEPT, mesh.root / "kept"), mint(config, REVOKED, mesh.root / "revoked")
            cli(config, "revoke", "--serial", revoked.serial, "--reason", "key-compromise")
            unused_token, _ = join_token(config, "spare-node")

            def agent_holds_both() -> bool:
                return {WEB, DB} <= {s["spiffe_id"] for s in svids(config, "--agent", agent_id)}

            wait_until(agent_holds_both, 20, "the agent's SVIDs for both entries")
            yield Scenario(mesh, agent_id, used_token, unused_token, kept, revoked)


def test_the_svid_inventory_lists_exactly_the_unexpired_svids_the_datastore_recorded(scenario: Scenario) -> None:
    listed = {(s["serial"], s["spiffe_id"], s["agent_id"], s["revoked"]) for s in scenario.svids()}
    recorded = {
        (serial, spiffe_id, agent, revoked_at is not None)
        for serial, spiffe_id, agent, _, revoked_at in scenario.rows()
    }
    assert listed == recorded


def test_minted_svids_carry_the_expiry_and_serial_of_the_certificates_written(scenario: Scenario) -> None:
    by_serial = {s["serial"]: s for s in scenario.svids("--include-expired")}
    for minted in (scenario.kept, scenario.revoked):
        assert datetime.fromisoformat(by_serial[minted.serial]["not_after"]) == minted.not_after
        assert by_serial[minted.serial]["agent_id"] is None


def test_the_agent_filter_finds_its_own_svid_and_its_workloads(scenario: Scenario) -> None:
    issued = scenario.svids("--agent", scenario.agent_id)
    assert {s["spiffe_id"] for s in issued} == {scenario.agent_id, WEB, DB}
    assert all(s["agent_id"] == scenario.agent_id for s in issued)


def test_the_revoked_filter_finds_the_revoked_svid_with_its_reason(scenario: Scenario) -> None:
    [revoked] = scenario.svids("--revoked")
    assert (revoked["serial"], revoked["revoked"], revoked["revocation_reason"]) == (
        scenario.revoked.serial,
        True,
        "key-compromise",
    )


def test_expiring_within_a_window_keeps_only_those_expiring_in_it(scenario: Scenario) -> None:
    soon = scenario.svids("--expiring-within", "15m", "--unrevoked")
    within_45m = {s["spiffe_id"] for s in scenario.svids("--expiring-within", "45m", "--unrevoked")}
    assert [s["serial"] for s in soon] == [scenario.kept.serial]
    assert within_45m == {KEPT, DB}


def test_svids_name_the_owner_of_their_entry(scenario: Scenario) -> None:
    [web] = scenario.svids("--spiffe-id", WEB)
    assert web["owners"] == ["web-team@example.org"]


def test_the_agent_inventory_shows_its_version_last_contact_and_svid_expiry(scenario: Scenario) -> None:
    [agent] = [a for a in scenario.inventory("agents") if a["spiffe_id"] == scenario.agent_id]
    [own_svid] = scenario.svids("--spiffe-id", scenario.agent_id)
    assert (agent["version"], agent["attestation_type"], agent["banned"]) == (package_version(), "join_token", False)
    assert agent["last_seen_at"] is not None
    assert agent["expires_at"] == own_svid["not_after"]


def test_join_tokens_are_listed_by_id_and_state_never_by_their_text(scenario: Scenario) -> None:
    everything = scenario.cli("inventory", "tokens", "--json")
    tokens = {t["agent_spiffe_id"]: t for t in json.loads(everything)["join_tokens"]}
    [unused] = scenario.inventory("tokens", "--unused")["join_tokens"]
    assert tokens[scenario.agent_id]["state"] == "used"
    assert unused["state"] == "unused"
    assert unused["agent_spiffe_id"].endswith("/spare-node")
    assert scenario.used_token not in everything
    assert scenario.unused_token not in everything


def test_the_summary_counts_agree_with_the_listings(scenario: Scenario) -> None:
    summary = scenario.inventory("summary")
    live = len(scenario.svids("--unrevoked"))
    assert (summary["svids_live"], summary["svids_revoked_live"]) == (live, 1)
    assert (summary["agents"], summary["join_tokens_unused"], summary["entries_without_owner"]) == (1, 1, 1)
