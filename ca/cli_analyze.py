"""``trustmesh-ca analyze [--json] [--offline] [--list]``: check the configuration and the datastore's live
state and print findings with their severity, check ID and fix (issue 11 item 4; docs/analyze.md).

It reads the configuration given with ``--config`` (TTL problems the CA would refuse to start with become
findings, so the rest is still checked) and the datastore it names, directly and read-only, so it works on
a stopped CA as on a running one. Only the CRLs come from the running CA's admin API (the local socket,
or ``--server``): they exist only in the CA's memory; when it cannot be reached, or with ``--offline``,
that is one ``info`` finding and the CRL freshness checks are skipped.

Exit status: 1 when any finding is an error (usable as a CI or GitOps gate), 0 otherwise.
"""

from __future__ import annotations

import argparse
import functools
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from ca.analysis.checks import CHECKS, exit_code, run_checks
from ca.analysis.findings import Context, Finding, PublishedCrls, Severity, by_severity
from ca.analysis.state import read_state
from ca.cli_authorities import AdminApi, print_json
from ca.config import CaConfig
from spiffe_core.errors import TrustmeshError

ClientFactory = Callable[[argparse.Namespace], AdminApi]
ConfigFactory = Callable[[argparse.Namespace], CaConfig]


def fetch_crls(client_factory: ClientFactory, args: argparse.Namespace) -> PublishedCrls:
    """The running CA's published CRLs, or why they could not be had (a stopped CA is not an error here)."""
    try:
        with client_factory(args) as client:
            published = client.get_json("/v1/crls")["crls"]
    except TrustmeshError as err:
        return PublishedCrls(None, f"the CA's admin API did not answer ({err})")
    return PublishedCrls(tuple(x509.load_pem_x509_crl(crl["pem"].encode()) for crl in published))


def finding_lines(findings: Sequence[Finding]) -> list[str]:
    """Each finding as ``<severity> <check> (<subject>): <message>`` and an indented ``fix:`` line, then
    the counts."""
    lines: list[str] = []
    for finding in findings:
        lines.append(f"{finding.severity.value} {finding.check} ({finding.subject}): {finding.message}")
        lines.append(f"  fix: {finding.fix}")
    counts = Counter(finding.severity for finding in findings)
    errors, warnings, info = (counts[severity] for severity in Severity)
    lines.append(f"analyze: errors {errors}, warnings {warnings}, info {info}")
    return lines


def _document(findings: Sequence[Finding]) -> dict[str, Any]:
    counts = Counter(finding.severity.value for finding in findings)
    return {
        "findings": [
            {"check": f.check, "severity": f.severity.value, "subject": f.subject, "message": f.message, "fix": f.fix}
            for f in findings
        ],
        "counts": {severity.value: counts[severity.value] for severity in Severity},
    }


def check_list() -> list[str]:
    """``analyze --list``: every check ID and what it looks for, aligned."""
    width = max(len(check.id) for check in CHECKS)
    return [f"{check.id:<{width}}  {check.summary}" for check in CHECKS]


def cmd_analyze(args: argparse.Namespace, client_factory: ClientFactory, config_factory: ConfigFactory) -> int:
    if args.list:
        print("\n".join(check_list()))
        return 0
    config = config_factory(args)
    now = datetime.now(UTC)
    crls = PublishedCrls(None, "--offline was given") if args.offline else fetch_crls(client_factory, args)
    state, problems = read_state(config, now, crls)
    findings = by_severity([*problems, *run_checks(Context(config, now, state))])
    if args.json:
        print_json(_document(findings))
    else:
        print("\n".join(finding_lines(findings)))
    return exit_code(findings)


def add_analyze_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    client_factory: ClientFactory,
    config_factory: ConfigFactory,
) -> None:
    """Register ``analyze`` under ``trustmesh-ca``; ``config_factory`` loads the configuration without
    refusing its TTL arithmetic (that is a finding here)."""
    analyze = commands.add_parser(
        "analyze", help="check the configuration and the datastore's state; exit 1 on any error finding"
    )
    analyze.add_argument("--json", action="store_true", help="print JSON for machines")
    analyze.add_argument(
        "--offline", action="store_true", help="do not ask the running CA for its CRLs (their checks are skipped)"
    )
    analyze.add_argument("--list", action="store_true", help="list every check and what it looks for")
    run = functools.partial(cmd_analyze, client_factory=client_factory, config_factory=config_factory)
    analyze.set_defaults(func=run)
