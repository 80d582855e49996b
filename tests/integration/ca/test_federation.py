"""Federation relationships and the fetching of partners' bundles (issue 9, deliverables 2 and 5),
against real local HTTPS bundle endpoints: a partner CA serving ``https_spiffe``, a Web PKI one serving
``https_web``, a partner that is down, and partners whose answers must be refused."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ca.config import load_config
from ca.federation.endpoint import BundleEndpoint, SpiffeServingContexts, WebServingContexts
from ca.federation.relationships import RelationshipSpec
from ca.federation.unknown_keys import UnknownKeyRefresh
from ca.server import CaParts, build_service
from ca.server_identity import server_id
from ca.store.records import Actor, AuthorityKind, EntrySpec, FederationRelationship
from ca.store.repositories import AuditLogRepository
from spiffe_core.bundle import Bundle
from spiffe_core.errors import InvalidArgument, NotAuthorized
from spiffe_core.keys import KeyType, generate_private_key
from spiffe_core.selectors import Selector
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.processes import free_port
from tests.support.store import OFFICER
from tests.support.web_pki import write_web_pki

A = TrustDomain("a.test")
B = TrustDomain("b.test")
OPERATOR = Actor("local-admin", "unix-socket")
HOLD = timedelta(seconds=2)  # two of the test CAs' 1 s refresh hints: when a new serving SVID is presented


def _ca(directory: Path, trust_domain: TrustDomain, extra: str = "") -> CaParts:
    directory.mkdir(exist_ok=True)
    config_file = directory / "ca.toml"
    config_file.write_text(
        f'trust_domain = "{trust_domain.name}"\n[ca.key_manager]\nkind = "memory"\n[bundle]\nrefresh_hint = "1s"\n'
        + extra
    )
    return build_service(load_config(config_file, {}))


@pytest.fixture(scope="module")
def partner(tmp_path_factory: pytest.TempPathFactory) -> CaParts:
    return _ca(tmp_path_factory.mktemp("b"), B)


@pytest.fixture
def ours(tmp_path: Path) -> CaParts:
    web = write_web_pki(tmp_path / "web")
    federation = (
        f'[federation]\nmin_refresh = "1s"\nmax_refresh = "2s"\nfetch_timeout = "2s"\n'
        f'web_ca_file = "{web.root_file}"\nmax_bundle_bytes = 65536\nunknown_key_refresh_interval = "5s"\n'
    )
    return _ca(tmp_path / "a", A, federation)


@dataclass
class Served:
    """What a test partner's endpoint answers; tests swap it to make the partner misbehave."""

    answer: Callable[[], Bundle]
    port: int

    def __call__(self) -> Bundle:
        return self.answer()


async def _serve(endpoint_for: Callable[[Served], BundleEndpoint], served: Served) -> AsyncIterator[Served]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", served.port))
    sock.listen(16)
    sock.setblocking(False)
    task = asyncio.create_task(endpoint_for(served).serve(sock))
    try:
        yield served
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sock.close()


@pytest.fixture
async def spiffe_partner(partner: CaParts) -> AsyncIterator[Served]:
    served = Served(partner.service.get_bundle, free_port())
    contexts = SpiffeServingContexts(partner.identity, partner.service.get_bundle, HOLD, partner.clock)
    async for s in _serve(lambda s: BundleEndpoint(s, contexts), served):
        yield s


@pytest.fixture
async def refreshing(ours: CaParts) -> AsyncIterator[CaParts]:
    task = asyncio.create_task(ours.refresher.run())
    await asyncio.sleep(0)
    try:
        yield ours
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def spiffe_spec(partner: CaParts, port: int, endpoint_id: SpiffeId | None = None) -> RelationshipSpec:
    return RelationshipSpec(
        trust_domain=B,
        bundle_endpoint_url=f"https://127.0.0.1:{port}/",
        profile="https_spiffe",
        endpoint_spiffe_id=endpoint_id or server_id(B),
        bootstrap_bundle=partner.service.get_bundle().to_json(),
    )


async def until(ours: CaParts, done: Callable[[FederationRelationship], bool], what: str) -> FederationRelationship:
    for _ in range(100):
        relationship = await asyncio.to_thread(ours.federation.get, B)
        if done(relationship):
            return relationship
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; status: {relationship}")


async def test_an_https_spiffe_partner_is_fetched_and_its_status_reported(
    refreshing: CaParts, partner: CaParts, spiffe_partner: Served
) -> None:
    refreshing.federation.create(spiffe_spec(partner, spiffe_partner.port), OPERATOR)
    metrics = refreshing.metrics.registry.get_sample_value
    # The refresher commits the status, then sets its gauges: wait for both.
    status = await until(
        refreshing,
        lambda r: (
            r.last_success_at is not None
            and metrics("trustmesh_federation_last_fetch_ok", {"trust_domain": "b.test"}) is not None
        ),
        "a first fetch and its metrics",
    )
    assert status.last_error == ""
    assert status.next_refresh_at is not None
    assert status.last_success_at is not None
    assert status.next_refresh_at > status.last_success_at
    assert refreshing.federation.bundles() == {B: partner.service.get_bundle()}
    assert (
        metrics("trustmesh_federation_bundle_sequence", {"trust_domain": "b.test"})
        == partner.service.get_bundle().sequence
    )
    assert metrics("trustmesh_federation_last_fetch_ok", {"trust_domain": "b.test"}) == 1
    partner_cas = partner.service.get_bundle().x509_authorities
    assert (
        metrics("trustmesh_federation_bundle_expiry_timestamp_seconds", {"trust_domain": "b.test"})
        == max(ca.not_valid_after_utc for ca in partner_cas).timestamp()
    )


async def test_a_partner_down_at_creation_blocks_nothing_and_is_caught_up_when_it_comes(
    refreshing: CaParts, partner: CaParts, tmp_path: Path
) -> None:
    port = free_port()
    refreshing.federation.create(RelationshipSpec(B, f"https://localhost:{port}/", "https_web"), OPERATOR)
    down = await until(refreshing, lambda r: r.last_error != "", "the first failed fetch")  # nothing listens
    assert "failed" in down.last_error
    assert refreshing.federation.bundles() == {}
    web = tmp_path / "web"  # the Web PKI whose root ours trusts (federation.web_ca_file)
    contexts = WebServingContexts(web / "web.pem", web / "web.key")
    served = Served(partner.service.get_bundle, port)
    async for _ in _serve(lambda s: BundleEndpoint(s.answer, contexts), served):
        up = await until(refreshing, lambda r: r.last_success_at is not None, "the partner to be caught up")
    assert up.last_error == ""
    assert refreshing.federation.bundles() == {B: partner.service.get_bundle()}


async def test_a_down_partner_keeps_its_last_good_bundle_and_catches_up_when_back(
    refreshing: CaParts, partner: CaParts
) -> None:
    port = free_port()
    served = Served(partner.service.get_bundle, port)
    contexts = SpiffeServingContexts(partner.identity, partner.service.get_bundle, HOLD, partner.clock)

    def endpoint_for(s: Served) -> BundleEndpoint:
        return BundleEndpoint(s, contexts)

    async for _ in _serve(endpoint_for, served):
        refreshing.federation.create(spiffe_spec(partner, port), OPERATOR)
        good = await until(refreshing, lambda r: r.last_success_at is not None, "a first fetch")
    down = await until(refreshing, lambda r: r.last_error != "", "a failed fetch while the partner is down")
    assert refreshing.federation.bundles() == {B: partner.service.get_bundle()}
    assert down.last_success_at == good.last_success_at
    newer = replace(partner.service.get_bundle(), sequence=partner.service.get_bundle().sequence + 5)
    served.answer = lambda: newer
    async for _ in _serve(endpoint_for, served):
        await until(refreshing, lambda r: r.last_error == "" and r.last_success_at != good.last_success_at, "catch-up")
    assert refreshing.federation.bundles()[B].sequence == newer.sequence


MALICIOUS: list[tuple[str, Callable[[CaParts, CaParts], Callable[[], Bundle]], str]] = [
    ("older-sequence", lambda p, _o: lambda: replace(p.service.get_bundle(), sequence=0), "lower than the last good"),
    (
        "other-trust-domain",
        lambda _p, o: lambda: replace(o.service.get_bundle(), trust_domain=B),
        "a.test's, not b.test's",
    ),
    ("empty", lambda p, _o: lambda: Bundle(B, sequence=p.service.get_bundle().sequence + 1), "no X.509 or JWT"),
]


@pytest.mark.parametrize(("name", "make", "reason"), MALICIOUS, ids=[m[0] for m in MALICIOUS])
async def test_a_malicious_bundle_is_refused_reported_and_changes_nothing(
    refreshing: CaParts,
    partner: CaParts,
    spiffe_partner: Served,
    name: str,
    make: Callable[[CaParts, CaParts], Callable[[], Bundle]],
    reason: str,
) -> None:
    refreshing.federation.create(spiffe_spec(partner, spiffe_partner.port), OPERATOR)
    good = await until(refreshing, lambda r: r.last_success_at is not None, "a first fetch")
    spiffe_partner.answer = make(partner, refreshing)
    refused = await until(refreshing, lambda r: r.last_error != "", f"the {name} bundle to be refused")
    assert reason in refused.last_error
    assert refused.bundle == good.bundle
    assert refreshing.federation.bundles() == {B: partner.service.get_bundle()}
    assert (
        refreshing.metrics.registry.get_sample_value("trustmesh_federation_last_fetch_ok", {"trust_domain": "b.test"})
        == 0
    )


async def test_garbage_and_oversized_answers_are_refused(refreshing: CaParts, partner: CaParts, tmp_path: Path) -> None:
    port = free_port()

    class Garbage(BundleEndpoint):
        def _answer(self, head: bytes) -> tuple[str, bytes]:
            return "200 OK", garbage[0]

    garbage = [b"{not json"]
    contexts = SpiffeServingContexts(partner.identity, partner.service.get_bundle, HOLD, partner.clock)
    async for _ in _serve(
        lambda _s: Garbage(partner.service.get_bundle, contexts), Served(partner.service.get_bundle, port)
    ):
        refreshing.federation.create(spiffe_spec(partner, port), OPERATOR)
        refused = await until(refreshing, lambda r: r.last_error != "", "garbage to be refused")
        assert "not JSON" in refused.last_error
        garbage[0] = b" " * 70_000
        bigger = await until(refreshing, lambda r: "larger" in r.last_error, "a big answer to be refused")
        assert "max_bundle_bytes" in bigger.last_error
    assert refreshing.federation.bundles() == {B: partner.service.get_bundle()}  # the bootstrap bundle stands


async def test_an_https_spiffe_endpoint_with_another_identity_is_refused(
    refreshing: CaParts, partner: CaParts, spiffe_partner: Served
) -> None:
    expected = SpiffeId.parse("spiffe://b.test/bundle-endpoint")
    refreshing.federation.create(spiffe_spec(partner, spiffe_partner.port, expected), OPERATOR)
    refused = await until(refreshing, lambda r: r.last_error != "", "the impostor endpoint to be refused")
    assert f"presented {server_id(B)}, not the configured {expected}" in refused.last_error
    assert refused.last_success_at is None


async def test_an_https_web_partner_is_authenticated_by_the_web_pki(
    refreshing: CaParts, partner: CaParts, tmp_path: Path
) -> None:
    port = free_port()
    web = write_web_pki(tmp_path / "other-web")  # a root ours does not trust
    contexts = WebServingContexts(web.cert_file, web.key_file)
    async for _ in _serve(
        lambda s: BundleEndpoint(partner.service.get_bundle, contexts), Served(partner.service.get_bundle, port)
    ):
        refreshing.federation.create(RelationshipSpec(B, f"https://localhost:{port}/", "https_web"), OPERATOR)
        refused = await until(refreshing, lambda r: r.last_error != "", "an untrusted web certificate")
        assert "CERTIFICATE_VERIFY_FAILED" in refused.last_error
    assert refreshing.federation.bundles() == {}


async def test_an_unknown_key_refresh_fetches_at_once_and_is_rate_limited(
    refreshing: CaParts, partner: CaParts, spiffe_partner: Served
) -> None:
    refreshing.federation.create(spiffe_spec(partner, spiffe_partner.port), OPERATOR)
    await until(refreshing, lambda r: r.last_success_at is not None, "a first fetch")
    assert await refreshing.refresher.refresh_for_unknown_key(B) is True
    assert await refreshing.refresher.refresh_for_unknown_key(B) is False  # within unknown_key_refresh_interval
    assert await refreshing.refresher.refresh_for_unknown_key(TrustDomain("c.test")) is False


def test_specs_that_cannot_work_are_refused_with_the_fix(ours: CaParts, partner: CaParts) -> None:
    bundle = partner.service.get_bundle().to_json()
    bad = {
        "own trust domain": RelationshipSpec(A, "https://x/", "https_web"),
        "not https": RelationshipSpec(B, "http://x/", "https_web"),
        "unknown profile": RelationshipSpec(B, "https://x/", "spiffe"),
        "spiffe without bundle": RelationshipSpec(B, "https://x/", "https_spiffe", server_id(B)),
        "endpoint in another domain": RelationshipSpec(B, "https://x/", "https_spiffe", server_id(A), bundle),
        "garbage bootstrap": RelationshipSpec(B, "https://x/", "https_web", None, "{"),
    }
    for name, spec in bad.items():
        with pytest.raises(InvalidArgument):
            ours.federation.create(spec, OPERATOR)
        assert ours.federation.list() == (), name


def test_mutations_are_audited_with_the_caller(ours: CaParts, partner: CaParts) -> None:
    ours.federation.create(RelationshipSpec(B, "https://localhost:1/", "https_web"), OPERATOR)
    ours.federation.request_refresh(B, OPERATOR)
    ours.federation.delete(B, OPERATOR)
    with ours.database.transaction() as session:
        events = [(r.event.action, r.event.actor) for r in AuditLogRepository(session).list()]
    assert events[-3:] == [(a, OPERATOR) for a in ("federation.create", "federation.refresh", "federation.delete")]


def _attested(ours: CaParts, name: str) -> SpiffeId:
    key = generate_private_key(KeyType.EC_P256)
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    token = ours.join_tokens.generate(timedelta(hours=1), OPERATOR, node_name=name).token
    der = csr.public_bytes(serialization.Encoding.DER)
    return ours.node.attest("join_token", token.encode(), der).spiffe_id


def test_agents_get_exactly_the_partner_bundles_their_entries_federate_with(ours: CaParts, partner: CaParts) -> None:
    federated, plain = _attested(ours, "federated"), _attested(ours, "plain")
    selectors = frozenset({Selector.parse("unix:uid:1000")})
    ours.entries.create(
        EntrySpec(SpiffeId.from_segments(A, "web"), federated, selectors, federates_with=frozenset({B})), OPERATOR
    )
    ours.entries.create(EntrySpec(SpiffeId.from_segments(A, "db"), plain, selectors), OPERATOR)
    ours.federation.create(spiffe_spec(partner, 1), OPERATOR)  # the bootstrap bundle is delivered at once
    assert ours.node.get_sync_state(federated).federated_bundles == {B: partner.service.get_bundle()}
    assert ours.node.get_sync_state(plain).federated_bundles == {}
    ours.federation.delete(B, OPERATOR)
    assert ours.node.get_sync_state(federated).federated_bundles == {}


class CountingRefresher:
    """Stands in for the refresher: counts the fetches it is asked for and reports them failed."""

    def __init__(self) -> None:
        self.asked: list[TrustDomain] = []

    async def refresh_for_unknown_key(self, trust_domain: TrustDomain) -> bool:
        self.asked.append(trust_domain)
        return False


def _federated_agent(ours: CaParts, name: str) -> SpiffeId:
    agent = _attested(ours, name)
    spec = EntrySpec(
        SpiffeId.from_segments(A, name),
        agent,
        frozenset({Selector.parse("unix:uid:1000")}),
        federates_with=frozenset({B}),
    )
    ours.entries.create(spec, OPERATOR)
    return agent


async def test_an_agent_meeting_an_unknown_key_gets_the_partners_bundle_with_it_at_once(
    refreshing: CaParts, partner: CaParts, spiffe_partner: Served
) -> None:
    agent = _federated_agent(refreshing, "validator")
    refreshing.federation.create(spiffe_spec(partner, spiffe_partner.port), OPERATOR)
    await until(refreshing, lambda r: r.last_success_at is not None, "a first fetch")
    known = {a.key_id for a in partner.service.get_bundle().jwt_authorities}
    partner.officer.prepare(AuthorityKind.JWT, OFFICER)  # B's brand-new key, published after A's last fetch
    (new_key,) = {a.key_id for a in partner.service.get_bundle().jwt_authorities} - known

    bundle = await UnknownKeyRefresh(refreshing.node, refreshing.refresher).fetch_bundle_with_key(agent, B, new_key)

    assert bundle is not None
    assert bundle.find_jwt_authority(new_key) is not None
    assert refreshing.node.get_sync_state(agent).federated_bundles == {B: bundle}  # what Sync pushes too


async def test_a_key_the_cas_copy_holds_already_is_answered_without_a_fetch(ours: CaParts, partner: CaParts) -> None:
    agent = _federated_agent(ours, "late-sync")
    ours.federation.create(spiffe_spec(partner, 1), OPERATOR)  # the bootstrap bundle, with B's JWT key
    (held_key, *_) = [a.key_id for a in partner.service.get_bundle().jwt_authorities]
    refresher = CountingRefresher()

    bundle = await UnknownKeyRefresh(ours.node, refresher).fetch_bundle_with_key(agent, B, held_key)

    assert bundle == partner.service.get_bundle()
    assert refresher.asked == []


async def test_only_agents_federated_with_the_partner_may_ask(ours: CaParts, partner: CaParts) -> None:
    plain = _attested(ours, "plain")
    ours.federation.create(spiffe_spec(partner, 1), OPERATOR)
    refresher = CountingRefresher()
    with pytest.raises(NotAuthorized) as refused:
        await UnknownKeyRefresh(ours.node, refresher).fetch_bundle_with_key(plain, B, "any")
    assert str(refused.value) == (
        f"no registration entry parented to {plain} federates with b.test; add --federates-with b.test to the "
        "entries that must trust it"
    )
    assert refresher.asked == []
