"""Identity mapping rules (DESIGN §5): which SPIFFE ID a legacy identity — an enterprise-PKI
certificate's trust anchor, issuer, subject CN and DNS SANs, or a bare DNS name — maps to.

A rule is declarative and pure data::

    name = "payments"
    match = { dns = "*.payments.corp.example.com", trust_anchor = "corp" }
    spiffe_id = "spiffe://example.org/legacy/payments/{host}"
    keep_dns = "matched"   # the DNS SANs the SVID keeps: "matched", "all" or "none"
    keep_cn = true         # whether the SVID keeps the certificate's subject CN

Matching: every criterion a rule names must hold (``dns``: some DNS SAN matches the pattern). Patterns
are a name or ``*.`` + a name, the wildcard standing for exactly one leftmost label, as in TLS.

The template's placeholders are ``{host}`` (the first label of the DNS name the rule matched),
``{dns}`` (that whole name), ``{dns_label[N]}`` (its N-th label, from 0) and ``{cn}`` (the subject
CN). Nothing else is evaluated: a template is text with holes, never a format string.

No rule set may leave doubt about an identity's ID, so a rule is refused when it is added if

* it overlaps another: some name or certificate could match both (e.g. ``*.corp.example.com`` and
  ``web.corp.example.com`` with no other criterion telling them apart);
* it is ambiguous on its own: its template uses a DNS placeholder but it names no ``dns`` pattern,
  so a certificate with several DNS SANs would have several IDs.

A certificate whose SANs match two rules with disjoint patterns (``a.x…`` and ``b.y…``) can still
match both; it is refused when it is mapped, with both rules named (:func:`explain` says so).

Pure: no I/O. The CA stores rules (``ca.mappings``); the x509pop attestor and the agentless exchange
map through :func:`map_identity`; ``trustmesh-bridge map explain`` prints :func:`explain`.
"""

from __future__ import annotations

import enum
import json
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from spiffe_core.errors import InvalidArgument, NotAuthorized
from spiffe_core.spiffe_id import SpiffeId, TrustDomain

# Everything a caller can make the CA hold is bounded: rules, and the text of each.
MAX_RULES = 1000
MAX_FIELD_LENGTH = 255
# Rule names and trust anchor names ([bridge.trust_anchors]).
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_DNS_LABEL = re.compile(r"dns_label\[(\d)\]")
DNS_PLACEHOLDERS = frozenset({"host", "dns"})
# A mapped ID must not fall into the namespaces the CA gives its own meaning to (agents, operators).
_RESERVED_PREFIX = "/trustmesh"


class KeepDns(enum.StrEnum):
    """Which DNS SANs of the legacy certificate the SVID keeps."""

    MATCHED = "matched"  # those the rule's dns pattern matched (all, when it names none)
    ALL = "all"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class LegacyIdentity:
    """What a legacy credential says about its holder. ``trust_anchor`` is the name of the configured
    anchor its chain was verified to; None when nobody verified it (``map explain`` on a bare file)."""

    dns_names: tuple[str, ...] = ()
    common_name: str | None = None
    issuer: str | None = None
    trust_anchor: str | None = None

    @classmethod
    def from_certificate(cls, cert: x509.Certificate, trust_anchor: str | None = None) -> LegacyIdentity:
        """The DNS SANs (lowercased), the last subject CN and the issuer DN (RFC 4514) of ``cert``."""
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            dns_names = tuple(name.lower() for name in san.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            dns_names = ()
        common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        common_name = str(common_names[-1].value) if common_names else None
        return cls(dns_names, common_name, cert.issuer.rfc4514_string(), trust_anchor)

    def describe(self) -> str:
        parts = [f"DNS SANs {', '.join(self.dns_names) or '(none)'}", f"CN {self.common_name or '(none)'}"]
        if self.issuer is not None:
            parts.append(f"issuer {self.issuer}")
        parts.append(f"trust anchor {self.trust_anchor or '(not verified)'}")
        return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class Match:
    """The criteria of a rule; each one given must hold. At least one must be given."""

    dns: str | None = None
    subject_cn: str | None = None
    issuer: str | None = None
    trust_anchor: str | None = None

    def criteria(self) -> dict[str, str]:
        values = {
            "dns": self.dns,
            "subject_cn": self.subject_cn,
            "issuer": self.issuer,
            "trust_anchor": self.trust_anchor,
        }
        return {key: value for key, value in values.items() if value is not None}


@dataclass(frozen=True, slots=True)
class MappingRule:
    name: str
    match: Match
    spiffe_id: str  # the template
    keep_dns: KeepDns = KeepDns.MATCHED
    keep_cn: bool = True

    def to_dict(self) -> dict[str, Any]:
        """The rule as a file or the datastore holds it (see :func:`rule_from_dict`)."""
        return {
            "name": self.name,
            "match": self.match.criteria(),
            "spiffe_id": self.spiffe_id,
            "keep_dns": self.keep_dns.value,
            "keep_cn": self.keep_cn,
        }


@dataclass(frozen=True, slots=True)
class MappedIdentity:
    """The result of mapping: the rule, the SPIFFE ID, and the DNS SANs and CN the SVID keeps."""

    rule: str
    spiffe_id: SpiffeId
    dns_names: tuple[str, ...]
    common_name: str | None


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why an identity maps as it does: the result, or per rule why it does not match."""

    identity: LegacyIdentity
    mapped: MappedIdentity | None
    refusal: str | None  # why no ID is given although rules matched (ambiguity, a bad rendering)
    not_matching: tuple[tuple[str, str], ...] = field(default=())

    def lines(self) -> list[str]:
        out = [f"identity: {self.identity.describe()}"]
        if self.mapped is not None:
            out += [
                f"matches rule {self.mapped.rule!r}",
                f"SPIFFE ID: {self.mapped.spiffe_id}",
                f"SVID keeps DNS SANs: {', '.join(self.mapped.dns_names) or '(none)'}",
                f"SVID keeps CN: {self.mapped.common_name or '(none)'}",
            ]
        elif self.refusal is not None:
            out.append(f"refused: {self.refusal}")
        else:
            out.append("no rule matches")
        out += [f"rule {name!r} does not match: {why}" for name, why in self.not_matching]
        return out


# --- parsing and validation -------------------------------------------------------------------------


def _text(rule: str, key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f"mapping rule {rule!r}: {key} must be a non-empty string")
    if len(value) > MAX_FIELD_LENGTH:
        raise InvalidArgument(f"mapping rule {rule!r}: {key} is longer than {MAX_FIELD_LENGTH} characters")
    return value.strip()


def rule_from_dict(document: Mapping[str, Any]) -> MappingRule:
    """A rule from its dict form (a TOML table, a JSON object), checked for shape only; unknown keys
    are refused, so a typo never silently widens a rule. :func:`check_rule` checks the meaning."""
    if not isinstance(document, Mapping):
        raise InvalidArgument("a mapping rule must be a table/object with name, match and spiffe_id")
    name = document.get("name")
    label = name if isinstance(name, str) else "?"
    unknown = set(document) - {"name", "match", "spiffe_id", "keep_dns", "keep_cn"}
    if unknown:
        raise InvalidArgument(
            f"mapping rule {label!r}: unknown key(s) {', '.join(sorted(unknown))}; "
            "a rule has name, match, spiffe_id, keep_dns, keep_cn"
        )
    match = document.get("match")
    if not isinstance(match, Mapping):
        raise InvalidArgument(f"mapping rule {label!r}: match must be a table of dns, subject_cn, issuer, trust_anchor")
    unknown = set(match) - {"dns", "subject_cn", "issuer", "trust_anchor"}
    if unknown:
        raise InvalidArgument(
            f"mapping rule {label!r}: unknown match key(s) {', '.join(sorted(unknown))}; "
            "match on dns, subject_cn, issuer, trust_anchor"
        )
    keep_dns = document.get("keep_dns", KeepDns.MATCHED.value)
    if keep_dns not in {k.value for k in KeepDns}:
        raise InvalidArgument(f"mapping rule {label!r}: keep_dns must be one of matched, all, none")
    keep_cn = document.get("keep_cn", True)
    if not isinstance(keep_cn, bool):
        raise InvalidArgument(f"mapping rule {label!r}: keep_cn must be true or false")
    return MappingRule(
        name=_text(label, "name", name),
        match=Match(**{key: _text(label, f"match.{key}", value) for key, value in match.items()}),
        spiffe_id=_text(label, "spiffe_id", document.get("spiffe_id")),
        keep_dns=KeepDns(keep_dns),
        keep_cn=keep_cn,
    )


def _check_pattern(rule: str, key: str, pattern: str, *, dns: bool) -> None:
    labels = pattern.split(".")
    if labels[0] == "*":
        labels = labels[1:]
        if not labels:
            raise InvalidArgument(f"mapping rule {rule!r}: match.{key} '*' matches everything; name a domain")
    if dns and not all(_LABEL.fullmatch(label) for label in labels):
        raise InvalidArgument(
            f"mapping rule {rule!r}: match.dns {pattern!r} is not a lowercase DNS name, optionally with a "
            "leading '*.' (e.g. '*.payments.corp.example.com')"
        )
    if "*" in ".".join(labels):
        raise InvalidArgument(
            f"mapping rule {rule!r}: match.{key} {pattern!r} has a '*' other than a whole leftmost label"
        )


def _placeholders(template: str) -> list[str]:
    return _PLACEHOLDER.findall(template)


def _uses_dns(template: str) -> bool:
    return any(p in DNS_PLACEHOLDERS or _DNS_LABEL.fullmatch(p) for p in _placeholders(template))


def check_rule(rule: MappingRule, trust_domain: TrustDomain) -> None:
    """Refuse (InvalidArgument, with the reason) a rule that cannot be used as it is."""
    if not NAME_PATTERN.fullmatch(rule.name):
        raise InvalidArgument(
            f"mapping rule name {rule.name!r} must be 1-64 lowercase letters, digits, '.', '-', '_' "
            "(starting with a letter or digit)"
        )
    if not rule.match.criteria():
        raise InvalidArgument(
            f"mapping rule {rule.name!r} matches nothing in particular; give at least one of "
            "match.dns, match.subject_cn, match.issuer, match.trust_anchor"
        )
    if rule.match.dns is not None:
        _check_pattern(rule.name, "dns", rule.match.dns, dns=True)
    if rule.match.subject_cn is not None:
        _check_pattern(rule.name, "subject_cn", rule.match.subject_cn, dns=False)
    for placeholder in _placeholders(rule.spiffe_id):
        if placeholder not in DNS_PLACEHOLDERS | {"cn"} and not _DNS_LABEL.fullmatch(placeholder):
            raise InvalidArgument(
                f"mapping rule {rule.name!r}: unknown placeholder {{{placeholder}}} in spiffe_id; "
                "use {host}, {dns}, {dns_label[N]} or {cn}"
            )
    if _uses_dns(rule.spiffe_id) and rule.match.dns is None:
        raise InvalidArgument(
            f"mapping rule {rule.name!r} is ambiguous: its spiffe_id uses a DNS placeholder but it names no "
            "match.dns, so a certificate with several DNS SANs would map to several IDs; add match.dns"
        )
    sample = _PLACEHOLDER.sub("x", rule.spiffe_id)
    if "{" in sample or "}" in sample:
        raise InvalidArgument(f"mapping rule {rule.name!r}: spiffe_id has an unbalanced '{{' or '}}'")
    spiffe_id = _template_id(rule.name, sample, trust_domain)
    if spiffe_id.path in ("", _RESERVED_PREFIX) or spiffe_id.path.startswith(_RESERVED_PREFIX + "/"):
        raise InvalidArgument(
            f"mapping rule {rule.name!r}: spiffe_id {rule.spiffe_id!r} must have a path outside "
            f"{_RESERVED_PREFIX}/ (the CA's own namespace), e.g. spiffe://{trust_domain.name}/legacy/{{host}}"
        )


def _template_id(rule: str, rendered: str, trust_domain: TrustDomain) -> SpiffeId:
    """``rendered`` as an ID of ``trust_domain``; a template may also be a bare path (``/legacy/{host}``)."""
    text = f"spiffe://{trust_domain.name}{rendered}" if rendered.startswith("/") else rendered
    try:
        spiffe_id = SpiffeId.parse(text)
    except InvalidArgument as err:
        raise InvalidArgument(f"mapping rule {rule!r}: spiffe_id does not render to a SPIFFE ID: {err}") from err
    if not spiffe_id.is_member_of(trust_domain):
        raise InvalidArgument(
            f"mapping rule {rule!r}: spiffe_id {text!r} is not in trust domain {trust_domain.name}; "
            "rules map into this CA's trust domain"
        )
    return spiffe_id


def _patterns_intersect(a: str, b: str) -> bool:
    """Whether some name matches both patterns (one-label wildcards: same label count, each label equal
    or a wildcard)."""
    left, right = a.lower().split("."), b.lower().split(".")
    return len(left) == len(right) and all(x == y or "*" in (x, y) for x, y in zip(left, right, strict=True))


def overlap(a: MappingRule, b: MappingRule) -> str | None:
    """Why some identity could match both rules, or None when none can."""
    shared: list[str] = []
    for key in ("dns", "subject_cn", "issuer", "trust_anchor"):
        mine, theirs = getattr(a.match, key), getattr(b.match, key)
        if mine is None or theirs is None:
            continue
        together = _patterns_intersect(mine, theirs) if key in {"dns", "subject_cn"} else mine == theirs
        if not together:
            return None
        shared.append(f"{key} {mine!r}/{theirs!r}")
    unconstrained = list(a.match.criteria().keys() ^ b.match.criteria().keys())
    how = ", ".join(shared) if shared else "no criterion they both name"
    if unconstrained:
        how += f"; {', '.join(sorted(unconstrained))} named by only one of them"
    return f"mapping rule {a.name!r} overlaps rule {b.name!r}: an identity can match both ({how})"


def check_rule_set(rules: Sequence[MappingRule], trust_domain: TrustDomain) -> None:
    """Refuse a set of rules as a whole (InvalidArgument naming the first problem): too many, a bad
    rule, a name used twice, two rules that overlap."""
    if len(rules) > MAX_RULES:
        raise InvalidArgument(f"{len(rules)} mapping rules are more than the {MAX_RULES} a CA holds")
    seen: dict[str, MappingRule] = {}
    for rule in rules:
        check_rule(rule, trust_domain)
        if rule.name in seen:
            raise InvalidArgument(f"mapping rule name {rule.name!r} is used twice; names are unique")
        for other in seen.values():
            why = overlap(rule, other)
            if why is not None:
                raise InvalidArgument(why)
        seen[rule.name] = rule


# --- matching ----------------------------------------------------------------------------------------


def _matches(name: str, pattern: str) -> bool:
    labels, wanted = name.lower().split("."), pattern.lower().split(".")
    return len(labels) == len(wanted) and all(w in ("*", n) for n, w in zip(labels, wanted, strict=True))


def _why_not(rule: MappingRule, identity: LegacyIdentity) -> str | None:
    """Why ``rule`` does not match ``identity``; None when it does."""
    m = rule.match
    if m.trust_anchor is not None and m.trust_anchor != identity.trust_anchor:
        seen = identity.trust_anchor or "not verified against any trust anchor"
        return f"it needs trust anchor {m.trust_anchor!r}; the certificate's is {seen}"
    if m.issuer is not None and m.issuer != identity.issuer:
        return f"it needs issuer {m.issuer!r}; the certificate's is {identity.issuer!r}"
    if m.subject_cn is not None and (identity.common_name is None or not _matches(identity.common_name, m.subject_cn)):
        return f"subject CN {identity.common_name!r} does not match {m.subject_cn!r}"
    if m.dns is not None and not any(_matches(name, m.dns) for name in identity.dns_names):
        return f"no DNS SAN matches {m.dns!r} (SANs: {', '.join(identity.dns_names) or 'none'})"
    return None


def _render(rule: MappingRule, dns_name: str | None, common_name: str | None, trust_domain: TrustDomain) -> SpiffeId:
    def value(found: re.Match[str]) -> str:
        placeholder = found.group(1)
        if placeholder == "cn":
            if common_name is None:
                raise InvalidArgument(f"mapping rule {rule.name!r} uses {{cn}} but the certificate has no CN")
            return common_name
        assert dns_name is not None  # check_rule: DNS placeholders need match.dns, which matched a name
        labels = dns_name.split(".")
        if placeholder == "dns":
            return dns_name
        index = 0 if placeholder == "host" else int(placeholder[len("dns_label[") : -1])
        if index >= len(labels):
            raise InvalidArgument(f"mapping rule {rule.name!r}: {dns_name!r} has no {placeholder}")
        return labels[index]

    return _template_id(rule.name, _PLACEHOLDER.sub(value, rule.spiffe_id), trust_domain)


def _apply(rule: MappingRule, identity: LegacyIdentity, trust_domain: TrustDomain) -> MappedIdentity:
    matched = tuple(n for n in identity.dns_names if rule.match.dns is None or _matches(n, rule.match.dns))
    if _uses_dns(rule.spiffe_id):
        ids = {n: _render(rule, n, identity.common_name, trust_domain) for n in matched}
        if len(set(ids.values())) > 1:
            listed = ", ".join(f"{n} -> {i}" for n, i in ids.items())
            raise InvalidArgument(
                f"mapping rule {rule.name!r} gives this certificate several IDs ({listed}); "
                "narrow the rule's match.dns so one DNS SAN matches"
            )
        spiffe_id = next(iter(ids.values()))
    else:
        spiffe_id = _render(rule, None, identity.common_name, trust_domain)
    keep = {KeepDns.MATCHED: matched, KeepDns.ALL: identity.dns_names, KeepDns.NONE: ()}[rule.keep_dns]
    return MappedIdentity(rule.name, spiffe_id, keep, identity.common_name if rule.keep_cn else None)


def explain(identity: LegacyIdentity, rules: Iterable[MappingRule], trust_domain: TrustDomain) -> Explanation:
    """Which rule maps ``identity`` and to what, or why none does (every rule's reason)."""
    matching: list[MappingRule] = []
    not_matching: list[tuple[str, str]] = []
    for rule in rules:
        why = _why_not(rule, identity)
        if why is None:
            matching.append(rule)
        else:
            not_matching.append((rule.name, why))
    refusal: str | None = None
    mapped: MappedIdentity | None = None
    if len(matching) > 1:
        names = " and ".join(repr(rule.name) for rule in matching)
        refusal = f"the identity matches rules {names}; an identity must match one rule (narrow one of them)"
    elif matching:
        try:
            mapped = _apply(matching[0], identity, trust_domain)
        except InvalidArgument as err:
            refusal = str(err)
    return Explanation(identity, mapped, refusal, tuple(not_matching))


def map_identity(identity: LegacyIdentity, rules: Iterable[MappingRule], trust_domain: TrustDomain) -> MappedIdentity:
    """The mapped identity, or NotAuthorized saying why there is none (the caller holds a credential
    the CA trusts, so the reason helps its operator and tells an attacker nothing new)."""
    explanation = explain(identity, rules, trust_domain)
    if explanation.mapped is not None:
        return explanation.mapped
    if explanation.refusal is not None:
        raise NotAuthorized(f"no SPIFFE ID for {identity.describe()}: {explanation.refusal}")
    raise NotAuthorized(
        f"no mapping rule matches {identity.describe()}; an operator adds one with `trustmesh-ca mapping add`"
    )


def parse_rules_document(text: str, source: str) -> list[MappingRule]:
    """The rules of a GitOps file: JSON (a list of rule objects, or ``{"rules": [...]}``) or TOML
    (``[[rule]]`` tables). Shape only; the caller checks the set (:func:`check_rule_set`)."""
    document: Any
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        try:
            document = tomllib.loads(text).get("rule", [])
        except tomllib.TOMLDecodeError as err:
            raise InvalidArgument(f"{source}: neither JSON nor TOML: {err}") from err
    if isinstance(document, Mapping):
        document = document.get("rules")
    if not isinstance(document, list):
        raise InvalidArgument(f"{source}: expected [[rule]] tables (TOML) or a JSON list of rules")
    return [rule_from_dict(item) for item in document]
