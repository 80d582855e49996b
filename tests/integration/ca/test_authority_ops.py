"""Authority lifecycle on a real datastore (SQLite and PostgreSQL): scheduled rotation through
generations with a hand-moved clock, officer operations with their guard rails, dry runs that change
nothing and count what the real operation then does, and leaf revocation into the CRLs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca.audit import Issuance
from ca.authority import AuthorityState
from ca.authority_manager import AuthorityManager, AuthorityParams
from ca.authority_ops import AuthorityOperations
from ca.issuance import JwtSvidRequest, X509SvidRequest
from ca.keys.memory import MemoryKeyManager
from ca.rotation import PUBLISH_HINTS
from ca.rotator import Rotator
from ca.service import CaService
from ca.store import Database
from ca.store.records import AuthorityKind
from ca.store.repositories import AuthorityRepository, IssuedCertificateRepository, TrustBundleStateRepository
from ca.upstream import SelfSignedUpstream
from spiffe_core.errors import FailedPrecondition, JwtSvidError, NoActiveAuthority
from spiffe_core.jwt_svid import validate_jwt_svid
from spiffe_core.keys import KeyType
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.clock import FakeClock
from tests.support.enterprise_pki import ca_use_cases
from tests.support.store import OFFICER, TESTER

TD = TrustDomain("example.org")
CA_TTL = timedelta(minutes=60)
SVID_TTL = timedelta(minutes=10)
HINT = timedelta(minutes=1)
WEB = SpiffeId.parse("spiffe://example.org/web")


@dataclass
class Ca:
    clock: FakeClock
    authorities: AuthorityManager
    ops: AuthorityOperations
    rotator: Rotator
    service: CaService
    database: Database

    def mint(self, spiffe_id: SpiffeId = WEB) -> int:
        key = ec.generate_private_key(ec.SECP256R1())
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
        (svid,) = self.service.mint_x509_svids(
            [X509SvidRequest(csr.public_bytes(serialization.Encoding.DER), spiffe_id)], Issuance(TESTER)
        )
        return svid.serial

    def states(self) -> dict[str, AuthorityState]:
        return {v.record.id: v.record.state for v in self.ops.list() if v.record.kind is AuthorityKind.X509}

    def active_id(self) -> str:
        return self.authorities.get_current().active_x509().id

    def db_dump(self) -> tuple[object, ...]:
        with self.database.transaction() as session:
            return (
                AuthorityRepository(session).list(),
                TrustBundleStateRepository(session).current_bundle_sequence(TD),
                IssuedCertificateRepository(session).revoked_live(self.clock.now()),
            )


@pytest.fixture
def ca(database: Database) -> Ca:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    manager = AuthorityManager(
        database,
        MemoryKeyManager(),
        SelfSignedUpstream(),
        AuthorityParams(TD, KeyType.EC_P256, KeyType.EC_P256, CA_TTL, HINT),
        clock,
    )
    manager.load()
    cases = ca_use_cases(database, manager, clock, SVID_TTL)
    return Ca(clock, manager, cases.officer, cases.rotator, cases.service, database)


def test_scheduled_rotation_runs_generations_and_prunes_what_signed_nothing_alive(ca: Ca) -> None:
    first = ca.active_id()
    seen = [first]
    for _ in range(3):
        ca.mint()
        for _ in range(20):  # walk through one CA lifetime in steps, as the rotation task would
            ca.clock.advance(CA_TTL / 20)
            ca.rotator.tick()
            ca.mint()
        seen.append(ca.active_id())
    assert len(set(seen)) == 4, "every lifetime must have activated a new authority"
    states = ca.states()
    assert first not in states, "the first authority signed nothing alive for long; it must be pruned"
    assert list(states.values()).count(AuthorityState.ACTIVE) == 1
    assert len(ca.authorities.get_current().bundle.x509_authorities) <= 3


def test_prepared_authority_is_published_before_it_signs(ca: Ca) -> None:
    ca.clock.advance(CA_TTL / 2)
    ca.rotator.tick()
    prepared = [i for i, s in ca.states().items() if s is AuthorityState.PREPARED]
    assert len(prepared) == 1
    assert len(ca.authorities.get_current().bundle.x509_authorities) == 2
    assert ca.active_id() != prepared[0]


def test_activate_is_refused_before_the_prepared_authority_was_published_for_two_refresh_hints(ca: Ca) -> None:
    report = ca.ops.prepare(AuthorityKind.X509, OFFICER)
    new_id = report.changes[0].authority_id
    with pytest.raises(FailedPrecondition, match="refresh"):
        ca.ops.activate(new_id, OFFICER)
    ca.clock.advance(HINT)
    with pytest.raises(FailedPrecondition, match="2 chances"):
        ca.ops.activate(new_id, OFFICER)
    ca.clock.advance(HINT)
    ca.ops.activate(new_id, OFFICER)
    assert ca.active_id() == new_id


def test_a_second_prepare_is_refused(ca: Ca) -> None:
    ca.ops.prepare(AuthorityKind.X509, OFFICER)
    with pytest.raises(FailedPrecondition, match="prepared already"):
        ca.ops.prepare(AuthorityKind.X509, OFFICER)


def test_the_active_authority_cannot_be_revoked_or_tainted(ca: Ca) -> None:
    with pytest.raises(FailedPrecondition, match="active"):
        ca.ops.revoke(ca.active_id(), OFFICER)
    with pytest.raises(FailedPrecondition, match="active"):
        ca.ops.taint(ca.active_id(), OFFICER)


def test_revoking_an_authority_with_live_svids_needs_a_taint_first(ca: Ca) -> None:
    old = ca.active_id()
    ca.mint()
    new_id = ca.ops.prepare(AuthorityKind.X509, OFFICER).changes[0].authority_id
    ca.clock.advance(HINT * PUBLISH_HINTS)
    ca.ops.activate(new_id, OFFICER)
    with pytest.raises(FailedPrecondition, match="Taint it first"):
        ca.ops.revoke(old, OFFICER)
    ca.ops.taint(old, OFFICER)
    ca.ops.revoke(old, OFFICER)
    current = ca.authorities.get_current()
    assert old not in {a.id for a in current.x509}
    assert len(current.bundle.x509_authorities) == 1


def test_dry_runs_change_nothing_and_report_what_the_operation_then_does(ca: Ca) -> None:
    old = ca.active_id()
    for _ in range(3):
        ca.mint()
    new_id = ca.ops.prepare(AuthorityKind.X509, OFFICER).changes[0].authority_id
    ca.clock.advance(HINT * PUBLISH_HINTS)
    ca.ops.activate(new_id, OFFICER)
    before = ca.db_dump()
    dry = ca.ops.taint(old, OFFICER, dry_run=True)
    assert ca.db_dump() == before
    real = ca.ops.taint(old, OFFICER)
    assert dry.dry_run
    assert not real.dry_run
    assert (dry.svids_affected, dry.changes, dry.bundle_x509) == (real.svids_affected, real.changes, real.bundle_x509)
    assert real.svids_affected == 3


def test_emergency_rotation_activates_a_new_authority_and_taints_the_old_one_in_one_step(ca: Ca) -> None:
    old = ca.active_id()
    ca.mint()
    dry = ca.ops.rotate_now(AuthorityKind.X509, OFFICER, dry_run=True)
    assert ca.active_id() == old
    report = ca.ops.rotate_now(AuthorityKind.X509, OFFICER)
    assert ca.active_id() != old
    assert ca.states()[old] is AuthorityState.TAINTED
    assert old in ca.authorities.get_current().tainted_ids()
    assert dry.svids_affected == report.svids_affected == 1


def test_an_expired_active_authority_is_never_used_to_sign(ca: Ca) -> None:
    ca.clock.advance(CA_TTL)
    with pytest.raises(NoActiveAuthority, match="expired"):
        ca.mint()
    with pytest.raises(NoActiveAuthority):
        ca.service.check_ready()


def test_the_rotation_task_recovers_from_an_expired_authority(ca: Ca) -> None:
    old = ca.active_id()
    ca.clock.advance(CA_TTL * 2)
    ca.rotator.tick()
    assert ca.active_id() != old
    ca.mint()
    ca.service.check_ready()


def test_a_revoked_svid_is_in_its_authoritys_crl_and_pushed_as_revoked(ca: Ca) -> None:
    serial = ca.mint()
    other = ca.mint(SpiffeId.parse("spiffe://example.org/db"))
    report = ca.ops.revoke_svids(OFFICER, serial=serial, reason=x509.ReasonFlags.key_compromise)
    assert report.revoked_serials == (serial,)
    current = ca.authorities.get_current()
    assert serial in current.revoked_serials
    assert other not in current.revoked_serials
    (crl_der,) = current.crls
    crl = x509.load_der_x509_crl(crl_der)
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    assert crl.get_revoked_certificate_by_serial_number(other) is None


def test_revoking_by_spiffe_id_revokes_every_live_svid_of_it(ca: Ca) -> None:
    serials = {ca.mint(), ca.mint()}
    dry = ca.ops.revoke_svids(OFFICER, spiffe_id=WEB, dry_run=True)
    assert ca.authorities.get_current().revoked_serials == frozenset()
    report = ca.ops.revoke_svids(OFFICER, spiffe_id=WEB)
    assert set(dry.revoked_serials) == set(report.revoked_serials) == serials
    assert ca.authorities.get_current().revoked_serials == serials


def test_a_revoked_jwt_key_leaves_the_bundle_and_its_tokens_no_longer_validate(ca: Ca) -> None:
    token, _ = ca.service.mint_jwt_svid(JwtSvidRequest(WEB, ("payments",)), TESTER)
    old_kid = ca.authorities.get_current().active_jwt().key_id
    validate_jwt_svid(token, audience="payments", bundle_source=ca.authorities.get_current().bundle, now=ca.clock.now())
    ca.ops.rotate_now(AuthorityKind.JWT, OFFICER)
    assert old_kid in ca.authorities.get_current().tainted_ids()
    ca.ops.revoke(old_kid, OFFICER)
    bundle = ca.authorities.get_current().bundle
    assert old_kid not in {key.key_id for key in bundle.jwt_authorities}
    with pytest.raises(JwtSvidError):
        validate_jwt_svid(token, audience="payments", bundle_source=bundle, now=ca.clock.now())


def test_an_activation_leaves_the_crls_as_they_were_so_no_validation_context_changes(ca: Ca) -> None:
    new_id = ca.ops.prepare(AuthorityKind.X509, OFFICER).changes[0].authority_id
    before = set(ca.authorities.get_current().crls)
    ca.clock.advance(HINT * PUBLISH_HINTS)
    ca.ops.activate(new_id, OFFICER)
    assert set(ca.authorities.get_current().crls) == before
    assert len(before) == 2


def test_a_revocation_re_signs_only_the_crl_of_the_authority_that_signed_the_svid(ca: Ca) -> None:
    new_id = ca.ops.prepare(AuthorityKind.X509, OFFICER).changes[0].authority_id
    before = set(ca.authorities.get_current().crls)
    ca.ops.revoke_svids(OFFICER, serial=ca.mint())
    after = set(ca.authorities.get_current().crls)
    (kept,) = before & after
    assert x509.load_der_x509_crl(kept).extensions.get_extension_for_class(
        x509.AuthorityKeyIdentifier
    ).value.key_identifier == bytes.fromhex(new_id)


def test_crls_are_re_signed_at_half_their_life_by_the_rotation_task(database: Database) -> None:
    crl_ttl = CA_TTL / 3  # shorter than the authority's own rotation, so only the CRL is due
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    params = AuthorityParams(TD, KeyType.EC_P256, KeyType.EC_P256, CA_TTL, HINT, crl_ttl=crl_ttl)
    manager = AuthorityManager(database, MemoryKeyManager(), SelfSignedUpstream(), params, clock)
    manager.load()
    rotator = ca_use_cases(database, manager, clock, SVID_TTL).rotator
    first = set(manager.get_current().crls)
    clock.advance(crl_ttl / 2 - timedelta(seconds=1))
    rotator.tick()
    assert set(manager.get_current().crls) == first
    clock.advance(timedelta(seconds=1))
    rotator.tick()
    (renewed,) = manager.get_current().crls
    assert renewed not in first
    assert x509.load_der_x509_crl(renewed).next_update_utc == clock.now() + crl_ttl
