"""``trustmesh-ca analyze`` as an operator runs it (issue 11 acceptance: "analyze finds each seeded problem
in a fixture config/state and is silent on a healthy one"): the real CLI, as a process, on

* a fixture configuration and datastore with a problem seeded for every check but ``issued.too_many``
  (a million rows; unit-tested) — beside a stand-in for the stopped CA's admin socket that serves an
  expired CRL and none for the upstream root;
* a healthy CA, running (its CRLs are fetched live): exit 0 and nothing beyond info.
"""

from __future__ import annotations

import http.server
import json
import socketserver
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from bridge.mapping import MappingRule, Match
from ca.authority import AuthorityState
from ca.config import load_config
from ca.store import (
    AgentRepository,
    AuthorityRepository,
    Database,
    IssuedCertificate,
    IssuedCertificateRepository,
    JoinTokenRepository,
    RegistrationEntryRepository,
)
from ca.store.records import FederationRelationship
from ca.store.repositories import FederationRepository, IdentityMappingRepository
from spiffe_core.bundle import Bundle
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.analysis import DAY, HOUR, ca, crl_of, entry, jwt_record, x509_record
from tests.support.ca_thread import serving
from tests.support.processes import command, run

MINUTE = timedelta(minutes=1)
GONE = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/gone")
SPARE = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/spare")
AGENT = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-1")
LONG = SpiffeId.parse("spiffe://example.org/long")
SEEDED = {
    ("config.ttl_arithmetic", "error"),
    ("config.crl_ttl_short", "warning"),
    ("config.key_custody", "warning"),
    ("authority.no_active", "error"),
    ("authority.expiring", "error"),
    ("authority.svid_ttl_capped", "warning"),
    ("upstream.expiring", "error"),
    ("crl.missing", "error"),
    ("crl.stale", "error"),
    ("entry.parent_missing", "warning"),
    ("entry.ttl_over_max", "error"),
    ("entry.dns_localhost", "warning"),
    ("entry.dns_wildcard", "warning"),
    ("mapping.invalid", "error"),
    ("mapping.overlap", "error"),
    ("join_token.never_expires", "error"),
    ("join_token.long_lived", "warning"),
    ("agent.expired", "info"),
    ("retention.behind", "warning"),
    ("federation.no_bundle", "error"),
    ("federation.stale", "error"),
    ("federation.failing", "warning"),
    ("federation.partner_key_expiring", "warning"),
}


def analyze(config: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = run([command("trustmesh-ca"), "--config", str(config), "analyze", "--json", *args])
    assert result.stderr == ""
    return result.returncode, json.loads(result.stdout)


def write_config(root: Path, extra: str = "") -> Path:
    (root / "data").mkdir(exist_ok=True)
    config = root / "ca.toml"
    config.write_text(
        f'trust_domain = "example.org"\n{extra}\n[server]\ndata_dir = "{root / "data"}"\n'
        f'admin_socket = "{root / "admin.sock"}"\nhttp_address = ""\n'
        'node_api_address = "127.0.0.1:0"\nattestation_address = "127.0.0.1:0"\n'
    )
    return config


class CrlsOnly(http.server.BaseHTTPRequestHandler):
    """A stopped CA's admin socket stand-in: answers ``GET /v1/crls`` with :attr:`body`, nothing else."""

    body = b""

    def do_GET(self) -> None:  # http.server's handler name
        status, body = (200, self.body) if self.path == "/v1/crls" else (404, b'{"error": "not here"}')
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        return "admin.sock"

    def log_message(self, *_args: object) -> None:
        pass


def seed(database: Database, now: datetime) -> bytes:
    """A problem for every check; returns the ``/v1/crls`` body the CA's socket stand-in serves."""
    root = ca("Corp Root", now - 300 * DAY, now + 10 * DAY)
    authority = ca("trustmesh CA", now - 7 * DAY, now + 30 * MINUTE, issuer=root)
    x509 = x509_record(authority, AuthorityState.ACTIVE, created_at=now - 7 * DAY, upstream=[root])
    partner = TrustDomain("partner.example")
    expiring_root = ca("Partner Root", now - 30 * DAY, now + 2 * HOUR).certificate
    with database.transaction() as session:
        authorities = AuthorityRepository(session)
        authorities.add(x509)
        authorities.add(jwt_record("jwt-old", AuthorityState.RETIRED, created_at=now - 9 * DAY, not_after=now + DAY))
        AgentRepository(session).upsert(AGENT, "join_token", 1, now + HOUR, now)
        AgentRepository(session).upsert(
            SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/old"), "join_token", 2, now - 3 * DAY, now
        )
        entries = RegistrationEntryRepository(session)
        for built in (
            entry("/orphan", GONE),
            entry("/long", AGENT, x509_ttl=72 * HOUR),
            entry("/local", AGENT, dns_names=("localhost",)),
            entry("/wild", AGENT, dns_names=("*.example.org",)),
        ):
            entries.add(built.spec, now)
        mappings = IdentityMappingRepository(session)
        mappings.add(MappingRule("corp", Match(dns="*.corp.example.com"), "spiffe://example.org/legacy/{host}"), now)
        mappings.add(MappingRule("web", Match(dns="web.corp.example.com"), "spiffe://example.org/legacy/web"), now)
        mappings.add(MappingRule("other", Match(dns="*.lab.example.com"), "spiffe://other.org/{host}"), now)
        tokens = JoinTokenRepository(session)
        tokens.add("a" * 64, now + 400 * DAY, now - DAY, SPARE)
        tokens.add("b" * 64, now + 20 * DAY, now, SPARE)
        long_expired = IssuedCertificate(7, LONG, x509.id, now - 4 * DAY, now - 3 * DAY, now - 4 * DAY)
        IssuedCertificateRepository(session).add_many([long_expired])
        federation = FederationRepository(session)
        for name, bundle in (("silent.example", None), (partner.name, Bundle(partner, (expiring_root,)).to_json())):
            federation.add(
                FederationRelationship(TrustDomain(name), f"https://{name}/", "https_web", None, bundle, now - 30 * DAY)
            )
        good = Bundle(partner, (expiring_root,)).to_json()
        federation.record_attempt(partner, at=now - MINUTE, next_refresh_at=now + MINUTE, bundle=good)
        federation.record_attempt(partner, at=now, next_refresh_at=now + MINUTE, error="connection refused")
    stale = crl_of(authority, now - 25 * HOUR, now - HOUR).public_bytes(serialization.Encoding.PEM).decode()
    return json.dumps({"crls": [{"pem": stale}]}).encode()


@pytest.fixture
def seeded() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tm-an-", dir="/tmp") as tmp:
        root = Path(tmp)
        config = write_config(
            root, '[x509_svid]\nmax_ttl = "48h"\n[revocation]\ncrl_ttl = "30m"\n[ca.key_manager]\nkind = "memory"\n'
        )
        database = Database.open(f"sqlite:///{root / 'data' / 'datastore.sqlite3'}")
        database.migrate()
        try:
            CrlsOnly.body = seed(database, datetime.now(UTC))
        finally:
            database.close()
        server = socketserver.UnixStreamServer(str(root / "admin.sock"), CrlsOnly)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield config
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)


def test_analyze_finds_every_seeded_problem_and_exits_1(seeded: Path) -> None:
    code, report = analyze(seeded)
    assert {(f["check"], f["severity"]) for f in report["findings"]} == SEEDED, report
    assert code == 1
    assert all(f["fix"] for f in report["findings"])


@pytest.fixture
def running_healthy_ca() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tm-an-", dir="/tmp") as tmp:
        config_file = write_config(Path(tmp))
        with serving(load_config(config_file, {})):
            yield config_file


def test_analyze_is_silent_beyond_info_on_a_healthy_running_ca_and_exits_0(running_healthy_ca: Path) -> None:
    code, report = analyze(running_healthy_ca)
    assert [(f["check"], f["severity"]) for f in report["findings"]] == [("config.key_custody", "info")]
    assert (code, report["counts"]) == (0, {"error": 0, "warning": 0, "info": 1})


def test_analyze_without_a_datastore_reports_it_and_still_checks_the_configuration(tmp_path: Path) -> None:
    code, report = analyze(write_config(tmp_path, '[revocation]\ncrl_ttl = "30m"\n'), "--offline")
    assert [(f["check"], f["severity"]) for f in report["findings"]] == [
        ("datastore.unreadable", "error"),
        ("config.crl_ttl_short", "warning"),
        ("config.key_custody", "info"),
    ]
    assert code == 1
