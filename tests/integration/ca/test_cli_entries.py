"""``trustmesh-ca entry …`` and ``trustmesh-ca token generate`` against a running CA: ``serve(config)``
with a temporary config on SQLite, in a background thread; the CLI's ``main`` talks to it over the
admin socket exactly as the installed command does."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ca.cli import main
from ca.config import load_config
from ca.store import Actor, AuditLogRepository, AuditQuery, Database
from tests.support.ca_thread import serving

AGENT = "spiffe://example.org/trustmesh/agent/join_token/node-1"
OTHER_AGENT = "spiffe://example.org/trustmesh/agent/join_token/node-2"


@dataclass
class Cli:
    config: Path
    capsys: pytest.CaptureFixture[str]

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(["--config", str(self.config), *args])
        out, err = self.capsys.readouterr()
        return code, out, err

    def ok(self, *args: str) -> str:
        code, out, err = self(*args)
        assert code == 0, err
        return out

    def json(self, *args: str) -> dict[str, object]:
        return dict(json.loads(self.ok(*args, "--json")))


@pytest.fixture(scope="module")
def config_file() -> Iterator[Path]:
    # A short directory: the admin socket's path must fit in sun_path (108 bytes).
    with tempfile.TemporaryDirectory(prefix="tm-cli-", dir="/tmp") as tmp:
        root = Path(tmp)
        path = root / "ca.toml"
        path.write_text(
            f"""
trust_domain = "example.org"
[server]
data_dir = "{root / "data"}"
admin_socket = "{root / "admin.sock"}"
http_address = ""
node_api_address = "127.0.0.1:0"
attestation_address = "127.0.0.1:0"
"""
        )
        yield path


@pytest.fixture(scope="module")
def running_ca(config_file: Path) -> Iterator[Path]:
    """One CA for the module (each test uses its own SPIFFE IDs)."""
    with serving(load_config(config_file, {})):
        yield config_file


@pytest.fixture
def cli(running_ca: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(running_ca, capsys)


def labelled(out: str) -> dict[str, str]:
    """``Label : value`` lines of the human-readable output, by label."""
    return {label.strip(): value for label, value in (line.split(" : ", 1) for line in out.splitlines())}


def create(cli: Cli, spiffe_id: str, *extra: str, parent: str = AGENT) -> dict[str, object]:
    return cli.json(
        "entry", "create", "--spiffe-id", spiffe_id, "--parent-id", parent, "--selector", "unix:uid:1000", *extra
    )


def test_entry_create_prints_the_stored_entry(cli: Cli) -> None:
    out = cli.ok(
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/create/web",
        "--parent-id",
        AGENT,
        "--selector",
        "unix:uid:1000",
        "--selector",
        "unix:user:web",
        "--dns",
        "web.example.org",
        "--x509-ttl",
        "2h",
        "--federates-with",
        "partner.example",
        "--admin",
        "--hint",
        "blue",
        "--owner",
        "payments-oncall@example.org",
    )
    fields = labelled(out)
    del fields["Entry ID"]
    assert fields == {
        "SPIFFE ID": "spiffe://example.org/create/web",
        "Parent ID": AGENT,
        "Revision": "1",
        "Selectors": "unix:uid:1000, unix:user:web",
        "DNS names": "web.example.org",
        "X509-SVID TTL": "7200s",
        "JWT-SVID TTL": "CA default",
        "Federates with": "partner.example",
        "Admin": "yes",
        "Hint": "blue",
        "Owner": "payments-oncall@example.org",
    }


def test_entry_create_json_is_the_admin_api_document(cli: Cli) -> None:
    entry = create(cli, "spiffe://example.org/json/web", "--jwt-ttl", "5m")
    assert {k: v for k, v in entry.items() if k not in ("id", "created_at", "updated_at")} == {
        "spiffe_id": "spiffe://example.org/json/web",
        "parent_id": AGENT,
        "selectors": ["unix:uid:1000"],
        "dns_names": [],
        "x509_svid_ttl_seconds": None,
        "jwt_svid_ttl_seconds": 300,
        "federates_with": [],
        "admin": False,
        "hint": "",
        "owner": "",
        "revision": 1,
    }


def test_entry_show_prints_one_entry(cli: Cli) -> None:
    entry = create(cli, "spiffe://example.org/show/web")
    assert cli.json("entry", "show", str(entry["id"])) == entry


def test_entry_list_filters_by_parent_and_spiffe_id(cli: Cli) -> None:
    mine = create(cli, "spiffe://example.org/list/web")
    create(cli, "spiffe://example.org/list/web", parent=OTHER_AGENT)
    listed = json.loads(
        cli.ok("entry", "list", "--spiffe-id", "spiffe://example.org/list/web", "--parent-id", AGENT, "--json")
    )
    assert listed == [mine]


def test_entry_list_human_output_counts_the_entries(cli: Cli) -> None:
    create(cli, "spiffe://example.org/count/web")
    out = cli.ok("entry", "list", "--spiffe-id", "spiffe://example.org/count/web")
    assert "SPIFFE ID      : spiffe://example.org/count/web" in out
    assert out.endswith("\n1 registration entry\n")


def test_entry_update_changes_only_the_given_fields(cli: Cli) -> None:
    entry = create(cli, "spiffe://example.org/update/web", "--dns", "web.example.org")
    updated = cli.json("entry", "update", str(entry["id"]), "--hint", "green", "--no-admin")
    assert updated["hint"] == "green"
    assert updated["revision"] == 2
    assert {k: v for k, v in updated.items() if k not in ("hint", "revision", "updated_at")} == {
        k: v for k, v in entry.items() if k not in ("hint", "revision", "updated_at")
    }


def test_entry_update_that_changes_nothing_keeps_the_revision(cli: Cli) -> None:
    entry = create(cli, "spiffe://example.org/noop/web", "--hint", "blue")
    again = cli.json("entry", "update", str(entry["id"]), "--hint", "blue")
    assert again == entry
    assert cli.json("entry", "show", str(entry["id"]))["revision"] == 1


def test_entry_update_clears_dns_names_and_hint(cli: Cli) -> None:
    entry = create(cli, "spiffe://example.org/clear/web", "--dns", "web.example.org", "--hint", "blue")
    cleared = cli.json("entry", "update", str(entry["id"]), "--clear-dns", "--hint", "")
    assert (cleared["dns_names"], cleared["hint"], cleared["revision"]) == ([], "", 2)
    assert cli.json("entry", "show", str(entry["id"])) == cleared


def test_entry_update_sets_and_clears_the_owner(cli: Cli) -> None:
    entry = create(cli, "spiffe://example.org/owner/web", "--owner", "team-a")
    changed = cli.json("entry", "update", str(entry["id"]), "--owner", "team-b@example.org")
    cleared = cli.json("entry", "update", str(entry["id"]), "--owner", "")
    assert (entry["owner"], changed["owner"], cleared["owner"]) == ("team-a", "team-b@example.org", "")


def test_entry_update_refuses_clear_dns_with_dns(cli: Cli) -> None:
    entry = create(cli, "spiffe://example.org/clear-both/web")
    code, _, err = cli("entry", "update", str(entry["id"]), "--clear-dns", "--dns", "a.example.org")
    assert code == 1
    assert err == "trustmesh-ca: error: --clear-dns removes every DNS name and --dns sets them; give one of the two\n"


def test_entry_delete_removes_the_entry(cli: Cli) -> None:
    entry = create(cli, "spiffe://example.org/delete/web")
    assert cli.ok("entry", "delete", str(entry["id"])) == (
        f"deleted registration entry {entry['id']} (spiffe://example.org/delete/web)\n"
    )
    code, _, err = cli("entry", "show", str(entry["id"]))
    assert (code, err) == (1, f"trustmesh-ca: error: registration entry '{entry['id']}' does not exist\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ("--spiffe-id", "spiffe://example.org/trustmesh/agent/join_token/evil", "--parent-id", AGENT),
            "SPIFFE ID spiffe://example.org/trustmesh/agent/join_token/evil is under the reserved path /trustmesh/",
            id="reserved-id",
        ),
        pytest.param(
            ("--spiffe-id", "spiffe://example.org/refused/web", "--parent-id", AGENT, "--x509-ttl", "48h"),
            "X509-SVID TTL 172800s is over the CA's maximum of",
            id="ttl-over-max",
        ),
        pytest.param(
            ("--spiffe-id", "spiffe://example.org/refused/web", "--parent-id", AGENT, "--dns", "Web.example.org"),
            "DNS name 'Web.example.org' has uppercase letters",
            id="uppercase-dns",
        ),
        pytest.param(
            ("--spiffe-id", "https://example.org/web", "--parent-id", AGENT),
            "'https://example.org/web' does not start with 'spiffe://'",
            id="not-a-spiffe-id",
        ),
        pytest.param(
            ("--spiffe-id", "spiffe://example.org/refused/web", "--parent-id", AGENT, "--owner", "a\nb"),
            "owner has a line break or another control character; write one line",
            id="multi-line-owner",
        ),
    ],
)
def test_entry_create_refuses_an_invalid_entry(cli: Cli, args: tuple[str, ...], message: str) -> None:
    code, out, err = cli("entry", "create", *args, "--selector", "unix:uid:1000")
    assert (code, out) == (1, "")
    assert err.startswith(f"trustmesh-ca: error: {message}")


def test_entry_create_without_a_selector_is_a_usage_error(cli: Cli) -> None:
    with pytest.raises(SystemExit) as caught:
        cli("entry", "create", "--spiffe-id", "spiffe://example.org/x", "--parent-id", AGENT)
    assert caught.value.code == 2


def test_token_generate_prints_the_token_once_and_the_agent_id(cli: Cli) -> None:
    code, out, err = cli("token", "generate", "--ttl", "10m", "--node-name", "node-7")
    fields = labelled(out)
    assert code == 0
    assert set(fields) == {"Token", "SPIFFE ID", "Expires"}
    assert fields["SPIFFE ID"] == "spiffe://example.org/trustmesh/agent/join_token/node-7"
    assert len(fields["Token"]) == 43
    assert err == "The token is shown only now and works once; hand it to the node's agent.\n"


def test_token_generate_json_names_token_agent_id_and_expiry(cli: Cli) -> None:
    reply = cli.json("token", "generate")
    assert set(reply) == {"token", "spiffe_id", "expires_at"}
    assert str(reply["spiffe_id"]).startswith("spiffe://example.org/trustmesh/agent/join_token/")


def test_token_generate_refuses_a_node_name_that_is_not_a_path_segment(cli: Cli) -> None:
    code, _, err = cli("token", "generate", "--node-name", "a/b")
    assert code == 1
    assert err.startswith("trustmesh-ca: error: node name 'a/b' is not a SPIFFE ID path segment")


def test_a_change_through_the_socket_is_audited_as_break_glass_by_the_callers_uid(cli: Cli, running_ca: Path) -> None:
    entry_id = create(cli, "spiffe://example.org/audit/break-glass")["id"]

    database = Database.open(load_config(running_ca, {}).datastore.url)
    try:
        with database.transaction() as session:
            records = AuditLogRepository(session).list(AuditQuery(action="entry."), limit=1000)
            events = [r.event for r in records if r.event.target == entry_id]
    finally:
        database.close()
    assert [(e.actor, e.action) for e in events] == [
        (Actor(f"unix:uid={os.getuid()}", "unix-socket", "break-glass"), "entry.create")
    ]
