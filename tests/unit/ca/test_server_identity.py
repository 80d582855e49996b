"""The CA's serving identity (ca/server_identity.py): re-issued at once when another X.509 authority
becomes active (checked at start and on authority_changed(), which any thread may call), kept when
the signing authority stays active or none is active, and renewals retried with capped exponential
backoff (1 s → 60 s) and logged at most once per 10 s. Sleeps are recorded, never waited for."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from ca.audit import SERVER_IDENTITY, Issuance
from ca.issuance import IssuedX509Svid, X509SvidRequest
from ca.server_identity import ServerIdentity
from spiffe_core.errors import NoActiveAuthority
from spiffe_core.spiffe_id import TrustDomain
from tests.support.agent_pki import SigningCa
from tests.support.clock import FakeClock

TD = TrustDomain("example.org")
NOW = datetime(2030, 1, 1, 12, tzinfo=UTC)
TTL = timedelta(hours=1)
OLD = SigningCa.create(TD, NOW - timedelta(days=1), ttl=timedelta(days=3))
NEW = SigningCa.create(TD, NOW - timedelta(days=1), ttl=timedelta(days=3))
NO_ACTIVE = "trust domain example.org has no active X.509 authority"


class FakeIssuer:
    """Signs with ``signer`` like the CA's active authority would; fails the next ``failures`` calls."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.signer = OLD
        self.failures = 0
        self.calls = 0
        self.issuances: list[Issuance] = []

    def mint_x509_svids(self, requests: Sequence[X509SvidRequest], issuance: Issuance) -> list[IssuedX509Svid]:
        self.calls += 1
        self.issuances.append(issuance)
        if self.failures:
            self.failures -= 1
            raise NoActiveAuthority(NO_ACTIVE)
        (request,) = requests
        chain = self.signer.sign_csr(
            request.csr, request.spiffe_id, now=self.clock.now(), ttl=TTL, dns_names=request.dns_names
        )
        return [IssuedX509Svid(request.spiffe_id, chain, self.signer.authority_id, chain[0].serial_number)]


class RecordingSleep:
    """Records every delay; the first ``returns`` calls return at once, later ones park (a long sleep)."""

    def __init__(self, returns: int = 0) -> None:
        self.delays: list[float] = []
        self.returns = returns

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if len(self.delays) > self.returns:
            await asyncio.Event().wait()
        await asyncio.sleep(0)


@dataclass
class Harness:
    identity: ServerIdentity
    issuer: FakeIssuer
    sleep: RecordingSleep
    active: list[str | None]  # active[0] is what active_authority_id() answers


def harness(returns: int = 0, active: str | None = OLD.authority_id) -> Harness:
    clock = FakeClock(NOW)
    issuer = FakeIssuer(clock)
    sleep = RecordingSleep(returns)
    current: list[str | None] = [active]
    identity = ServerIdentity(issuer, TD, "trustmesh-ca", clock, lambda: current[0], rng=random.Random(1), sleep=sleep)
    identity.rotate()
    return Harness(identity, issuer, sleep, current)


async def eventually(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met within 5 s")


@pytest.fixture
async def running() -> AsyncIterator[Callable[[Harness], None]]:
    tasks: list[asyncio.Task[None]] = []
    yield lambda h: tasks.append(asyncio.create_task(h.identity.run()))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_the_serving_svid_is_issued_as_the_ca_itself_for_the_audit_log() -> None:
    assert harness().issuer.issuances == [Issuance(SERVER_IDENTITY)]


async def test_waits_for_half_life_while_the_signing_authority_is_active(running: Callable[[Harness], None]) -> None:
    h = harness()
    running(h)
    await eventually(lambda: len(h.sleep.delays) == 1)
    assert h.sleep.delays == [(TTL / 2).total_seconds()]
    assert h.issuer.calls == 1


async def test_reissues_at_once_when_another_authority_becomes_active(running: Callable[[Harness], None]) -> None:
    h = harness()
    running(h)
    await eventually(lambda: len(h.sleep.delays) == 1)
    h.issuer.signer = NEW
    h.active[0] = NEW.authority_id
    await asyncio.to_thread(h.identity.authority_changed)  # from another thread, as the authority manager may
    await eventually(lambda: h.identity.get_current().authority_id == NEW.authority_id)
    assert h.issuer.calls == 2
    await eventually(lambda: len(h.sleep.delays) == 2)  # back to waiting for half life
    assert h.sleep.delays[1] == (TTL / 2).total_seconds()


async def test_a_change_that_leaves_the_signing_authority_active_reissues_nothing(
    running: Callable[[Harness], None],
) -> None:
    h = harness()
    running(h)
    await eventually(lambda: len(h.sleep.delays) == 1)
    h.identity.authority_changed()
    await eventually(lambda: len(h.sleep.delays) == 2)
    assert h.issuer.calls == 1
    assert h.identity.get_current().authority_id == OLD.authority_id


async def test_reissues_at_start_when_another_authority_is_active(running: Callable[[Harness], None]) -> None:
    h = harness(active=NEW.authority_id)
    h.issuer.signer = NEW
    running(h)
    await eventually(lambda: h.identity.get_current().authority_id == NEW.authority_id)
    await eventually(lambda: len(h.sleep.delays) == 1)
    assert h.sleep.delays == [(TTL / 2).total_seconds()]  # no sleep before the re-issue


async def test_without_an_active_authority_the_current_svid_serves_until_half_life(
    running: Callable[[Harness], None],
) -> None:
    h = harness(active=None)
    running(h)
    await eventually(lambda: len(h.sleep.delays) == 1)
    h.identity.authority_changed()
    await eventually(lambda: len(h.sleep.delays) == 2)
    assert h.issuer.calls == 1


async def test_failed_renewals_back_off_exponentially_up_to_a_minute_and_log_once(
    running: Callable[[Harness], None], caplog: pytest.LogCaptureFixture
) -> None:
    h = harness(returns=9, active=NEW.authority_id)
    h.issuer.signer = NEW
    h.issuer.failures = 9
    with caplog.at_level(logging.WARNING, logger="ca.server_identity"):
        running(h)
        await eventually(lambda: len(h.sleep.delays) == 10)
    ceilings = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    backoffs = h.sleep.delays[:9]
    assert all(c / 2 <= d <= c for c, d in zip(ceilings, backoffs, strict=True)), backoffs
    assert h.sleep.delays[9] == (TTL / 2).total_seconds()  # renewed: back to half life
    assert h.identity.get_current().authority_id == NEW.authority_id
    assert len(caplog.messages) == 1
    assert caplog.messages[0].startswith(
        f"could not renew the node API serving SVID ({NO_ACTIVE}); retrying in {backoffs[0]:.1f} s"
    )


async def test_a_renewal_the_active_authority_did_not_sign_is_retried_with_backoff(
    running: Callable[[Harness], None], caplog: pytest.LogCaptureFixture
) -> None:
    h = harness(returns=3, active=NEW.authority_id)  # the issuer keeps signing with OLD
    with caplog.at_level(logging.WARNING, logger="ca.server_identity"):
        running(h)
        await eventually(lambda: len(h.sleep.delays) == 4)
    assert all(c / 2 <= d <= c for c, d in zip([1.0, 2.0, 4.0, 8.0], h.sleep.delays, strict=True))
    assert h.issuer.calls == 1 + 4  # the first SVID, the re-issue at start, one after each of three backoffs
    assert caplog.messages[0].startswith(
        f"the node API serving SVID was signed by authority {OLD.authority_id}, but {NEW.authority_id} is active; "
    )


async def test_authority_changed_outside_run_does_nothing() -> None:
    h = harness()
    h.identity.authority_changed()  # before run
    task = asyncio.create_task(h.identity.run())
    await eventually(lambda: len(h.sleep.delays) == 1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    h.identity.authority_changed()  # after run
    assert h.issuer.calls == 1


async def test_without_a_serving_svid_yet_run_signs_one_at_once_backing_off_while_it_cannot(
    running: Callable[[Harness], None],
) -> None:
    clock = FakeClock(NOW)
    issuer = FakeIssuer(clock)
    issuer.failures = 2  # nothing could sign at start-up, nor on the first retry
    sleep = RecordingSleep(returns=2)
    identity = ServerIdentity(issuer, TD, "trustmesh-ca", clock, lambda: None, rng=random.Random(1), sleep=sleep)
    running(Harness(identity, issuer, sleep, [None]))
    await eventually(lambda: len(sleep.delays) == 3)
    assert identity.get_current().authority_id == OLD.authority_id
    assert all(c / 2 <= d <= c for c, d in zip([1.0, 2.0], sleep.delays[:2], strict=True))
    assert sleep.delays[2] == (TTL / 2).total_seconds()
