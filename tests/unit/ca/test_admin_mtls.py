"""Who an admin client certificate names (ca/admin_mtls.py): configured admins and admin entries hold
roles; other valid SVIDs hold none; expired, revoked, foreign or no-longer-trusted ones prove nothing."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from ca.admin_mtls import MtlsAdmins, MtlsIdentity
from ca.rbac import Role
from spiffe_core.bundle import Bundle
from spiffe_core.errors import NotAuthenticated
from spiffe_core.spiffe_id import SpiffeId, TrustDomain
from tests.support.agent_pki import SigningCa
from tests.support.clock import FakeClock

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
TD = TrustDomain("example.org")
ALICE = SpiffeId.parse("spiffe://example.org/admins/alice")
DEPLOYER = SpiffeId.parse("spiffe://example.org/ci/deployer")
WEB = SpiffeId.parse("spiffe://example.org/web")
CA = SigningCa.create(TD, NOW)


@dataclass(frozen=True)
class Published:
    bundle: Bundle
    revoked_serials: frozenset[int] = frozenset()


class Trust:
    def __init__(self) -> None:
        self.current = Published(CA.bundle())

    def __call__(self) -> Published:
        return self.current


def admins(trust: Trust, clock: FakeClock | None = None) -> MtlsAdmins:
    return MtlsAdmins(
        trust_domain=TD,
        current=trust,
        admins={ALICE: frozenset({Role.SECURITY_OFFICER, Role.AUDITOR})},
        is_admin_entry=lambda spiffe_id: spiffe_id == DEPLOYER,
        admin_entry_role=Role.OPERATOR,
        clock=clock or FakeClock(NOW),
    )


def chain(spiffe_id: SpiffeId, ca: SigningCa = CA) -> tuple[x509.Certificate, ...]:
    return ca.issue(spiffe_id, not_before=NOW - timedelta(minutes=1), not_after=NOW + timedelta(hours=1)).cert_chain


def test_a_configured_admin_holds_its_configured_roles() -> None:
    assert admins(Trust()).authenticate(chain(ALICE)) == MtlsIdentity(
        ALICE, frozenset({Role.SECURITY_OFFICER, Role.AUDITOR})
    )


def test_the_spiffe_id_of_an_admin_entry_holds_the_admin_entry_role() -> None:
    assert admins(Trust()).authenticate(chain(DEPLOYER)).roles == {Role.OPERATOR}


def test_any_other_valid_svid_authenticates_with_no_role() -> None:
    assert admins(Trust()).authenticate(chain(WEB)) == MtlsIdentity(WEB, frozenset())


def test_a_revoked_admin_svid_proves_nothing() -> None:
    trust = Trust()
    presented = chain(ALICE)
    trust.current = replace(trust.current, revoked_serials=frozenset({presented[0].serial_number}))

    with pytest.raises(
        NotAuthenticated, match=r"client SVID spiffe://example.org/admins/alice \(serial [0-9a-f]+\) is revoked"
    ):
        admins(trust).authenticate(presented)


def test_an_expired_admin_svid_proves_nothing() -> None:
    with pytest.raises(NotAuthenticated, match=r"is not a valid X509-SVID of example\.org now"):
        admins(Trust(), FakeClock(NOW + timedelta(hours=2))).authenticate(chain(ALICE))


def test_an_admin_svid_whose_root_left_the_bundle_proves_nothing() -> None:
    trust = Trust()
    presented = chain(ALICE)
    trust.current = Published(SigningCa.create(TD, NOW).bundle())  # rotated and the old root revoked

    with pytest.raises(NotAuthenticated, match="does not chain to the bundle"):
        admins(trust).authenticate(presented)


def test_an_svid_of_another_trust_domain_proves_nothing() -> None:
    foreign = SigningCa.create(TrustDomain("partner.example"), NOW)

    with pytest.raises(NotAuthenticated, match=r"no X\.509 bundle for trust domain partner\.example"):
        admins(Trust()).authenticate(chain(SpiffeId.parse("spiffe://partner.example/admins/alice"), foreign))
