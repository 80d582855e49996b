"""``trustmesh-ca mapping add|list|show|delete|load`` against a running CA (the CLI entries test's CA
fixture): rules are stored, overlapping ones refused with the reason, a GitOps file applied as a whole."""

from __future__ import annotations

import json
from pathlib import Path

from ca.config import load_config
from ca.store import Database
from ca.store.records import AuditQuery
from ca.store.repositories import AuditLogRepository
from tests.integration.ca.test_cli_entries import Cli, cli, config_file, labelled, running_ca

__all__ = ["cli", "config_file", "running_ca"]  # the fixtures this module borrows

PAYMENTS = ("--name", "payments", "--dns", "*.payments.corp.example.com", "--spiffe-id", "/legacy/payments/{host}")


def names(cli: Cli) -> list[str]:
    return [mapping["name"] for mapping in json.loads(cli.ok("mapping", "list", "--json"))]


def reset(cli: Cli, tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    cli.ok("mapping", "load", str(empty))


def test_mapping_add_stores_the_rule_and_show_prints_it(cli: Cli, tmp_path: Path) -> None:
    reset(cli, tmp_path)
    cli.ok("mapping", "add", *PAYMENTS, "--keep-dns", "all")
    fields = labelled(cli.ok("mapping", "show", "payments"))
    assert fields == {
        "Name": "payments",
        "Match": "dns=*.payments.corp.example.com",
        "SPIFFE ID": "/legacy/payments/{host}",
        "Keeps DNS": "all",
        "Keeps CN": "yes",
    }


def test_mapping_add_refuses_an_overlapping_rule_with_the_reason(cli: Cli, tmp_path: Path) -> None:
    reset(cli, tmp_path)
    cli.ok("mapping", "add", *PAYMENTS)
    code, _out, err = cli(
        "mapping", "add", "--name", "web01", "--dns", "web01.payments.corp.example.com", "--spiffe-id", "/legacy/w"
    )
    assert code != 0
    assert "rule 'web01' overlaps rule 'payments': an identity can match both" in err
    assert names(cli) == ["payments"]


def test_mapping_load_replaces_every_rule_and_a_bad_file_changes_nothing(cli: Cli, tmp_path: Path) -> None:
    reset(cli, tmp_path)
    cli.ok("mapping", "add", *PAYMENTS)
    good = tmp_path / "rules.toml"
    good.write_text(
        '[[rule]]\nname = "data"\nspiffe_id = "/legacy/data/{host}"\nmatch = { dns = "*.data.corp.example.com" }\n'
    )
    bad = tmp_path / "bad.toml"
    bad.write_text(
        good.read_text()
        + '[[rule]]\nname = "db01"\nspiffe_id = "/legacy/db01"\nmatch = { dns = "db01.data.corp.example.com" }\n'
    )
    cli.ok("mapping", "load", str(good))
    code, _out, err = cli("mapping", "load", str(bad))
    assert code != 0
    assert "overlaps rule 'data'" in err
    assert names(cli) == ["data"]


def test_mapping_delete_removes_it_and_changes_are_audited(cli: Cli, running_ca: Path, tmp_path: Path) -> None:
    reset(cli, tmp_path)
    cli.ok("mapping", "add", *PAYMENTS)
    assert "deleted mapping rule payments" in cli.ok("mapping", "delete", "payments")
    code, _out, err = cli("mapping", "show", "payments")
    assert code != 0
    assert "no mapping rule named 'payments'" in err
    database = Database.open(load_config(running_ca, {}).datastore.url)
    try:
        with database.transaction() as session:
            records = AuditLogRepository(session).list(AuditQuery(action="mapping."), newest_first=True, limit=2)
            actions = [r.event.action for r in reversed(records) if r.event.target == "payments"]
    finally:
        database.close()
    assert actions[-2:] == ["mapping.add", "mapping.delete"]
