"""Checks of the configuration alone (docs/analyze.md "Configuration"): the TTL arithmetic the CA refuses
to start with, CRL lifetimes that turn a CA outage into an outage of every Envoy, and key custody."""

from __future__ import annotations

from collections.abc import Iterator

from ca.analysis.findings import Context, Finding, Severity, split_fix
from ca.config import ttl_problems
from spiffe_core.durations import format_duration

TTL_ARITHMETIC = "config.ttl_arithmetic"
CRL_TTL_SHORT = "config.crl_ttl_short"
KEY_CUSTODY = "config.key_custody"


def check_ttl_arithmetic(context: Context) -> Iterator[Finding]:
    """Each way the TTLs break rotation or each other (:func:`ca.config.ttl_problems`: SVID maxima against
    ca.ttl/6, defaults against maxima, the agent SVID TTL, the bundle refresh hint). The CA refuses to
    start with any of them, so each is an error."""
    for problem in ttl_problems(context.config):
        message, fix = split_fix(problem)
        key = message.partition(" ")[0].rstrip(":")
        yield Finding(TTL_ARITHMETIC, Severity.ERROR, key, message, fix)


def check_crl_ttl(context: Context) -> Iterator[Finding]:
    """CRLs that expire before the SVIDs they guard (Vault's ``crl_validity_period``, for the lifetime
    chosen): agents keep serving their SVIDs through a CA outage, but once any CRL expired Envoy refuses
    every peer whose chain it covers, so ``revocation.crl_ttl`` shorter than the SVIDs' lifetime makes a
    short CA outage a mesh outage."""
    config = context.config
    longest = max(config.x509_svid.default_ttl, config.agent_svid.ttl)
    crl_ttl = config.revocation.crl_ttl
    if crl_ttl < longest:
        yield Finding(
            CRL_TTL_SHORT,
            Severity.WARNING,
            "revocation.crl_ttl",
            f"revocation.crl_ttl ({format_duration(crl_ttl)}) is shorter than the SVIDs it guards live "
            f"({format_duration(longest)}): during a CA outage Envoy refuses every peer once a CRL expires, "
            "while the SVIDs would still be good",
            f"raise revocation.crl_ttl to at least {format_duration(longest)} (the default is 24h)",
        )


def check_key_custody(context: Context) -> Iterator[Finding]:
    """Where the authorities' private keys live (Vault's ``hardware_backed_root``): ``memory`` loses them on
    every restart (a new root each time: every agent and partner must fetch the bundle again), ``disk``
    keeps them encrypted on this host (worth knowing: ``vault-transit`` keeps them non-exportable)."""
    kind = context.config.ca.key_manager.kind
    if kind == "memory":
        yield Finding(
            KEY_CUSTODY,
            Severity.WARNING,
            "ca.key_manager.kind",
            "the authorities' keys are kept in memory only: every restart starts a new root, and every agent "
            "and federation partner must then be given the new bundle",
            "set ca.key_manager.kind = 'disk' (encrypted files) or 'vault-transit' (keys that never leave Vault)",
        )
    elif kind == "disk":
        yield Finding(
            KEY_CUSTODY,
            Severity.INFO,
            "ca.key_manager.kind",
            "the authorities' keys are encrypted files on this host, readable by whoever holds the key-encryption key",
            "nothing to fix; 'vault-transit' keeps the keys non-exportable in Vault (docs/vault.md)",
        )
