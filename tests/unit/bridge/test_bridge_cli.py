"""``trustmesh-bridge map explain``: which rule maps a certificate and to what, or why none does."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.cli import main
from tests.support.enterprise_pki import EnterprisePki

RULES = """
[[rule]]
name = "payments"
spiffe_id = "spiffe://example.org/legacy/payments/{host}"
match = { dns = "*.payments.corp.example.com", trust_anchor = "corp" }

[[rule]]
name = "data"
spiffe_id = "/legacy/data/{host}"
keep_dns = "all"
match = { dns = "*.data.corp.example.com" }
"""


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(RULES)
    return path


def explain(capsys: pytest.CaptureFixture[str], cert: Path, rules: Path, *extra: str) -> tuple[int, list[str]]:
    code = main(["map", "explain", str(cert), "--rules", str(rules), "--trust-domain", "example.org", *extra])
    return code, capsys.readouterr().out.splitlines()


def test_explain_prints_the_matching_rule_the_id_and_what_the_svid_keeps(
    capsys: pytest.CaptureFixture[str], enterprise_pki: EnterprisePki, rules: Path
) -> None:
    code, lines = explain(capsys, enterprise_pki.db.cert, rules)
    assert code == 0
    assert lines[1:] == [
        "matches rule 'data'",
        "SPIFFE ID: spiffe://example.org/legacy/data/db01",
        "SVID keeps DNS SANs: db01.data.corp.example.com",
        "SVID keeps CN: db01.data.corp.example.com",
        "rule 'payments' does not match: it needs trust anchor 'corp'; "
        "the certificate's is not verified against any trust anchor",
    ]


def test_a_rule_naming_a_trust_anchor_matches_only_once_the_chain_is_verified_to_it(
    capsys: pytest.CaptureFixture[str], enterprise_pki: EnterprisePki, rules: Path
) -> None:
    unverified_code, unverified = explain(capsys, enterprise_pki.web.chain, rules)
    code, lines = explain(capsys, enterprise_pki.web.chain, rules, "--anchor", f"corp={enterprise_pki.root}")
    assert unverified_code == 1
    assert "rule 'payments' does not match: it needs trust anchor 'corp'; " in unverified[-2]
    assert code == 0
    assert lines[0] == "chain: verified to trust anchor 'corp'"
    assert "SPIFFE ID: spiffe://example.org/legacy/payments/web01" in lines


def test_explain_says_why_a_revoked_chain_does_not_verify(
    capsys: pytest.CaptureFixture[str], enterprise_pki: EnterprisePki, rules: Path
) -> None:
    anchor = f"corp={enterprise_pki.root}"
    code, lines = explain(
        capsys, enterprise_pki.revoked.chain, rules, "--anchor", anchor, "--crl", str(enterprise_pki.crl)
    )
    assert code == 1
    assert lines[0].startswith("chain: refused — revoked: CN=stolen01.payments.corp.example.com")
    assert "no rule matches" in lines


def test_a_rules_file_with_overlapping_rules_is_an_error(
    capsys: pytest.CaptureFixture[str], enterprise_pki: EnterprisePki, tmp_path: Path
) -> None:
    path = tmp_path / "overlap.toml"
    path.write_text(
        RULES + '\n[[rule]]\nname = "db01"\nspiffe_id = "/db"\nmatch = { subject_cn = "db01.data.corp.example.com" }\n'
    )
    assert (
        main(["map", "explain", str(enterprise_pki.db.cert), "--rules", str(path), "--trust-domain", "example.org"])
        == 1
    )
    assert "rule 'db01' overlaps rule 'payments': an identity can match both" in capsys.readouterr().err
