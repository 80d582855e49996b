"""Which mapping rule a certificate on disk matches, checked offline against a GitOps rules file.

Shared by ``trustmesh-bridge map explain`` and ``trustmesh-bridge enroll`` (which refuses to enroll an
x509pop host whose certificate maps to no SPIFFE ID). With trust anchors (and CRLs), the chain is
verified as the CA verifies it, so rules that name a trust anchor can match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from bridge.legacy_chain import ChainLimits, load_legacy_trust, read_pki_file
from bridge.mapping import Explanation, LegacyIdentity, check_rule_set, explain, parse_rules_document
from spiffe_core.errors import InvalidArgument, NotAuthorized
from spiffe_core.spiffe_id import TrustDomain


def parse_anchor(text: str) -> tuple[str, Path]:
    """``NAME=FILE`` of an ``--anchor`` option. Raises InvalidArgument."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise InvalidArgument(f"--anchor {text!r}: give NAME=FILE, e.g. corp=/etc/pki/corp-root.pem")
    return name, Path(path)


@dataclass(frozen=True, slots=True)
class CertificateReport:
    explanation: Explanation
    verified_to: str | None = None  # the trust anchor the chain was verified to
    chain_refusal: str | None = None  # why the chain was refused (expired, revoked, untrusted CA, ...)

    def lines(self) -> list[str]:
        chain = []
        if self.verified_to is not None:
            chain = [f"chain: verified to trust anchor {self.verified_to!r}"]
        elif self.chain_refusal is not None:
            chain = [f"chain: refused — {self.chain_refusal}"]
        return chain + self.explanation.lines()


def explain_certificate(
    chain: Sequence[x509.Certificate],
    rules_file: Path,
    trust_domain: TrustDomain,
    anchors: Sequence[str] = (),
    crls: Sequence[Path] = (),
) -> CertificateReport:
    """Explain how the rules in ``rules_file`` map ``chain`` (leaf first). ``anchors`` are ``NAME=FILE``
    texts; a chain that fails verification is reported, and then matches no rule naming an anchor.
    Raises InvalidArgument for an unreadable or invalid rules, anchor or CRL file."""
    rules = parse_rules_document(read_pki_file(rules_file, "rules file").decode(), str(rules_file))
    check_rule_set(rules, trust_domain)
    anchor: str | None = None
    refusal: str | None = None
    if anchors:
        trust = load_legacy_trust(dict(parse_anchor(text) for text in anchors), crls, ChainLimits())
        try:
            anchor = trust.verify(chain, datetime.now(UTC)).anchor
        except NotAuthorized as err:
            refusal = str(err)
    explanation = explain(LegacyIdentity.from_certificate(chain[0], anchor), rules, trust_domain)
    return CertificateReport(explanation, anchor, refusal)
