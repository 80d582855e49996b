"""The rotation thresholds (DESIGN §3 "Authorities"): prepare at 1/2, activate at 5/6 once published for
a refresh hint, prune once nothing signed is alive, recover when nothing usable is active."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from ca.authority import AuthorityState
from ca.rotation import RotationParams, Step, StepKind, next_check, plan_rotation
from ca.store.records import AuthorityKind, AuthorityRecord
from spiffe_core.keys import KeyType
from spiffe_core.spiffe_id import TrustDomain

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LIFE = timedelta(hours=60)
PARAMS = RotationParams(refresh_hint=timedelta(minutes=5), jwt_max_ttl=timedelta(hours=1))


def authority(
    authority_id: str,
    state: AuthorityState,
    *,
    start: datetime = T0,
    kind: AuthorityKind = AuthorityKind.X509,
    **stamps: datetime,
) -> AuthorityRecord:
    return AuthorityRecord(
        id=authority_id,
        kind=kind,
        trust_domain=TrustDomain("example.org"),
        state=state,
        key_type=KeyType.EC_P256,
        key_ref=f"key-{authority_id}",
        public_key_der=b"",
        not_before=start,
        not_after=start + LIFE,
        created_at=start,
        **stamps,  # type: ignore[arg-type]
    )


def x509_steps(
    records: list[AuthorityRecord], now: datetime, signed_until: dict[str, datetime | None] | None = None
) -> list[Step]:
    jwt_active = authority("jwt-a", AuthorityState.ACTIVE, kind=AuthorityKind.JWT, start=now)
    steps = plan_rotation([*records, jwt_active], signed_until or {}, now, PARAMS)
    return [s for s in steps if s.authority_kind is AuthorityKind.X509]


def test_nothing_happens_before_half_of_the_active_authoritys_life() -> None:
    assert x509_steps([authority("a", AuthorityState.ACTIVE)], T0 + LIFE / 2 - timedelta(seconds=1)) == []


def test_the_next_authority_is_prepared_at_half_of_the_active_ones_life() -> None:
    (step,) = x509_steps([authority("a", AuthorityState.ACTIVE)], T0 + LIFE / 2)
    assert step.kind is StepKind.PREPARE


def test_a_prepared_authority_is_activated_at_five_sixths() -> None:
    records = [authority("a", AuthorityState.ACTIVE), authority("b", AuthorityState.PREPARED, start=T0 + LIFE / 2)]
    assert x509_steps(records, T0 + LIFE * 5 / 6 - timedelta(seconds=1)) == []
    (step,) = x509_steps(records, T0 + LIFE * 5 / 6)
    assert (step.kind, step.authority_id) == (StepKind.ACTIVATE, "b")


def test_activation_waits_until_the_prepared_authority_was_published_for_two_refresh_hints() -> None:
    late = T0 + LIFE * 5 / 6 + timedelta(minutes=1)  # prepared late, e.g. the CA was down at half-life
    records = [authority("a", AuthorityState.ACTIVE), authority("b", AuthorityState.PREPARED, start=late)]
    assert x509_steps(records, late + PARAMS.refresh_hint * 2 - timedelta(seconds=1)) == []
    (step,) = x509_steps(records, late + PARAMS.refresh_hint * 2)
    assert step.kind is StepKind.ACTIVATE


def test_an_expired_active_authority_with_nothing_prepared_is_recovered_at_once() -> None:
    (step,) = x509_steps([authority("a", AuthorityState.ACTIVE)], T0 + LIFE)
    assert step.kind is StepKind.RECOVER


def test_an_expired_active_authority_hands_over_to_a_prepared_one_even_if_published_only_now() -> None:
    records = [authority("a", AuthorityState.ACTIVE), authority("b", AuthorityState.PREPARED, start=T0 + LIFE)]
    (step,) = x509_steps(records, T0 + LIFE)
    assert (step.kind, step.authority_id) == (StepKind.ACTIVATE, "b")


def test_a_retired_authority_stays_until_the_last_svid_it_signed_expires() -> None:
    retired = authority("a", AuthorityState.RETIRED, retired_at=T0 + LIFE * 5 / 6)
    active = authority("b", AuthorityState.ACTIVE, start=T0 + LIFE / 2)
    last_svid = T0 + LIFE * 5 / 6 + timedelta(hours=1)
    assert x509_steps([retired, active], last_svid - timedelta(seconds=1), {"a": last_svid}) == []
    (step,) = x509_steps([retired, active], last_svid, {"a": last_svid})
    assert (step.kind, step.authority_id) == (StepKind.PRUNE, "a")


def test_a_retired_authority_that_signed_nothing_stays_one_refresh_hint() -> None:
    retired_at = T0 + LIFE * 5 / 6
    retired = authority("a", AuthorityState.RETIRED, retired_at=retired_at)
    active = authority("b", AuthorityState.ACTIVE, start=T0 + LIFE / 2)
    assert x509_steps([retired, active], retired_at + timedelta(minutes=4)) == []
    assert [s.kind for s in x509_steps([retired, active], retired_at + PARAMS.refresh_hint)] == [StepKind.PRUNE]


def test_a_retired_jwt_key_stays_for_the_longest_jwt_svid_it_may_have_signed() -> None:
    retired_at = T0 + LIFE * 5 / 6
    records = [
        authority("j1", AuthorityState.RETIRED, kind=AuthorityKind.JWT, retired_at=retired_at),
        authority("j2", AuthorityState.ACTIVE, kind=AuthorityKind.JWT, start=T0 + LIFE / 2),
        authority("x", AuthorityState.ACTIVE, start=retired_at),
    ]
    assert plan_rotation(records, {}, retired_at + PARAMS.jwt_max_ttl - timedelta(seconds=1), PARAMS) == ()
    (step,) = plan_rotation(records, {}, retired_at + PARAMS.jwt_max_ttl, PARAMS)
    assert (step.kind, step.authority_id) == (StepKind.PRUNE, "j1")


def test_the_active_authority_is_never_pruned() -> None:
    assert x509_steps([authority("a", AuthorityState.ACTIVE)], T0 + LIFE / 3, {"a": T0}) == []


def test_next_check_is_the_earliest_threshold_ahead() -> None:
    active = authority("a", AuthorityState.ACTIVE)
    jwt = replace(authority("j", AuthorityState.ACTIVE, kind=AuthorityKind.JWT), not_after=T0 + LIFE * 2)
    assert next_check([active, jwt], {}, T0 + timedelta(hours=1), PARAMS) == T0 + LIFE / 2
    assert next_check([active, jwt], {}, T0 + LIFE / 2, PARAMS) == T0 + LIFE * 5 / 6


def test_a_revoked_ca_is_kept_until_its_certificate_expires_so_the_root_crl_still_lists_it() -> None:
    revoked_at = T0 + LIFE / 3
    revoked = authority("r", AuthorityState.REVOKED, revoked_at=revoked_at)
    active = authority("a", AuthorityState.ACTIVE, start=revoked_at)
    long_after_its_svids = revoked_at + PARAMS.refresh_hint + timedelta(hours=2)

    def pruned(now: datetime) -> list[str]:
        steps = x509_steps([revoked, active], now, {"r": revoked_at})
        return [s.authority_id for s in steps if s.kind is StepKind.PRUNE]

    assert pruned(long_after_its_svids) == []
    assert pruned(revoked.not_after) == ["r"]
