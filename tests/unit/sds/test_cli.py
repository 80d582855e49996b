"""``trustmesh-agent`` as a command line (sds/cli.py): the version, usage errors named for users, and
``envoy-bootstrap`` refusing what would make a useless or too open Envoy."""

from __future__ import annotations

import argparse
import importlib.metadata
import json

import pytest

from sds.cli import build_parser, main


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
