"""Configuration checks of ``analyze`` (ca/analysis/config_checks.py): each finds its seeded problem and
stays silent on the defaults."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ca.analysis.config_checks import check_crl_ttl, check_key_custody, check_legacy_crl_stale, check_ttl_arithmetic
from ca.analysis.findings import Finding, Severity
from ca.config import CaConfig
from tests.support.analysis import healthy
from tests.support.enterprise_pki import EnterprisePki


def with_config(**sections: object) -> CaConfig:
    """The default configuration with whole sections replaced by defaults updated with ``sections``."""
    config = CaConfig()
    updates = {name: getattr(config, name).model_copy(update=values) for name, values in sections.items()}  # type: ignore[attr-defined]
    return config.model_copy(update=updates)


def test_ttl_arithmetic_reports_an_svid_maximum_the_ca_ttl_cannot_cover() -> None:
    config = with_config(x509_svid={"max_ttl": timedelta(hours=48)})
    [finding] = check_ttl_arithmetic(healthy(config=config))
    assert (finding.severity, finding.subject) == (Severity.ERROR, "ca.ttl")
    assert finding.message.startswith("ca.ttl (7d) cannot cover x509_svid.max_ttl (2d) with rotation headroom")
    assert finding.fix == "raise ca.ttl to at least 12d or lower x509_svid.max_ttl to at most 28h"


def test_ttl_arithmetic_is_silent_on_the_defaults() -> None:
    assert list(check_ttl_arithmetic(healthy())) == []


def test_a_crl_ttl_shorter_than_the_svids_is_a_warning() -> None:
    config = with_config(revocation={"crl_ttl": timedelta(minutes=30)})
    assert list(check_crl_ttl(healthy(config=config))) == [
        Finding(
            "config.crl_ttl_short",
            Severity.WARNING,
            "revocation.crl_ttl",
            "revocation.crl_ttl (30m) is shorter than the SVIDs it guards live (1h): during a CA outage Envoy refuses "
            "every peer once a CRL expires, while the SVIDs would still be good",
            "raise revocation.crl_ttl to at least 1h (the default is 24h)",
        )
    ]


def test_the_default_crl_ttl_is_silent() -> None:
    assert list(check_crl_ttl(healthy())) == []


def test_keys_kept_in_memory_are_a_warning() -> None:
    config = with_config(ca={"key_manager": CaConfig().ca.key_manager.model_copy(update={"kind": "memory"})})
    [finding] = check_key_custody(healthy(config=config))
    assert (finding.check, finding.severity) == ("config.key_custody", Severity.WARNING)


def test_keys_in_vault_transit_are_silent_and_on_disk_only_informative() -> None:
    vault = with_config(ca={"key_manager": CaConfig().ca.key_manager.model_copy(update={"kind": "vault-transit"})})
    assert list(check_key_custody(healthy(config=vault))) == []
    assert [f.severity for f in check_key_custody(healthy())] == [Severity.INFO]


@pytest.fixture
def legacy_crl_config(tmp_path: Path, enterprise_pki: EnterprisePki) -> CaConfig:
    """A legacy_roots set holding the enterprise root and its issuing CA's CRL (fresh for a week from now)."""
    roots = tmp_path / "corp.pem"
    roots.write_bytes(enterprise_pki.root.read_bytes() + enterprise_pki.crl.read_bytes())
    return with_config(bridge={"legacy_roots": {"corp": roots}})


@pytest.mark.parametrize(
    ("days_later", "severity", "state"),
    [
        pytest.param(5, Severity.WARNING, "has used 7", id="past-60-percent"),
        pytest.param(8, Severity.ERROR, "expired at ", id="past-next-update"),
    ],
)
def test_a_legacy_roots_crl_near_or_past_its_next_update_is_reported(
    legacy_crl_config: CaConfig, days_later: int, severity: Severity, state: str
) -> None:
    later = datetime.now(UTC) + timedelta(days=days_later)
    [finding] = check_legacy_crl_stale(healthy(config=legacy_crl_config, now=later))
    path = legacy_crl_config.bridge.legacy_roots["corp"]
    assert (finding.severity, finding.subject) == (severity, "bridge.legacy_roots.corp")
    assert finding.message.startswith(f"the CRL of CN=Example Corp Issuing CA 1 in {path} {state}")


def test_a_fresh_legacy_roots_crl_and_no_legacy_roots_are_silent(legacy_crl_config: CaConfig) -> None:
    assert list(check_legacy_crl_stale(healthy(config=legacy_crl_config, now=datetime.now(UTC)))) == []
    assert list(check_legacy_crl_stale(healthy())) == []
