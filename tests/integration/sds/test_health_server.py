"""The agent's health listener on real sockets (sds.health_server) and ``trustmesh-agent healthcheck``
against it: /live, /ready with its reason, /metrics, a 0600 Unix socket, an address in use, and the
exit codes a container health check reads."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sds.cache import CacheSnapshot, WorkloadCache
from sds.cli import main
from sds.config import HealthConfig
from sds.health import AgentHealth
from sds.health_server import bind_health_socket, health_app, serve_health
from sds.manager import SyncStatus
from sds.metrics import AgentMetrics, AgentStateCollector
from sds.node_client import AgentCredentials
from spiffe_core.errors import ConfigError, FailedPrecondition
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.agent_pki import SigningCa
from tests.support.clock import FakeClock
from tests.support.processes import free_port

TD = TrustDomain("example.org")
NOW = datetime.now(UTC).replace(microsecond=0)
CA = SigningCa.create(TD, NOW)
AGENT = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-1")


class Identity:
    def __init__(self) -> None:
        self.credentials: AgentCredentials | None = None

    def get_current(self) -> AgentCredentials:
        if self.credentials is None:
            raise FailedPrecondition("the agent has no X509-SVID yet")
        return self.credentials


class Agent:
    """The state a health listener reads, moved by the test."""

    def __init__(self) -> None:
        self.identity = Identity()
        self.sync = SyncStatus()
        self.health = AgentHealth(
            identity=self.identity,
            cache=WorkloadCache(CacheSnapshot(TD, CA.bundle())),
            sync=self.sync,
            clock=FakeClock(NOW),
            ca_contact_window=timedelta(minutes=5),
        )
        self.metrics = AgentMetrics()
        self.metrics.registry.register(AgentStateCollector(self.health, 100))

    def attest(self) -> None:
        self.identity.credentials = AgentCredentials(
            CA.issue(AGENT, not_before=NOW, not_after=NOW + timedelta(hours=1)), CA.bundle()
        )
        self.sync.connected = True


@contextlib.asynccontextmanager
async def serving(config: HealthConfig, agent: Agent) -> AsyncIterator[httpx.AsyncClient]:
    sock = bind_health_socket(config)
    assert sock is not None
    task = asyncio.create_task(serve_health(sock, health_app(agent.health, agent.metrics.registry)))
    path = config.unix_path
    transport = None if path is None else httpx.AsyncHTTPTransport(uds=str(path))
    base = "http://agent" if path is not None else f"http://{config.address}"
    async with httpx.AsyncClient(transport=transport, base_url=base, timeout=5, trust_env=False) as client:
        for _ in range(100):  # uvicorn starts accepting within a few event-loop turns
            with contextlib.suppress(httpx.TransportError):
                await client.get("/live")
                break
            await asyncio.sleep(0.02)
        try:
            yield client
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
def tcp() -> HealthConfig:
    return HealthConfig(address=f"127.0.0.1:{free_port()}")


async def test_live_answers_while_ready_gives_the_reason_until_the_agent_has_attested(tcp: HealthConfig) -> None:
    agent = Agent()
    async with serving(tcp, agent) as client:
        assert ((await client.get("/live")).status_code, (await client.get("/live")).text) == (200, "ok\n")
        not_ready = await client.get("/ready")
        assert (not_ready.status_code, not_ready.text) == (
            503,
            "not ready: the agent has no X509-SVID yet (attesting with the CA)\n",
        )
        agent.attest()
        ready = await client.get("/ready")
        assert (ready.status_code, ready.text) == (200, "ready\n")


async def test_metrics_are_served_in_the_prometheus_text_format(tcp: HealthConfig) -> None:
    agent = Agent()
    agent.attest()
    async with serving(tcp, agent) as client:
        reply = await client.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }
    expiry_key = ("trustmesh_agent_svid_expiry_timestamp_seconds", (("spiffe_id", str(AGENT)),))
    assert samples[expiry_key] == (NOW + timedelta(hours=1)).timestamp()
    assert samples[("trustmesh_agent_ready", ())] == 1
    assert ("process_cpu_seconds_total", ()) in samples


async def test_other_paths_and_methods_are_refused(tcp: HealthConfig) -> None:
    async with serving(tcp, Agent()) as client:
        assert (await client.get("/admin")).status_code == 404
        assert (await client.post("/ready")).status_code == 405


async def test_a_unix_socket_listener_is_owner_only_and_removed_when_it_stops(tmp_path: Path) -> None:
    config = HealthConfig(address=f"unix:{tmp_path / 'health.sock'}")
    async with serving(config, Agent()) as client:
        assert stat.S_IMODE((tmp_path / "health.sock").stat().st_mode) == 0o600
        assert (await client.get("/live")).status_code == 200
    assert not (tmp_path / "health.sock").exists()


def test_an_address_in_use_is_refused_naming_the_key(tcp: HealthConfig) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(tcp.address.rpartition(":")[2])))
        taken.listen()
        with pytest.raises(ConfigError) as refused:
            bind_health_socket(tcp)
    assert str(refused.value) == (
        f"health.address {tcp.address} is in use; stop what listens there or choose another address"
    )


def test_no_socket_is_bound_when_the_listener_is_off() -> None:
    assert bind_health_socket(HealthConfig()) is None


# --- trustmesh-agent healthcheck ----------------------------------------------------------------------


def agent_config(tmp_path: Path, health: str) -> str:
    path = tmp_path / "agent.toml"
    path.write_text(f'data_dir = "{tmp_path / "agent"}"\n{health}')
    return str(path)


async def test_healthcheck_exits_0_when_ready_and_1_with_the_reason_when_not(
    tcp: HealthConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = agent_config(tmp_path, f'[health]\naddress = "{tcp.address}"\n')
    agent = Agent()
    async with serving(tcp, agent):
        assert await asyncio.to_thread(main, ["--config", config, "healthcheck"]) == 1
        assert capsys.readouterr().err == (
            "trustmesh-agent: not ready: the agent has no X509-SVID yet (attesting with the CA)\n"
        )
        assert await asyncio.to_thread(main, ["--config", config, "healthcheck", "--live"]) == 0
        assert capsys.readouterr().out == "ok\n"
        agent.attest()
        assert await asyncio.to_thread(main, ["--config", config, "healthcheck"]) == 0
        assert capsys.readouterr().out == "ready\n"


async def test_healthcheck_over_a_unix_socket(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = agent_config(tmp_path, '[health]\naddress = "unix:health.sock"\n')
    agent = Agent()
    agent.attest()
    async with serving(HealthConfig(address=f"unix:{tmp_path / 'agent' / 'health.sock'}"), agent):
        assert await asyncio.to_thread(main, ["--config", config, "healthcheck"]) == 0
    assert capsys.readouterr().out == "ready\n"


def test_healthcheck_without_a_running_agent_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{free_port()}"
    assert main(["--config", agent_config(tmp_path, f'[health]\naddress = "{address}"\n'), "healthcheck"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"trustmesh-agent: error: cannot reach the agent's health endpoint at {address} (")
    assert err.endswith("); is 'trustmesh-agent run' running with this config?\n")
    assert len(err.splitlines()) == 1


def test_healthcheck_without_a_health_address_says_how_to_set_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", agent_config(tmp_path, ""), "healthcheck"]) == 1
    assert capsys.readouterr().err == (
        "trustmesh-agent: error: health.address is not set, so the agent serves no health endpoint; set "
        '[health] address = "127.0.0.1:8089" (or "unix:health.sock") in the config and restart the agent\n'
    )
