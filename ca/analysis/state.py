"""Reading what ``analyze`` checks (docs/analyze.md "What it reads"): the datastore named in the
configuration, directly and without writing (so a stopped CA can be analysed, like ``audit verify
--datastore``), and the configured upstream certificate files. The running CA's CRLs come from its admin
API (:mod:`ca.cli_analyze`), since only the running CA holds them.

Problems reading are findings too (``datastore.unreadable``, ``upstream.unreadable``): the configuration
checks still run without a datastore.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from cryptography import x509
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ca.analysis.findings import Finding, PublishedCrls, Severity, State
from ca.analysis.registration_checks import overdue_slack
from ca.config import CaConfig
from ca.store.engine import Database
from ca.store.records import CertificateQuery, JoinTokenQuery
from ca.store.repositories import (
    AgentRepository,
    AuthorityRepository,
    FederationRepository,
    IdentityMappingRepository,
    IssuedCertificateRepository,
    JoinTokenRepository,
    RegistrationEntryRepository,
)
from spiffe_core.errors import TrustmeshError, X509SvidError
from spiffe_core.x509_svid import load_pem_certificates

DATASTORE_UNREADABLE = "datastore.unreadable"
UPSTREAM_UNREADABLE = "upstream.unreadable"
# The most unused join tokens read (each is checked on its own; more would only repeat findings).
MAX_TOKENS_READ = 10_000


def read_upstream_certificates(config: CaConfig) -> tuple[tuple[x509.Certificate, ...], list[Finding]]:
    """The certificates of ``ca.upstream``'s ``cert_file`` and ``bundle_file`` (kind ``disk``), and a
    finding for each that cannot be read: the CA could not mint its next authority from it."""
    upstream = config.ca.upstream
    certificates: list[x509.Certificate] = []
    findings: list[Finding] = []
    for key, path in (("ca.upstream.cert_file", upstream.cert_file), ("ca.upstream.bundle_file", upstream.bundle_file)):
        if upstream.kind != "disk" or path is None:
            continue
        try:
            certificates += load_pem_certificates(Path(path).read_bytes())
        except (OSError, X509SvidError) as err:
            problem = err.strerror if isinstance(err, OSError) else str(err)
            findings.append(
                Finding(
                    UPSTREAM_UNREADABLE,
                    Severity.ERROR,
                    key,
                    f"{key} {path} cannot be read: {problem}; the CA cannot start or mint its next authority",
                    f"point {key} at the upstream CA's PEM certificate file, readable by the CA's user",
                )
            )
    return tuple(certificates), findings


def _unreadable(message: str, fix: str) -> Finding:
    return Finding(DATASTORE_UNREADABLE, Severity.ERROR, "datastore", message, fix)


def _missing_sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    path = Path(parsed.database)
    return None if path.exists() else path


def read_state(config: CaConfig, now: datetime, crls: PublishedCrls) -> tuple[State | None, list[Finding]]:
    """Everything the state checks read, in one unit of work, or None and why not. Never writes: a
    SQLite file that does not exist is not created, a schema that is behind is not migrated."""
    upstream, findings = read_upstream_certificates(config)
    missing = _missing_sqlite_file(config.datastore.url)
    if missing is not None:
        return None, [
            *findings,
            _unreadable(
                f"there is no datastore at {missing}: the CA has not run with this configuration",
                "check --config (server.data_dir, datastore.url), or start the CA once",
            ),
        ]
    try:
        database = Database.open(config.datastore.url)
    except TrustmeshError as err:
        return None, [*findings, _unreadable(f"the datastore cannot be opened: {err}", "fix datastore.url")]
    try:
        if not database.schema_is_current():
            return None, [
                *findings,
                _unreadable(
                    "the datastore's schema is not the one this trustmesh ships (older, or newer)",
                    "run this version of the CA once (it migrates an older schema), or analyze with the "
                    "trustmesh that runs it",
                ),
            ]
        state = _read(database, config, now, upstream, crls)
    except (TrustmeshError, SQLAlchemyError) as err:
        return None, [*findings, _unreadable(f"the datastore cannot be read: {err}", "check datastore.url")]
    finally:
        database.close()
    return state, findings


def _read(
    database: Database,
    config: CaConfig,
    now: datetime,
    upstream: tuple[x509.Certificate, ...],
    crls: PublishedCrls,
) -> State:
    retention = config.datastore.issued_certificate_retention
    with database.transaction() as session:
        certificates = IssuedCertificateRepository(session)
        return State(
            authorities=AuthorityRepository(session).list(),
            agents=AgentRepository(session).list(),
            entries=RegistrationEntryRepository(session).list(),
            unused_tokens=JoinTokenRepository(session).page(JoinTokenQuery(unused_at=now), MAX_TOKENS_READ),
            relationships=FederationRepository(session).list(),
            mappings=tuple(stored.rule for stored in IdentityMappingRepository(session).list()),
            issued_records=certificates.count(CertificateQuery()),
            overdue_records=certificates.count(CertificateQuery(expires_before=now - retention - overdue_slack())),
            upstream_certificates=upstream,
            crls=crls,
        )
