"""A CA whose every authority has expired and whose upstream root cannot mint another (the enterprise
root expired while the CA was down): it starts, refuses to issue with the reason, is not ready and
says why, and neither it nor its agent spins (the rotation issue's acceptance list)."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_mesh import start_agent
from tests.support.enterprise_pki import write_enterprise_root
from tests.support.mesh import Mesh
from tests.support.processes import background, command, run, wait_until

pytestmark = pytest.mark.e2e

ROOT_LIFETIME = timedelta(seconds=30)  # the CA and agent must start within it, on a loaded machine too
MEASURE_SECONDS = 10.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(logs: dict[str, Path], procs: list[subprocess.Popen[bytes]]) -> tuple[list[float], dict[str, int]]:
    """CPU share of each process and log lines of each file over MEASURE_SECONDS."""
    lines_before = {name: len(path.read_text().splitlines()) for name, path in logs.items()}
    cpu_before = [cpu_seconds(p.pid) for p in procs]
    time.sleep(MEASURE_SECONDS)
    shares = [(cpu_seconds(p.pid) - before) / MEASURE_SECONDS for p, before in zip(procs, cpu_before, strict=True)]
    lines = {name: len(path.read_text().splitlines()) - lines_before[name] for name, path in logs.items()}
    return shares, lines


def test_a_ca_whose_authorities_all_expired_refuses_to_issue_says_why_and_nothing_spins(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    expires = write_enterprise_root(tmp_path, "short-lived enterprise root", ROOT_LIFETIME).not_valid_after_utc
    mesh.write_ca_config(
        f'[ca.upstream]\nkind = "disk"\ncert_file = "{tmp_path / "root.pem"}"\nkey_file = "{tmp_path / "root.key"}"\n'
        '[x509_svid]\ndefault_ttl = "5s"\n[agent_svid]\nttl = "5s"\n[bundle]\nrefresh_hint = "2s"\n'
    )
    with mesh.running_ca() as ca:
        config, _ = start_agent(mesh)
        with mesh.running_agent(config) as agent:
            time.sleep(max((expires - datetime.now(UTC)).total_seconds(), 0) + 3)
            assert ca.poll() is None
            assert agent.poll() is None
            shares, lines = measure({"ca": tmp_path / "ca.log", "agent": tmp_path / "agent.log"}, [ca, agent])
            print(f"\nafter expiry: CPU share CA {shares[0]:.3f}, agent {shares[1]:.3f}; log lines in 10 s {lines}")
            assert all(share < 0.05 for share in shares)
            assert all(count <= 2 * MEASURE_SECONDS for count in lines.values())

    argv = [command("trustmesh-ca"), "--config", str(mesh.ca_config), "run"]
    with background(argv, tmp_path / "ca-expired.log") as ca:

        def ready_status() -> httpx.Response | None:
            assert ca.poll() is None, mesh.log("ca-expired.log")
            try:
                return httpx.get(f"http://127.0.0.1:{mesh.http_port}/ready", timeout=1)
            except httpx.HTTPError:
                return None

        wait_until(lambda: ready_status() is not None, 20, "the CA's health listener")
        ready = ready_status()
        assert ready is not None
        assert ready.status_code == 503
        assert "expired" in ready.text
        assert "upstream" in ready.text  # why the rotation task cannot recover

        health = run([command("trustmesh-ca"), "--config", str(mesh.ca_config), "healthcheck"])
        assert health.returncode == 1
        assert "expired" in health.stderr

        web = ["--spiffe-id", "spiffe://example.org/web", "--out", str(tmp_path / "web")]
        minted = run([command("trustmesh-ca"), "--config", str(mesh.ca_config), "x509", "mint", *web])
        assert minted.returncode == 1
        assert "expired" in minted.stderr
        assert not (tmp_path / "web" / "svid.pem").exists()

        (share,), lines = measure({"ca": tmp_path / "ca-expired.log"}, [ca])
        print(f"restarted expired CA: CPU share {share:.3f}; log lines in 10 s {lines}")
        assert share < 0.05
        assert lines["ca"] <= 2 * MEASURE_SECONDS
