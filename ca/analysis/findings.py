"""What ``trustmesh-ca analyze`` reports (issue 11 item 4; docs/analyze.md): findings with a severity, a
stable check ID, what is wrong and the fix, and the context every check reads.

A check is a plain function ``(Context) -> Iterable[Finding]`` that emits findings of its own check ID
only, so CI can allow-list or grep by ID and each check is tested by seeding its one problem.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509

from bridge.mapping import MappingRule
from ca.config import CaConfig
from ca.store.records import (
    Agent,
    AuthorityRecord,
    FederationRelationship,
    JoinToken,
    RegistrationEntry,
)


class Severity(enum.StrEnum):
    """``error``: something fails now or will without action (``analyze`` exits 1); ``warning``: a risk
    to look at; ``info``: worth knowing, nothing to fix."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return (Severity.ERROR, Severity.WARNING, Severity.INFO).index(self)


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: the check that found it, how bad it is, what it is about (an authority ID, an entry,
    a config key), what is wrong and how to fix it."""

    check: str
    severity: Severity
    subject: str
    message: str
    fix: str


@dataclass(frozen=True, slots=True)
class PublishedCrls:
    """The CRLs the running CA publishes now (DER), or why they could not be fetched (``crls`` None)."""

    crls: tuple[x509.CertificateRevocationList, ...] | None
    unreachable: str = ""


@dataclass(frozen=True, slots=True)
class State:
    """The datastore as ``analyze`` read it (in one unit of work), plus what it read beside it: the
    configured upstream certificates and the running CA's published CRLs."""

    authorities: tuple[AuthorityRecord, ...] = ()
    agents: tuple[Agent, ...] = ()
    entries: tuple[RegistrationEntry, ...] = ()
    unused_tokens: tuple[JoinToken, ...] = ()  # unused and unexpired
    relationships: tuple[FederationRelationship, ...] = ()
    mappings: tuple[MappingRule, ...] = ()
    issued_records: int = 0  # issued-certificate records stored
    overdue_records: int = 0  # records the retention should have deleted a while ago
    upstream_certificates: tuple[x509.Certificate, ...] = ()  # from ca.upstream cert_file and bundle_file
    crls: PublishedCrls = field(default_factory=lambda: PublishedCrls(None, "not asked"))


@dataclass(frozen=True, slots=True)
class Context:
    """What every check reads: the configuration, the state (None when the datastore could not be read:
    only the configuration checks run) and the time of the analysis."""

    config: CaConfig
    now: datetime
    state: State | None = None


Check = Callable[[Context], Iterable[Finding]]


def split_fix(problem: str) -> tuple[str, str]:
    """``<problem>; <fix>`` (the configuration's error lines) as (problem, fix)."""
    message, _, fix = problem.partition("; ")
    return message, fix


def span(delta: timedelta) -> str:
    """A duration as people say it: ``3d 4h``, ``2h 5m``, ``45s``; negative ones as ``-…``."""
    if delta < timedelta(0):
        return "-" + span(-delta)
    seconds = int(delta.total_seconds())
    days, seconds = divmod(seconds, 86_400)
    hours, seconds = divmod(seconds, 3_600)
    minutes, seconds = divmod(seconds, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")) if n]
    return " ".join(parts[:2]) or "0s"


def by_severity(findings: Iterable[Finding]) -> list[Finding]:
    """Errors first, then warnings, then info; by check ID and subject within one severity."""
    return sorted(findings, key=lambda f: (f.severity.rank, f.check, f.subject))
