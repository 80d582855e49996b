"""``trustmesh-agent`` as a command line (sds/cli.py): the version, usage errors named for users,
``envoy-bootstrap`` refusing what would make a useless or too open Envoy, and ``bundle show`` exporting
the mesh bundle for legacy clients."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sds.cli import build_parser, main
from sds.persistence import AgentStore
from spiffe_core.bundle import Bundle
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.agent_pki import SigningCa

TD = TrustDomain("example.org")
NOW = datetime.now(UTC)
CA = SigningCa.create(TD, NOW)
AGENT = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-1")


@pytest.fixture(autouse=True)
def no_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRUSTMESH_AGENT_CONFIG", raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exited:
        code = int(exited.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_version_is_the_installed_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--version") == (0, f"trustmesh-agent {importlib.metadata.version('trustmesh')}\n", "")


@pytest.mark.parametrize(
    ("argv", "required"),
    [
        pytest.param((), "COMMAND", id="top"),
        pytest.param(("api",), "{fetch}", id="api"),
        pytest.param(("api", "fetch"), "{x509,bundles,jwt}", id="api-fetch"),
    ],
)
def test_a_missing_subcommand_is_named_by_its_choices(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], required: str
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"{' '.join(('trustmesh-agent', *argv))}: error: the following arguments are required: {required}"
    )


def test_every_subcommand_group_has_a_name() -> None:
    def groups(parser: argparse.ArgumentParser) -> list[argparse.Action]:
        found: list[argparse.Action] = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                found.append(action)
                for sub in action.choices.values():
                    found += groups(sub)
        return found

    assert all(action.metavar for action in groups(build_parser()))


def test_envoy_bootstrap_without_a_listener_says_what_to_give(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "envoy-bootstrap")
    assert (code, out) == (1, "")
    assert err == (
        "trustmesh-agent: error: envoy-bootstrap needs a listener: --inbound-port PORT --allow SPIFFE_ID "
        "--inbound-upstream HOST:PORT to terminate mTLS in front of your application, and/or --outbound-port "
        "PORT --upstream HOST:PORT --upstream-id SPIFFE_ID to call an mTLS service, and/or --legacy-port PORT "
        "--legacy-upstream HOST:PORT --legacy-roots NAME to call a legacy TLS server, and/or --legacy-inbound-port "
        "PORT to serve legacy clients\n"
    )


def test_envoy_bootstrap_refuses_an_inbound_port_that_allows_no_peer(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "envoy-bootstrap", "--inbound-port", "8443", "--inbound-upstream", "127.0.0.1:8080")
    assert (code, out) == (1, "")
    assert err == (
        "trustmesh-agent: error: the inbound listener on port 8443 allows no peer; name the SPIFFE IDs allowed in "
        "(--allow), or allow every ID of the trust domain explicitly (--allow-trust-domain)\n"
    )


def test_envoy_bootstrap_refuses_inbound_options_without_an_inbound_port(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys,
        "envoy-bootstrap",
        "--allow",
        "spiffe://example.org/web",
        "--outbound-port",
        "10000",
        "--upstream",
        "127.0.0.1:8443",
        "--upstream-id",
        "spiffe://example.org/api",
    )
    assert code == 1
    assert "give --inbound-port" in err


def test_envoy_bootstrap_allows_the_agents_trust_domain_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "envoy-bootstrap", "--inbound-port", "8443", "--allow-trust-domain")
    assert code == 0
    listener = json.loads(out)["static_resources"]["listeners"][0]
    tls = listener["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
    assert tls["combined_validation_context"]["default_validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"prefix": "spiffe://example.org/"}}
    ]


def test_envoy_bootstrap_allows_a_federated_trust_domain_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "envoy-bootstrap", "--inbound-port", "8443", "--allow-trust-domain", "--allow-trust-domain", "b.test"
    )
    assert code == 0
    listener = json.loads(out)["static_resources"]["listeners"][0]
    tls = listener["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
    assert tls["combined_validation_context"]["default_validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"prefix": "spiffe://example.org/"}},
        {"san_type": "URI", "matcher": {"prefix": "spiffe://b.test/"}},
    ]
    assert tls["combined_validation_context"]["validation_context_sds_secret_config"]["name"] == "ALL"


def test_envoy_bootstrap_calls_a_federated_upstream_with_every_trust_domains_bundle(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(
        capsys,
        "envoy-bootstrap",
        "--outbound-port",
        "10000",
        "--upstream",
        "127.0.0.1:8443",
        "--upstream-id",
        "spiffe://b.test/api",
    )
    assert code == 0
    (upstream,) = [c for c in json.loads(out)["static_resources"]["clusters"] if c["name"] == "upstream"]
    tls = upstream["transport_socket"]["typed_config"]["common_tls_context"]
    assert tls["combined_validation_context"]["validation_context_sds_secret_config"]["name"] == "ALL"


def test_envoy_bootstrap_calls_a_legacy_server_through_its_enterprise_roots(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "envoy-bootstrap",
        "--legacy-port",
        "10001",
        "--legacy-upstream",
        "10.0.0.5:443",
        "--legacy-roots",
        "corp",
        "--legacy-server-name",
        "web01.corp.example.com",
    )
    assert code == 0
    (legacy,) = [c for c in json.loads(out)["static_resources"]["clusters"] if c["name"] == "legacy_10001"]
    tls = legacy["transport_socket"]["typed_config"]
    assert tls["sni"] == "web01.corp.example.com"
    assert tls["common_tls_context"]["combined_validation_context"]["validation_context_sds_secret_config"]["name"] == (
        "legacy/corp"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ("--legacy-port", "10001", "--legacy-upstream", "web01.corp.example.com:443"),
            "--legacy-port needs --legacy-upstream HOST:PORT and --legacy-roots NAME",
            id="no-roots",
        ),
        pytest.param(
            ("--inbound-port", "8443", "--allow-trust-domain", "--legacy-roots", "corp"),
            "--legacy-upstream, --legacy-roots and --legacy-server-name need --legacy-port",
            id="legacy-options-without-a-port",
        ),
        pytest.param(
            ("--inbound-port", "8443", "--allow-trust-domain", "--legacy-inbound-upstream", "127.0.0.1:8080"),
            "--legacy-inbound-upstream configures the legacy inbound listener; give --legacy-inbound-port",
            id="legacy-inbound-upstream-without-a-port",
        ),
    ],
)
def test_envoy_bootstrap_refuses_incomplete_legacy_options(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    code, out, err = run(capsys, "envoy-bootstrap", *argv)
    assert (code, out) == (1, "")
    assert err.startswith(f"trustmesh-agent: error: {message}")


@pytest.fixture
def agent_config(tmp_path: Path) -> Path:
    """An agent config whose data directory holds an attested agent's file (as ``trustmesh-agent run`` saves it)."""
    data_dir = tmp_path / "agent"
    AgentStore(data_dir, TD).save_agent(
        CA.issue(AGENT, not_before=NOW, not_after=NOW + timedelta(hours=1)), CA.bundle()
    )
    config = tmp_path / "agent.toml"
    config.write_text(f'trust_domain = "example.org"\ndata_dir = "{data_dir}"\n')
    return config


def test_bundle_show_prints_the_bundle_the_agent_holds_as_pem(
    capsys: pytest.CaptureFixture[str], agent_config: Path
) -> None:
    code, out, _ = run(capsys, "--config", str(agent_config), "bundle", "show")

    assert (code, out) == (0, CA.bundle().x509_authorities_pem().decode())


def test_bundle_show_writes_a_public_file_for_legacy_clients(
    capsys: pytest.CaptureFixture[str], agent_config: Path, tmp_path: Path
) -> None:
    out_file = tmp_path / "trust" / "mesh.pem"
    code, out, _ = run(capsys, "--config", str(agent_config), "bundle", "show", "--out", str(out_file))

    assert (code, out) == (0, f"example.org: 1 X.509 authorities -> {out_file}\n")
    assert out_file.read_bytes() == CA.bundle().x509_authorities_pem()
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o644


def test_bundle_show_in_spiffe_format_prints_the_jwks(capsys: pytest.CaptureFixture[str], agent_config: Path) -> None:
    code, out, _ = run(capsys, "--config", str(agent_config), "bundle", "show", "--format", "spiffe")

    assert code == 0
    assert Bundle.parse_jwks(TD, out) == CA.bundle()


def test_bundle_show_before_the_agent_attested_says_to_run_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'trust_domain = "example.org"\ndata_dir = "{tmp_path / "agent"}"\n')

    code, out, err = run(capsys, "--config", str(config), "bundle", "show")

    assert (code, out) == (1, "")
    assert err == (
        f"trustmesh-agent: error: the agent has no trust bundle in {tmp_path / 'agent'} yet; run it "
        "(trustmesh-agent run) until it attests\n"
    )
