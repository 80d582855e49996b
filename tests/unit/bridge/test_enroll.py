"""``trustmesh-bridge enroll``'s output: the agent configuration the real agent loads, the systemd
unit, and the files as a set. (With a running CA and real agents: tests/e2e/test_vm_enroll.py.)"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from bridge.cli import main
from bridge.enroll import (
    Enrollment,
    HostCertificate,
    InstallPaths,
    Method,
    install_path,
    render_agent_config,
    render_systemd_unit,
)
from bridge.enroll_files import OutputFile, write_output
from sds.config import AgentConfig, load_agent_config
from spiffe_core.errors import InvalidArgument
from spiffe_core.spiffe_id import TrustDomain
from tests.support.enterprise_pki import EnterprisePki

FHS = InstallPaths(
    PurePosixPath("/etc/trustmesh"),
    PurePosixPath("/var/lib/trustmesh-agent"),
    PurePosixPath("/run/trustmesh-agent"),
    PurePosixPath("/usr/local/bin/trustmesh-agent"),
)
CREDENTIALS = "/run/credentials/trustmesh-agent.service"
WEB01 = HostCertificate(PurePosixPath("/etc/pki/tls/certs/web01.pem"), PurePosixPath("/etc/pki/tls/private/web01.key"))


def enrollment(method: Method, paths: InstallPaths = FHS) -> Enrollment:
    return Enrollment(
        host="web01",
        trust_domain=TrustDomain("example.org"),
        server_address="ca.corp.example.com:8081",
        attestation_address="ca.corp.example.com:8082",
        server_name="trustmesh-ca",
        method=method,
        paths=paths,
        user="trustmesh-agent",
        certificate=WEB01 if method is Method.X509POP else None,
    )


def unit_settings(text: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file, values in order (a key may repeat)."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def load_agent_config_of(tmp_path: Path, enrollment: Enrollment, environ: dict[str, str] | None = None) -> AgentConfig:
    """The agent's own view of the rendered configuration (and of ``environ``'s overrides)."""
    config = tmp_path / "agent.toml"
    config.write_text(render_agent_config(enrollment))
    return load_agent_config(config, environ or {})


def test_a_join_token_agent_config_loads_in_the_agent_with_the_install_paths(tmp_path: Path) -> None:
    config = load_agent_config_of(tmp_path, enrollment(Method.JOIN_TOKEN))

    assert config.attestation == "join_token"
    assert config.join_token_file == Path("/etc/trustmesh/join-token")
    assert config.trust_bundle_path == Path("/etc/trustmesh/bundle.pem")
    assert config.data_dir == Path("/var/lib/trustmesh-agent")
    assert config.workload_api_socket == Path("/run/trustmesh-agent/workload.sock")
    assert config.server_address == "ca.corp.example.com:8081"
    assert config.attestation_address == "ca.corp.example.com:8082"


def test_an_x509pop_agent_config_loads_in_the_agent_naming_the_hosts_certificate_and_key(tmp_path: Path) -> None:
    config = load_agent_config_of(tmp_path, enrollment(Method.X509POP))

    assert config.attestation == "x509pop"
    assert config.join_token_file is None
    assert (config.x509pop.cert_file, config.x509pop.key_file) == (Path(WEB01.cert_file), Path(WEB01.key_file))


@pytest.mark.parametrize("method", list(Method))
def test_the_unit_points_the_agent_at_systemds_copies_of_its_secrets(tmp_path: Path, method: Method) -> None:
    settings = unit_settings(render_systemd_unit(enrollment(method)))
    credentials = dict(line.partition(":")[::2] for line in settings["LoadCredential"])
    # What systemd gives the agent: %d is the service's credentials directory.
    environ = {
        key: value.replace("%d/", f"{CREDENTIALS}/")
        for key, value in (line.partition("=")[::2] for line in settings["Environment"])
    }
    copies = {name: f"{CREDENTIALS}/{name}" for name in credentials}

    config = load_agent_config_of(tmp_path, enrollment(method), environ)

    if method is Method.JOIN_TOKEN:
        assert credentials == {"join-token": "/etc/trustmesh/join-token"}
        assert config.join_token_file == Path(copies["join-token"])
    else:
        assert credentials == {"x509pop-cert.pem": str(WEB01.cert_file), "x509pop-key.pem": str(WEB01.key_file)}
        assert config.x509pop.cert_file == Path(copies["x509pop-cert.pem"])
        assert config.x509pop.key_file == Path(copies["x509pop-key.pem"])


def test_the_unit_runs_the_agent_unprivileged_in_a_read_only_system() -> None:
    settings = unit_settings(render_systemd_unit(enrollment(Method.X509POP)))

    assert settings["ExecStart"] == ["/usr/local/bin/trustmesh-agent --config /etc/trustmesh/agent.toml run"]
    assert settings["User"] == settings["Group"] == ["trustmesh-agent"]
    expected = {
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter": "@system-service",
        "Restart": "on-failure",
        "StateDirectory": "trustmesh-agent",
        "StateDirectoryMode": "0700",
        "RuntimeDirectory": "trustmesh-agent",
        "RuntimeDirectoryMode": "0755",
    }
    assert {key: settings[key] for key in expected} == {key: [value] for key, value in expected.items()}
    assert "ReadWritePaths" not in settings
    assert "ProtectProc" not in settings  # it would hide the workloads the agent attests


def test_state_and_socket_directories_outside_var_lib_and_run_become_read_write_paths() -> None:
    paths = InstallPaths(
        PurePosixPath("/srv/vm/etc"), PurePosixPath("/srv/vm/state"), PurePosixPath("/srv/vm/run"), FHS.agent_bin
    )

    settings = unit_settings(render_systemd_unit(enrollment(Method.JOIN_TOKEN, paths)))

    assert settings["ReadWritePaths"] == ["/srv/vm/state", "/srv/vm/run"]
    assert "StateDirectory" not in settings
    assert "RuntimeDirectory" not in settings


@pytest.mark.parametrize("path", ["etc/trustmesh", "/etc/trust mesh", "/etc/%n", "/etc/../root", '/etc/"x'])
def test_an_install_path_that_a_unit_file_cannot_hold_as_it_is_is_refused(path: str) -> None:
    with pytest.raises(InvalidArgument, match="--config-dir"):
        install_path("--config-dir", path)


def test_the_files_are_written_as_a_set_and_secrets_are_0600(tmp_path: Path) -> None:
    out = tmp_path / "out"

    write_output(out, [OutputFile("agent.toml", b"a"), OutputFile("join-token", b"t", 0o600)])

    assert out.stat().st_mode & 0o777 == 0o700
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {"agent.toml": 0o644, "join-token": 0o600}


def test_a_set_that_cannot_be_written_whole_leaves_the_previous_one(tmp_path: Path) -> None:
    write_output(tmp_path, [OutputFile("agent.toml", b"old")])
    (tmp_path / "bundle.pem").mkdir()  # a file cannot replace it

    with pytest.raises(InvalidArgument, match=r"bundle\.pem is a directory"):
        write_output(tmp_path, [OutputFile("agent.toml", b"new"), OutputFile("bundle.pem", b"new")])

    assert (tmp_path / "agent.toml").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.toml", "bundle.pem"]


RULES = """
[[rule]]
name = "payments"
spiffe_id = "/legacy/payments/{host}"
match = { dns = "*.payments.corp.example.com", trust_anchor = "corp" }
"""


def enroll_x509pop(tmp_path: Path, pki: EnterprisePki, *extra: str) -> tuple[int, Path]:
    out = tmp_path / "out"
    code = main(["enroll", "--host", "web01", "--method", "x509pop", "--out", str(out), "--trust-domain",
                 "example.org", "--server-address", "ca:8081", "--attestation-address", "ca:8082",
                 "--trust-bundle", str(pki.root), "--x509pop-cert", str(pki.web.chain),
                 "--x509pop-key", str(pki.web.key), *extra])  # fmt: skip
    return code, out


def test_x509pop_enrollment_with_a_given_bundle_needs_no_ca_and_prints_the_agent_id_its_rule_gives(
    tmp_path: Path, enterprise_pki: EnterprisePki, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rules.toml").write_text(RULES)

    code, out = enroll_x509pop(
        tmp_path, enterprise_pki, "--rules", str(tmp_path / "rules.toml"), "--anchor", f"corp={enterprise_pki.root}"
    )

    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["agent.toml", "bundle.pem", "trustmesh-agent.service"]
    assert (out / "bundle.pem").read_bytes() == enterprise_pki.root.read_bytes()
    assert (
        "will attest as spiffe://example.org/trustmesh/agent/x509pop/legacy/payments/web01" in capsys.readouterr().out
    )


def test_x509pop_enrollment_of_a_certificate_no_rule_maps_writes_nothing_and_says_why(
    tmp_path: Path, enterprise_pki: EnterprisePki, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rules.toml").write_text(RULES)

    code, out = enroll_x509pop(tmp_path, enterprise_pki, "--rules", str(tmp_path / "rules.toml"))

    assert code == 1
    assert not out.exists()
    printed = capsys.readouterr()
    assert "x509pop check: rule 'payments' does not match: it needs trust anchor 'corp'" in printed.out
    assert "maps to no SPIFFE ID under" in printed.err


def test_x509pop_enrollment_of_a_revoked_certificate_writes_nothing_and_says_it_is_revoked(
    tmp_path: Path, enterprise_pki: EnterprisePki, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rules.toml").write_text(RULES)
    checks = ["--rules", str(tmp_path / "rules.toml"), "--anchor", f"corp={enterprise_pki.root}"]

    code, out = enroll_x509pop(
        tmp_path,
        enterprise_pki,
        *checks,
        "--crl",
        str(enterprise_pki.crl),
        "--check-cert",
        str(enterprise_pki.revoked.chain),
    )

    assert code == 1
    assert not out.exists()
    assert f"the CA would refuse {enterprise_pki.revoked.chain}: revoked: " in capsys.readouterr().err


def test_join_token_enrollment_without_a_reachable_ca_fails_in_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"

    code = main(["enroll", "--host", "build07", "--method", "join-token", "--out", str(out), "--trust-domain",
                 "example.org", "--server-address", "ca:8081", "--attestation-address", "ca:8082",
                 "--ca-socket", str(tmp_path / "no-such.sock")])  # fmt: skip

    assert code == 1
    assert not out.exists()
    err = capsys.readouterr().err.strip()
    assert err.startswith("trustmesh-bridge: error: trustmesh-ca bundle show --format pem failed: cannot reach")
    assert len(err.splitlines()) == 1


def test_x509pop_options_with_a_join_token_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["enroll", "--host", "build07", "--method", "join-token", "--out", str(tmp_path), "--trust-domain",
                 "example.org", "--server-address", "ca:8081", "--attestation-address", "ca:8082",
                 "--x509pop-cert", "/etc/pki/host.pem"])  # fmt: skip

    assert code == 1
    assert "--x509pop-cert belong to --method x509pop" in capsys.readouterr().err
