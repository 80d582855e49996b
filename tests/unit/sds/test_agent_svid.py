"""The agent's own identity (sds/agent_svid.py): first attestation, restarts from the saved SVID,
expiry with and without a join token, renewal (at half life, and at once when a Sync state taints,
revokes or no longer trusts the agent SVID), backoff with bounded logging, and refusing SVIDs that are
not what was asked for."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import stat
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from bridge.x509pop import verify_signature
from sds.agent_svid import AgentIdentity, AgentSvidParams, load_bootstrap_bundle
from sds.node_client import AgentCredentials, AttestResult, SyncState
from sds.persistence import AgentStore
from sds.planning import signer_ids
from sds.x509pop_proof import X509PopProof
from spiffe_core.bundle import Bundle
from spiffe_core.errors import (
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    NotAuthorized,
    UpstreamUnavailable,
    X509SvidError,
)
from spiffe_core.keys import KeyType, generate_private_key
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.agent_pki import SigningCa
from tests.support.clock import FakeClock
from tests.support.enterprise_pki import EnterprisePki

TD = TrustDomain("example.org")
NOW = datetime.now(UTC).replace(microsecond=0)
CA = SigningCa.create(TD, NOW - timedelta(days=1), ttl=timedelta(days=3))
AGENT = SpiffeId.parse("spiffe://example.org/trustmesh/agent/join_token/node-1")
AGENT_TTL = timedelta(hours=1)
TOKEN = "join-token-1"
BOOTSTRAP = Bundle(TD, (CA.cert,))
# The authority the CA rotated to; the bundle publishes both while the old one is tainted.
NEW_CA = SigningCa.create(TD, NOW - timedelta(days=1), ttl=timedelta(days=3))
BOTH = Bundle(TD, (CA.cert, NEW_CA.cert), sequence=2)
NONCE = bytes(range(32))


class FakeAttestationApi:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.attested: list[tuple[Bundle, str, bytes]] = []
        self.challenged: list[tuple[str, bytes]] = []
        self.renewed = 0
        self.credentials: list[AgentCredentials] = []
        self.assign = AGENT
        self.sign_other_key = False
        self.renew_failures: list[Exception] = []
        self.attest_failures: list[Exception] = []
        self.signer = CA

    def _sign(self, csr: bytes) -> tuple[x509.Certificate, ...]:
        if self.sign_other_key:
            other = generate_private_key(KeyType.EC_P256)
            return self.signer.sign(
                self.assign, other.public_key(), not_before=self.clock.now(), not_after=self.clock.now() + AGENT_TTL
            )
        return self.signer.sign_csr(csr, self.assign, now=self.clock.now(), ttl=AGENT_TTL)

    async def challenge(self, roots: Bundle, method: str, payload: bytes) -> bytes:
        self.challenged.append((method, payload))
        return NONCE

    async def attest(self, roots: Bundle, method: str, payload: bytes, csr: bytes) -> AttestResult:
        self.attested.append((roots, method, payload))
        if self.attest_failures:
            raise self.attest_failures.pop(0)
        return AttestResult(self.assign, self._sign(csr), CA.bundle())

    async def renew(self, csr: bytes) -> tuple[x509.Certificate, ...]:
        if self.renew_failures:
            raise self.renew_failures.pop(0)
        self.renewed += 1
        return self._sign(csr)

    def use_credentials(self, credentials: AgentCredentials) -> None:
        self.credentials.append(credentials)


def identity(
    data_dir: Path,
    clock: FakeClock,
    api: FakeAttestationApi | None = None,
    token: str | None = TOKEN,
    bootstrap: Bundle | None = BOOTSTRAP,
    x509pop: X509PopProof | None = None,
) -> tuple[AgentIdentity, FakeAttestationApi]:
    api = api or FakeAttestationApi(clock)
    agent = AgentIdentity(
        client=api,
        store=AgentStore(data_dir, TD),
        params=AgentSvidParams(TD),
        join_token=lambda: token,
        bootstrap_bundle=bootstrap,
        clock=clock,
        x509pop=x509pop,
    )
    return agent, api


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


async def test_first_start_attests_with_the_join_token_against_the_bootstrap_bundle(
    tmp_path: Path, clock: FakeClock
) -> None:
    agent, api = identity(tmp_path, clock)
    credentials = await agent.start()
    assert api.attested == [(BOOTSTRAP, "join_token", TOKEN.encode())]
    assert credentials.svid.spiffe_id == AGENT
    assert credentials.bundle == CA.bundle()
    assert api.credentials == [credentials]
    assert stat.S_IMODE((tmp_path / "agent.json").stat().st_mode) == 0o600


async def test_a_restart_uses_the_saved_svid_without_calling_the_ca(tmp_path: Path, clock: FakeClock) -> None:
    first, _ = identity(tmp_path, clock)
    saved = await first.start()
    restarted, api = identity(tmp_path, clock)
    credentials = await restarted.start()
    assert api.attested == []
    assert credentials.svid.leaf == saved.svid.leaf
    assert api.credentials == [credentials]


async def test_a_restart_logs_that_it_loaded_the_saved_svid(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    first, _ = identity(tmp_path, clock)
    await first.start()
    restarted, _ = identity(tmp_path, clock)
    with caplog.at_level(logging.INFO, logger="sds.agent_svid"):
        await restarted.start()
    assert [m.split(" (")[0] for m in caplog.messages] == [f"loaded saved SVID {AGENT}"]


async def test_first_start_waits_for_an_unreachable_ca_with_backoff_and_bounded_logging(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    delays: list[float] = []

    async def no_sleep(delay: float) -> None:
        delays.append(delay)

    monkeypatch.setattr("sds.agent_svid.asyncio.sleep", no_sleep)
    agent, api = identity(tmp_path, clock)
    api.attest_failures = [UpstreamUnavailable("node API Attest at 127.0.0.1:8082 is unavailable")] * 5
    with caplog.at_level(logging.WARNING, logger="sds.agent_svid"):
        credentials = await agent.start()
    assert credentials.svid.spiffe_id == AGENT
    assert len(api.attested) == 6
    assert len(delays) == 5
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0]  # 0.5 s doubling (up to 30 s), jittered within [ceiling / 2, ceiling]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True)), delays
    # Five failures within ten (monotonic) seconds: the first is logged, the rest are held back.
    assert caplog.messages == [
        f"attestation attempt 1 failed: node API Attest at 127.0.0.1:8082 is unavailable; retrying in {delays[0]:.1f} s"
    ]


@pytest.mark.parametrize(
    "refusal",
    [
        pytest.param(NotAuthorized("join token unknown, used or expired"), id="used-token"),
        pytest.param(InvalidArgument("malformed CSR"), id="invalid"),
    ],
)
async def test_first_start_does_not_retry_a_refused_join_token(
    tmp_path: Path, clock: FakeClock, refusal: Exception
) -> None:
    agent, api = identity(tmp_path, clock)
    api.attest_failures = [refusal]
    with pytest.raises(type(refusal), match=str(refusal)):
        await agent.start()
    assert len(api.attested) == 1


async def test_an_expired_svid_without_a_join_token_stops_the_agent_with_the_fix(
    tmp_path: Path, clock: FakeClock
) -> None:
    first, _ = identity(tmp_path, clock)
    expiry = (await first.start()).svid.leaf.not_valid_after_utc
    clock.advance(AGENT_TTL)
    restarted, _ = identity(tmp_path, clock, token=None)
    with pytest.raises(FailedPrecondition) as caught:
        await restarted.start()
    assert str(caught.value) == (
        f"agent SVID expired at {expiry.isoformat()} and no join token is configured; "
        "generate one with 'trustmesh-ca token generate' and set join_token"
    )


async def test_an_expired_svid_with_a_new_join_token_attests_again(tmp_path: Path, clock: FakeClock) -> None:
    first, _ = identity(tmp_path, clock)
    old = await first.start()
    clock.advance(AGENT_TTL)
    restarted, api = identity(tmp_path, clock, token="join-token-2")
    credentials = await restarted.start()
    assert [(method, payload) for _, method, payload in api.attested] == [("join_token", b"join-token-2")]
    assert credentials.svid.leaf.not_valid_after_utc > clock.now()
    assert credentials.svid.leaf != old.svid.leaf


async def test_an_x509pop_agent_presents_its_chain_and_signs_the_challenge_with_its_key_sending_the_chain_again(
    tmp_path: Path, clock: FakeClock, enterprise_pki: EnterprisePki
) -> None:
    host = enterprise_pki.web
    agent, api = identity(tmp_path, clock, token=None, x509pop=X509PopProof(host.cert, host.key))

    await agent.start()

    assert api.challenged == [("x509pop", host.cert.read_bytes())]
    ((_, method, answer),) = api.attested
    assert method == "x509pop"
    fields = {name: base64.b64decode(value) for name, value in json.loads(answer).items()}
    nonce, signature = fields["nonce"], fields["signature"]
    assert nonce == NONCE
    assert fields["chain"] == host.cert.read_bytes()
    verify_signature(x509.load_pem_x509_certificate(host.cert.read_bytes()), nonce, signature)


async def test_an_expired_svid_of_an_x509pop_agent_attests_again_without_an_operator(
    tmp_path: Path, clock: FakeClock, enterprise_pki: EnterprisePki
) -> None:
    proof = X509PopProof(enterprise_pki.web.cert, enterprise_pki.web.key)
    first, _ = identity(tmp_path, clock, token=None, x509pop=proof)
    await first.start()
    clock.advance(AGENT_TTL)
    restarted, api = identity(tmp_path, clock, token=None, x509pop=proof)

    credentials = await restarted.start()

    assert [method for _, method, _ in api.attested] == ["x509pop"]
    assert credentials.svid.leaf.not_valid_after_utc > clock.now()


async def test_an_x509pop_agent_whose_key_file_is_missing_names_the_setting(
    tmp_path: Path, clock: FakeClock, enterprise_pki: EnterprisePki
) -> None:
    missing = tmp_path / "host.key"
    agent, api = identity(tmp_path, clock, token=None, x509pop=X509PopProof(enterprise_pki.web.cert, missing))

    with pytest.raises(ConfigError) as caught:
        await agent.start()

    assert str(caught.value) == f"x509pop.key_file: cannot read {missing} (No such file or directory)"
    assert (api.challenged, api.attested) == ([], [])


async def test_first_start_without_a_join_token_names_the_fix(tmp_path: Path, clock: FakeClock) -> None:
    agent, _ = identity(tmp_path, clock, token=None)
    with pytest.raises(ConfigError) as caught:
        await agent.start()
    assert str(caught.value) == (
        "the agent has not attested yet and no join token is configured; generate one with "
        "'trustmesh-ca token generate' and set join_token (or join_token_file)"
    )


async def test_first_start_without_a_trust_bundle_names_the_fix(tmp_path: Path, clock: FakeClock) -> None:
    agent, api = identity(tmp_path, clock, bootstrap=None)
    with pytest.raises(ConfigError, match=r"^trust_bundle_path is not set; the agent needs the CA's root"):
        await agent.start()
    assert api.attested == []


async def test_renew_replaces_key_and_svid_and_schedules_the_next_renewal(tmp_path: Path, clock: FakeClock) -> None:
    agent, api = identity(tmp_path, clock)
    old = await agent.start()
    clock.advance(timedelta(minutes=30))
    new = await agent.renew()
    assert new.svid.spiffe_id == AGENT
    assert new.svid.private_key.public_key() != old.svid.private_key.public_key()
    assert api.credentials[-1] == new
    assert AgentStore(tmp_path, TD).load_agent().svid.leaf == new.svid.leaf  # type: ignore[union-attr]
    leaf = new.svid.leaf
    half = leaf.not_valid_before_utc + (leaf.not_valid_after_utc - leaf.not_valid_before_utc) / 2
    assert abs(agent.rotate_at - half) <= AGENT_TTL * 0.05 + timedelta(seconds=1)


async def test_refuses_an_svid_for_a_key_the_agent_did_not_send(tmp_path: Path, clock: FakeClock) -> None:
    agent, api = identity(tmp_path, clock)
    api.sign_other_key = True
    with pytest.raises(X509SvidError) as caught:
        await agent.start()
    assert str(caught.value) == f"the CA returned an SVID for {AGENT} that is not for the key the agent sent"
    assert not (tmp_path / "agent.json").exists()


async def test_refuses_an_agent_id_outside_the_trust_domain(tmp_path: Path, clock: FakeClock) -> None:
    agent, api = identity(tmp_path, clock)
    api.assign = SpiffeId.parse("spiffe://other.example/trustmesh/agent/join_token/node-1")
    with pytest.raises(InvalidArgument) as caught:
        await agent.start()
    assert str(caught.value) == (
        "the CA assigned agent ID spiffe://other.example/trustmesh/agent/join_token/node-1, outside the "
        "configured trust domain example.org; check trust_domain and server_address"
    )


async def test_a_new_bundle_is_saved_and_handed_to_the_client(tmp_path: Path, clock: FakeClock) -> None:
    agent, api = identity(tmp_path, clock)
    await agent.start()
    rotated = CA.bundle(sequence=2)
    await agent.update_bundle(rotated)
    await agent.update_bundle(rotated)
    assert [c.bundle for c in api.credentials] == [CA.bundle(), rotated]
    assert AgentStore(tmp_path, TD).load_agent().bundle == rotated  # type: ignore[union-attr]


class GatedSaves:
    """The store's save_agent, each call held (on its worker thread) until its gate opens."""

    def __init__(self, store: AgentStore, calls: int) -> None:
        self._save = store.save_agent
        self.gates = [threading.Event() for _ in range(calls)]
        self.entered = [threading.Event() for _ in range(calls)]
        self._calls = 0

    def __call__(self, *args: Any) -> None:
        n, self._calls = self._calls, self._calls + 1
        self.entered[n].set()
        self.gates[n].wait(5)
        self._save(*args)


async def test_a_new_bundle_saved_while_a_renewal_is_saved_keeps_the_renewed_svid(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What killed an agent under load in CI: the bundle update read the old SVID while the renewal was
    being saved, saved after it, and so put the old SVID back; when it expired the agent was lost."""
    agent, _ = identity(tmp_path, clock)
    old = await agent.start()
    saves = GatedSaves(agent._store, 2)
    monkeypatch.setattr(agent._store, "save_agent", saves)
    renewal = asyncio.create_task(agent.renew())
    await asyncio.to_thread(saves.entered[0].wait, 5)  # the renewed SVID is being saved
    update = asyncio.create_task(agent.update_bundle(BOTH))
    await asyncio.sleep(0.05)
    saves.gates[0].set()
    renewed = await renewal
    saves.gates[1].set()
    await update
    assert renewed.svid.leaf != old.svid.leaf
    assert (agent.get_current().svid.leaf, agent.get_current().bundle) == (renewed.svid.leaf, BOTH)
    saved = AgentStore(tmp_path, TD).load_agent()
    assert saved is not None
    assert (saved.svid.leaf, saved.bundle) == (renewed.svid.leaf, BOTH)


async def test_a_new_bundle_that_arrives_during_a_renewal_call_is_kept(tmp_path: Path, clock: FakeClock) -> None:
    agent, api = identity(tmp_path, clock)
    await agent.start()
    answer = asyncio.Event()
    signed = api.renew

    async def slow_renew(csr: bytes) -> tuple[x509.Certificate, ...]:
        await answer.wait()
        return await signed(csr)

    api.renew = slow_renew  # type: ignore[method-assign]
    renewal = asyncio.create_task(agent.renew())
    await asyncio.sleep(0.05)  # the RenewAgent call is in flight
    await agent.update_bundle(BOTH)
    answer.set()
    renewed = await renewal
    assert renewed.bundle == BOTH
    assert agent.get_current().bundle == BOTH


def test_bootstrap_bundle_is_read_from_pem(tmp_path: Path) -> None:
    path = tmp_path / "bundle.pem"
    path.write_bytes(BOOTSTRAP.x509_authorities_pem())
    assert load_bootstrap_bundle(path, TD) == BOOTSTRAP
    assert load_bootstrap_bundle(None, TD) is None


def test_bootstrap_bundle_without_certificates_names_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "bundle.pem"
    path.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"^trust_bundle_path: .*bundle\.pem holds no PEM certificates \("):
        load_bootstrap_bundle(path, TD)


async def run_until(agent: AgentIdentity, done: Callable[[], bool]) -> None:
    """Run the renewal loop until ``done()`` (checked every 10 ms, for at most 5 s), then stop it."""
    task = asyncio.create_task(agent.run())
    try:
        for _ in range(500):
            if done():
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert done()


async def test_run_renews_once_the_rotation_time_has_come(tmp_path: Path, clock: FakeClock) -> None:
    agent, api = identity(tmp_path, clock)
    await agent.start()
    clock.advance(agent.rotate_at - clock.now())
    await run_until(agent, lambda: len(api.credentials) == 2)  # renewed, saved and in use
    assert api.renewed == 1
    assert agent.rotate_at > clock.now()


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(UpstreamUnavailable("node API RenewAgent is unavailable"), id="ca-down"),
        pytest.param(FailedPrecondition("no active authority can sign right now"), id="ca-failed-precondition"),
    ],
)
async def test_run_retries_a_failed_renewal(tmp_path: Path, clock: FakeClock, failure: Exception) -> None:
    agent, api = identity(tmp_path, clock)
    await agent.start()
    clock.advance(agent.rotate_at - clock.now())
    api.renew_failures = [failure]
    await run_until(agent, lambda: api.renewed == 1)


async def test_run_stops_when_the_svid_expired_and_no_join_token_is_configured(
    tmp_path: Path, clock: FakeClock
) -> None:
    tokens: list[str | None] = [TOKEN]
    agent = AgentIdentity(
        client=FakeAttestationApi(clock),
        store=AgentStore(tmp_path, TD),
        params=AgentSvidParams(TD),
        join_token=lambda: tokens[-1],
        bootstrap_bundle=BOOTSTRAP,
        clock=clock,
    )
    await agent.start()
    tokens.append(None)
    clock.advance(AGENT_TTL)
    with pytest.raises(FailedPrecondition, match=r"^agent SVID expired at .* and no join token is configured; "):
        async with asyncio.timeout(5):
            await agent.run()


# --- renewal at once: the Sync stream says the agent SVID must go -------------------------------------


def sync_state(bundle: Bundle = BOTH, **fields: Any) -> SyncState:
    return SyncState(1, bundle, **fields)


@pytest.mark.parametrize(
    "make_state",
    [
        pytest.param(lambda old: sync_state(tainted_authority_ids=frozenset({CA.authority_id})), id="signer-tainted"),
        pytest.param(lambda old: sync_state(revoked_serials=frozenset({old.serial_number})), id="serial-revoked"),
        pytest.param(lambda old: sync_state(bundle=NEW_CA.bundle(sequence=3)), id="bundle-no-longer-verifies-it"),
    ],
)
async def test_a_sync_state_against_the_agent_svid_renews_it_at_once(
    tmp_path: Path, clock: FakeClock, make_state: Callable[[x509.Certificate], SyncState]
) -> None:
    agent, api = identity(tmp_path, clock)
    old = (await agent.start()).svid.leaf
    api.signer = NEW_CA
    await agent.follow_sync_state(make_state(old))
    await run_until(agent, lambda: agent.get_current().svid.leaf != old)  # the clock never moved
    assert api.renewed == 1
    assert signer_ids(agent.get_current().svid.cert_chain) == {NEW_CA.authority_id}
    assert agent.rotate_at > clock.now()


async def test_a_sync_state_that_spares_the_agent_svid_renews_nothing(tmp_path: Path, clock: FakeClock) -> None:
    agent, api = identity(tmp_path, clock)
    await agent.start()
    await agent.follow_sync_state(sync_state(tainted_authority_ids=frozenset({NEW_CA.authority_id})))
    task = asyncio.create_task(agent.run())
    await asyncio.sleep(0.2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert api.renewed == 0
    assert api.credentials[-1].bundle == BOTH


async def test_a_ca_that_still_signs_with_the_tainted_authority_is_retried_with_backoff(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    agent, api = identity(tmp_path, clock)
    await agent.start()
    with caplog.at_level(logging.WARNING, logger="sds.agent_svid"):
        await agent.follow_sync_state(sync_state(tainted_authority_ids=frozenset({CA.authority_id})))
        task = asyncio.create_task(agent.run())
        await asyncio.sleep(1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # Backoff 0.25-0.5 s, then 0.5-1 s: at most three attempts in a second, not a spin.
    assert 2 <= api.renewed <= 3
    assert [m.split(";")[0] for m in caplog.messages] == [
        f"agent SVID {AGENT} must be replaced (signing authority tainted)",
        f"the renewed agent SVID {AGENT} must be replaced too (signing authority tainted)",
    ]


async def test_failed_renewals_are_logged_at_most_once_per_ten_seconds(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    agent, api = identity(tmp_path, clock)
    await agent.start()
    api.signer = NEW_CA
    api.renew_failures = [UpstreamUnavailable("node API RenewAgent is unavailable")] * 2
    with caplog.at_level(logging.WARNING, logger="sds.agent_svid"):
        await agent.follow_sync_state(sync_state(tainted_authority_ids=frozenset({CA.authority_id})))
        await run_until(agent, lambda: api.renewed == 1)
    failures = [m for m in caplog.messages if m.startswith("could not renew")]
    assert len(failures) == 1
    assert failures[0].startswith(
        f"could not renew the agent SVID {AGENT} (node API RenewAgent is unavailable); retrying in "
    )
