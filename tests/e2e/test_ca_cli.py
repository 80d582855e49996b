"""The CA as a user runs it: `trustmesh-ca run` as a real process, the CLI against its admin socket,
and independent tools (openssl, py-spiffe in a child process) judging what it issued."""

from __future__ import annotations

import json
import sqlite3
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.processes import background, command, free_port, run, wait_until

ORACLE = str(Path(__file__).parents[1] / "support" / "pyspiffe_oracle.py")


@dataclass
class RunningCa:
    config: Path
    data_dir: Path
    http_port: int
    log: Path

    def cli(self, *args: str) -> tuple[int, str, str]:
        result = run([command("trustmesh-ca"), "--config", str(self.config), *args])
        return result.returncode, result.stdout, result.stderr

    def issued_count(self) -> int:
        """Workload X509-SVIDs recorded (the CA's own serving SVID under /trustmesh/ is not counted)."""
        with sqlite3.connect(self.data_dir / "datastore.sqlite3") as db:
            query = (
                "SELECT count(*) FROM issued_certificates WHERE spiffe_id NOT LIKE 'spiffe://example.org/trustmesh/%'"
            )
            return int(db.execute(query).fetchone()[0])


def write_config(tmp_path: Path, http_port: int, extra: str = "") -> Path:
    config = tmp_path / "ca.toml"
    config.write_text(
        f"""
trust_domain = "example.org"
[server]
data_dir = "{tmp_path / "ca-data"}"
http_address = "127.0.0.1:{http_port}"
node_api_address = "127.0.0.1:{free_port()}"
attestation_address = "127.0.0.1:{free_port()}"
{extra}
"""
    )
    return config


def start(config: Path, tmp_path: Path, http_port: int, name: str = "ca.log") -> Iterator[RunningCa]:
    log = tmp_path / name
    with background([command("trustmesh-ca"), "--config", str(config), "run"], log) as proc:
        ca = RunningCa(config, tmp_path / "ca-data", http_port, log)

        def ready() -> bool:
            assert proc.poll() is None, f"trustmesh-ca exited early:\n{log.read_text()}"
            try:
                return httpx.get(f"http://127.0.0.1:{http_port}/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 20, "the CA to become ready")
        yield ca


@pytest.fixture
def ca(tmp_path: Path) -> Iterator[RunningCa]:
    port = free_port()
    yield from start(write_config(tmp_path, port), tmp_path, port)


def oracle(*args: str) -> dict[str, object]:
    result = run([sys.executable, ORACLE, *args])
    assert result.returncode == 0, result.stdout + result.stderr
    return dict(json.loads(result.stdout))


def mint(ca: RunningCa, out: Path, *extra: str) -> None:
    code, stdout, stderr = ca.cli("x509", "mint", "--spiffe-id", "spiffe://example.org/web", "--out", str(out), *extra)
    assert code == 0, stderr
    assert "spiffe://example.org/web" in stdout


def test_minted_x509_svid_verifies_with_openssl_against_the_bundle(ca: RunningCa, tmp_path: Path) -> None:
    mint(ca, tmp_path / "web", "--dns", "web.example.org")
    result = run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "web" / "bundle.pem"), str(tmp_path / "web" / "svid.pem")]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(": OK")


def test_minted_x509_svid_parses_with_py_spiffe(ca: RunningCa, tmp_path: Path) -> None:
    mint(ca, tmp_path / "web")
    parsed = oracle("x509-svid", str(tmp_path / "web" / "svid.pem"), str(tmp_path / "web" / "svid_key.pem"))
    assert parsed["spiffe_id"] == "spiffe://example.org/web"


def test_minted_private_key_file_is_owner_only(ca: RunningCa, tmp_path: Path) -> None:
    mint(ca, tmp_path / "web")
    assert stat.S_IMODE((tmp_path / "web" / "svid_key.pem").stat().st_mode) == 0o600


def test_jwt_svid_validates_with_py_spiffe_against_the_bundle(ca: RunningCa, tmp_path: Path) -> None:
    code, token, stderr = ca.cli("jwt", "mint", "--spiffe-id", "spiffe://example.org/web", "--audience", "payments")
    assert code == 0, stderr
    (tmp_path / "token").write_text(token)
    code, bundle, stderr = ca.cli("bundle", "show", "--format", "spiffe")
    assert code == 0, stderr
    (tmp_path / "bundle.json").write_text(bundle)
    parsed = oracle("jwt-svid", str(tmp_path / "token"), str(tmp_path / "bundle.json"), "payments", "example.org")
    assert parsed["spiffe_id"] == "spiffe://example.org/web"
    assert parsed["audience"] == ["payments"]


RESERVED_REFUSAL = (
    "trustmesh-ca: error: SPIFFE ID {id} is under the reserved path /trustmesh/ (the CA's and agents' own "
    "identities, issued only by attestation); choose another path"
)


@pytest.mark.parametrize(
    "spiffe_id",
    [
        pytest.param("spiffe://example.org/trustmesh/server", id="ca-server"),
        pytest.param("spiffe://example.org/trustmesh/agent/join_token/node-1", id="agent"),
        pytest.param("spiffe://example.org/trustmesh", id="reserved-root"),
    ],
)
@pytest.mark.parametrize(
    "command_line",
    [
        pytest.param(("x509", "mint", "--dns", "trustmesh-ca"), id="x509"),
        pytest.param(("jwt", "mint", "--audience", "payments"), id="jwt"),
    ],
)
def test_mint_refuses_reserved_ids(
    ca: RunningCa, tmp_path: Path, spiffe_id: str, command_line: tuple[str, ...]
) -> None:
    out = ("--out", str(tmp_path / "out")) if command_line[0] == "x509" else ()
    code, stdout, stderr = ca.cli(*command_line, "--spiffe-id", spiffe_id, *out)
    assert (code, stdout, stderr) == (1, "", RESERVED_REFUSAL.format(id=spiffe_id) + "\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("dns", "problem"),
    [
        pytest.param(
            "Web.Example.org", "DNS name 'Web.Example.org' has uppercase letters; write it lowercase", id="upper"
        ),
        pytest.param("*.com", "DNS name '*.com' has the label '*'", id="wildcard-over-public-suffix"),
        pytest.param("web_1.example.org", "DNS name 'web_1.example.org' has the label 'web_1'", id="underscore"),
    ],
)
def test_x509_mint_refuses_bad_dns_names(ca: RunningCa, tmp_path: Path, dns: str, problem: str) -> None:
    code, stdout, stderr = ca.cli(
        "x509", "mint", "--spiffe-id", "spiffe://example.org/web", "--dns", dns, "--out", str(tmp_path / "out")
    )
    assert (code, stdout) == (1, "")
    assert stderr.startswith(f"trustmesh-ca: error: {problem}"), stderr
    assert len(stderr.splitlines()) == 1


def test_json_output_of_healthcheck_and_mints_parses(ca: RunningCa, tmp_path: Path) -> None:
    code, out, err = ca.cli("healthcheck", "--json")
    assert (code, json.loads(out)) == (0, {"ready": True, "status": "ready"}), err
    code, out, err = ca.cli(
        "jwt", "mint", "--spiffe-id", "spiffe://example.org/web", "--audience", "payments", "--json"
    )
    assert code == 0, err
    minted = json.loads(out)
    assert minted["spiffe_id"] == "spiffe://example.org/web"
    assert minted["token"].count(".") == 2
    assert minted["expires_at"]
    code, out, err = ca.cli("x509", "mint", "--spiffe-id", "spiffe://example.org/web", "--out", str(tmp_path), "--json")
    assert code == 0, err
    assert json.loads(out)["spiffe_id"] == "spiffe://example.org/web"


def test_version_and_usage_errors_of_the_installed_command(tmp_path: Path) -> None:
    result = run([command("trustmesh-ca"), "--version"])
    assert result.returncode == 0
    assert result.stdout.startswith("trustmesh-ca ")
    result = run([command("trustmesh-ca"), "entry"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "trustmesh-ca entry: error: the following arguments are required: {create,list,show,delete,update}"
    )


def test_bundle_show_spiffe_carries_sequence_refresh_hint_and_both_key_uses(ca: RunningCa) -> None:
    code, stdout, stderr = ca.cli("bundle", "show", "--format", "spiffe")
    assert code == 0, stderr
    bundle = json.loads(stdout)
    assert bundle["spiffe_sequence"] >= 1
    assert bundle["spiffe_refresh_hint"] == 300
    assert sorted(k["use"] for k in bundle["keys"]) == ["jwt-svid", "x509-svid"]


def test_bundle_pem_is_accepted_by_py_spiffe(ca: RunningCa, tmp_path: Path) -> None:
    code, stdout, _ = ca.cli("bundle", "show", "--format", "pem")
    assert code == 0
    (tmp_path / "bundle.pem").write_text(stdout)
    assert len(oracle("x509-bundle", "example.org", str(tmp_path / "bundle.pem"))["authorities"]) == 1  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["x509", "mint", "--spiffe-id", "spiffe://Example.org/web", "--out", "x"],
            "trust domain 'Example.org' has uppercase letters",
            id="invalid-spiffe-id",
        ),
        pytest.param(
            ["x509", "mint", "--spiffe-id", "spiffe://example.org/web", "--ttl", "48h", "--out", "x"],
            "X509-SVID TTL 172800s is over the maximum of 86400s",
            id="ttl-over-maximum",
        ),
        pytest.param(
            ["x509", "mint", "--spiffe-id", "spiffe://other.org/web", "--out", "x"],
            "is not in trust domain example.org",
            id="foreign-trust-domain",
        ),
        pytest.param(
            ["jwt", "mint", "--spiffe-id", "spiffe://example.org/web", "--audience", ""],
            "at least one non-empty audience",
            id="empty-audience",
        ),
    ],
)
def test_bad_request_is_one_line_error_and_nothing_is_recorded(ca: RunningCa, args: list[str], message: str) -> None:
    code, _, stderr = ca.cli(*args)
    assert code == 1
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert ca.issued_count() == 0


def test_garbage_csr_is_refused_over_the_admin_api(ca: RunningCa) -> None:
    transport = httpx.HTTPTransport(uds=str(ca.data_dir / "admin.sock"))
    with httpx.Client(transport=transport, base_url="http://ca") as client:
        reply = client.post("/v1/x509-svids", json={"csr_pem": "not a csr", "spiffe_id": "spiffe://example.org/x"})
    assert reply.status_code == 400
    assert "is not a PKCS#10 certificate request" in reply.json()["error"]
    assert ca.issued_count() == 0


def issued_metric(ca: RunningCa) -> float:
    for line in httpx.get(f"http://127.0.0.1:{ca.http_port}/metrics").text.splitlines():
        if line.startswith("trustmesh_x509_svids_issued_total "):
            return float(line.split()[1])
    raise AssertionError("trustmesh_x509_svids_issued_total is missing from /metrics")


def test_every_issued_certificate_is_recorded_and_counted_in_metrics(ca: RunningCa, tmp_path: Path) -> None:
    before = issued_metric(ca)
    mint(ca, tmp_path / "a")
    mint(ca, tmp_path / "b")
    assert ca.issued_count() == 2
    assert issued_metric(ca) == before + 2


def test_restart_keeps_the_same_authorities(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    bundles = []
    for attempt in range(2):
        for running in start(config, tmp_path, port, name=f"ca-{attempt}.log"):
            code, stdout, _ = running.cli("bundle", "show", "--format", "pem")
            assert code == 0
            bundles.append(stdout)
    assert bundles[0] == bundles[1]


def test_admin_socket_is_owner_only(ca: RunningCa) -> None:
    assert stat.S_IMODE((ca.data_dir / "admin.sock").stat().st_mode) == 0o600


def test_cli_without_a_running_ca_says_how_to_start_one(tmp_path: Path) -> None:
    config = write_config(tmp_path, free_port())
    result = run([command("trustmesh-ca"), "--config", str(config), "healthcheck"])
    assert result.returncode == 1
    assert "is 'trustmesh-ca run' running" in result.stderr


def test_broken_config_is_refused_with_the_key_named(tmp_path: Path) -> None:
    config = write_config(tmp_path, free_port(), extra='[x509_svid]\nmax_ttl = "forever"\n')
    result = run([command("trustmesh-ca"), "--config", str(config), "run"], timeout=30)
    assert result.returncode == 1
    assert "x509_svid.max_ttl" in result.stderr
    assert not (tmp_path / "ca-data" / "datastore.sqlite3").exists()
