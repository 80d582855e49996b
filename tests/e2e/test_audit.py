"""The audit log as an auditor meets it (issue 8): a real ``trustmesh-ca run``, a few CLI actions that
``audit list --json`` then shows with their actor, and ``audit verify`` naming where the stopped CA's
SQLite datastore was tampered with — a record edited, deleted, moved, or records cut off the end past
a signed checkpoint — reading it with ``audit verify --datastore`` (no restart: starting the CA would
append its own records)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from tests.e2e.test_ca_cli import RunningCa, start, write_config
from tests.support.processes import free_port, wait_until

AGENT = "spiffe://example.org/trustmesh/agent/join_token/node-1"
WEB = "spiffe://example.org/web"


@contextlib.contextmanager
def running(config: Path, tmp_path: Path, port: int) -> Iterator[RunningCa]:
    yield from start(config, tmp_path, port)


def copy_database(source: Path, target: Path) -> None:
    """Copy a SQLite database with what its write-ahead log holds, over whatever ``target`` was."""
    for leftover in (target, target.with_name(target.name + "-wal"), target.with_name(target.name + "-shm")):
        leftover.unlink(missing_ok=True)
    with contextlib.closing(sqlite3.connect(source)) as src, contextlib.closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


def sql(database: Path, *statements: str) -> None:
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        for statement in statements:
            db.execute(statement)


def head_is_checkpointed(database: Path) -> bool:
    with contextlib.closing(sqlite3.connect(database)) as db:
        last = db.execute("SELECT max(id) FROM audit_log").fetchone()[0]
        covered = db.execute("SELECT max(last_id) FROM audit_checkpoints").fetchone()[0]
    return covered is not None and covered == last


def test_audit_list_shows_cli_actions_and_verify_names_each_tampering(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port, '[audit]\ncheckpoint_interval = "1s"\n')
    database = tmp_path / "ca-data" / "datastore.sqlite3"
    with running(config, tmp_path, port) as ca:
        for args in (
            ("entry", "create", "--spiffe-id", WEB, "--parent-id", AGENT, "--selector", "unix:uid:1000"),
            ("authority", "prepare", "--dry-run"),
            ("x509", "mint", "--spiffe-id", WEB, "--out", str(tmp_path / "web")),
            ("token", "generate", "--node-name", "node-1"),
        ):
            code, out, err = ca.cli(*args)
            assert code == 0, err
        token = out.split("Token     : ")[1].split()[0]
        code, listed, err = ca.cli("audit", "list", "--json", "--actor", f"unix:uid={os.getuid()}")
        assert code == 0, err
        records = json.loads(listed)
        assert [(r["action"], r["outcome"], r["detail"].get("dry_run", False)) for r in records] == [
            ("entry.create", "ok", False),
            ("authority.prepare", "ok", True),
            ("x509_svid.issue", "ok", False),
            ("join_token.generate", "ok", False),
        ]
        assert {r["auth_method"] for r in records} == {"unix-socket"}
        assert records[2]["target"] == WEB
        assert token not in listed
        wait_until(lambda: head_is_checkpointed(database), 10, "a checkpoint of the audit log's head")
        code, verified, err = ca.cli("audit", "verify")
        assert (code, err) == (0, ""), verified
        assert re.fullmatch(
            r"the audit log verifies: \d+ records up to record \d+; \d+ checkpoints verified.*\n", verified
        )
    mint = records[2]["id"]
    with contextlib.closing(sqlite3.connect(database)) as db:
        last = db.execute("SELECT max(id) FROM audit_log").fetchone()[0]
        kept = last - 2
        checkpoint, covers = db.execute(
            "SELECT id, last_id FROM audit_checkpoints WHERE last_id > ? ORDER BY id LIMIT 1", (kept,)
        ).fetchone()
    pristine = tmp_path / "pristine.sqlite3"
    copy_database(database, pristine)
    tamperings = [
        (
            (f"UPDATE audit_log SET outcome = 'denied' WHERE id = {mint}",),
            re.escape(f"record {mint} was edited (its hash does not match its contents)"),
        ),
        (
            (f"DELETE FROM audit_log WHERE id = {mint}",),
            re.escape(f"record {mint + 1} does not follow record {mint - 1}: record {mint} was deleted"),
        ),
        (
            (
                f"UPDATE audit_log SET id = -1 WHERE id = {mint - 1}",
                f"UPDATE audit_log SET id = {mint - 1} WHERE id = {mint}",
                f"UPDATE audit_log SET id = {mint} WHERE id = -1",
            ),
            re.escape(f"records {mint - 1} and {mint} are out of order (record {mint} is the one that follows ")
            + re.escape(f"record {mint - 2})"),
        ),
        (
            (f"DELETE FROM audit_log WHERE id > {kept}",),
            rf"the log ends at record {kept} but checkpoint {checkpoint} \(signed [-0-9: ]+ UTC\) covers up to "
            rf"record {covers}: records were cut off the end",
        ),
    ]
    for statements, problem in tamperings:
        copy_database(pristine, database)
        sql(database, *statements)
        code, out, err = ca.cli("audit", "verify", "--datastore")  # the CA is stopped: read the datastore itself
        assert code == 1, out + err
        assert re.fullmatch(problem + "\n", out), out
