"""Checks of the configuration alone (docs/analyze.md "Configuration"): the TTL arithmetic the CA refuses
to start with, CRL lifetimes that turn a CA outage into an outage of every Envoy, key custody, and the
freshness of the CRLs in the ``[bridge] legacy_roots`` files."""

from __future__ import annotations

from collections.abc import Iterator

from bridge.legacy_chain import read_pki_file
from bridge.legacy_roots import legacy_crls, legacy_roots_pem
from ca.analysis.authority_checks import CRL_CRITICAL_SHARE, CRL_LATE_SHARE, share_used
from ca.analysis.findings import Context, Finding, Severity, split_fix
from ca.config import ttl_problems
from spiffe_core.durations import format_duration
from spiffe_core.errors import InvalidArgument

TTL_ARITHMETIC = "config.ttl_arithmetic"
CRL_TTL_SHORT = "config.crl_ttl_short"
KEY_CUSTODY = "config.key_custody"
LEGACY_CRL_STALE = "config.legacy_crl_stale"


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


def check_legacy_crl_stale(context: Context) -> Iterator[Finding]:
    """Each CRL in a ``[bridge] legacy_roots`` file, by how much of its validity has passed: past its
    nextUpdate or 95 % an error (Envoy refuses every legacy server that CA issued once it expires), past
    60 % a warning (the job that copies the enterprise CA's CRL into the file is behind). A file the CA
    could not read is left to the CA, which refuses to start with it."""
    for name, path in sorted(context.config.bridge.legacy_roots.items()):
        try:
            crls = legacy_crls(legacy_roots_pem(read_pki_file(path, "legacy roots file"), str(path)))
        except InvalidArgument:
            continue
        for crl in crls:
            share = share_used(crl, context.now)
            next_update = crl.next_update_utc
            if share is None or next_update is None or share <= CRL_LATE_SHARE:
                continue
            issuer = crl.issuer.rfc4514_string()
            state = (
                f"expired at {next_update.isoformat()}: Envoy refuses every legacy server that CA issued"
                if next_update <= context.now
                else f"has used {share:.0%} of its validity (nextUpdate {next_update.isoformat()})"
            )
            yield Finding(
                LEGACY_CRL_STALE,
                Severity.ERROR if share >= CRL_CRITICAL_SHARE else Severity.WARNING,
                f"bridge.legacy_roots.{name}",
                f"the CRL of {issuer} in {path} {state}",
                f"put the enterprise CA's current CRL in {path} (the CA pushes it to every Envoy within "
                "bridge.legacy_roots_check_interval)",
            )
