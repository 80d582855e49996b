"""SPIFFE IDs and trust domain names, parsed and validated exactly as SPIFFE-ID.md §2 says.

A SPIFFE ID is ``spiffe://<trust domain><path>``. The trust domain holds only lowercase letters,
digits, dots, dashes and underscores; the path is zero or more ``/segment`` parts, each segment made
of letters, digits, dots, dashes and underscores, never empty, ``.`` or ``..``. Nothing else is
allowed: no port, user info, query, fragment, percent-encoding or trailing slash. The spec asks
relying parties to accept IDs up to 2048 bytes and trust domains up to 255 bytes; we refuse longer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from spiffe_core.errors import SpiffeIdError

SCHEME_PREFIX: Final = "spiffe://"
MAX_SPIFFE_ID_BYTES: Final = 2048
MAX_TRUST_DOMAIN_BYTES: Final = 255

_TRUST_DOMAIN_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")
_PATH_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")


def _check_trust_domain_name(name: str, whole: str) -> None:
    if not name:
        raise SpiffeIdError(f"{whole!r} has an empty trust domain; write e.g. 'spiffe://example.org/...'")
    if len(name.encode()) > MAX_TRUST_DOMAIN_BYTES:
        raise SpiffeIdError(
            f"trust domain of {whole!r} is {len(name.encode())} bytes; at most {MAX_TRUST_DOMAIN_BYTES} allowed"
        )
    if "@" in name:
        raise SpiffeIdError(f"trust domain {name!r} has user info; SPIFFE IDs never carry one")
    for ch in name:
        if ch in _TRUST_DOMAIN_CHARS:
            continue
        if ch.isupper() and ch.lower() in _TRUST_DOMAIN_CHARS:
            raise SpiffeIdError(
                f"trust domain {name!r} has uppercase letters; trust domains are lowercase — use {name.lower()!r}"
            )
        if ch == ":":
            raise SpiffeIdError(f"trust domain {name!r} has a port; SPIFFE IDs never carry one")
        if ch == "%":
            raise SpiffeIdError(f"trust domain {name!r} is percent-encoded; SPIFFE IDs never are")
        raise SpiffeIdError(
            f"trust domain {name!r} has the character {ch!r}; only a-z, 0-9, '.', '-' and '_' are allowed"
        )


def _check_path(path: str, whole: str) -> None:
    if not path:
        return
    if not path.startswith("/"):
        raise SpiffeIdError(f"path {path!r} of {whole!r} must start with '/'")
    if path.endswith("/"):
        raise SpiffeIdError(f"{whole!r} ends with '/'; SPIFFE ID paths have no trailing slash")
    for segment in path[1:].split("/"):
        if not segment:
            raise SpiffeIdError(f"{whole!r} has an empty path segment ('//')")
        if segment in (".", ".."):
            raise SpiffeIdError(f"{whole!r} has a {segment!r} path segment; dot segments are not allowed")
        for ch in segment:
            if ch not in _PATH_CHARS:
                if ch == "%":
                    raise SpiffeIdError(f"{whole!r} is percent-encoded; SPIFFE ID paths never are")
                if ch in "?#":
                    raise SpiffeIdError(f"{whole!r} has a query or fragment; SPIFFE IDs have neither")
                raise SpiffeIdError(
                    f"path segment {segment!r} of {whole!r} has the character {ch!r}; "
                    "only letters, digits, '.', '-' and '_' are allowed"
                )


@dataclass(frozen=True, slots=True)
class TrustDomain:
    """A trust domain name such as ``example.org`` (no scheme)."""

    name: str

    def __post_init__(self) -> None:
        _check_trust_domain_name(self.name, self.name)

    @classmethod
    def parse(cls, text: str) -> TrustDomain:
        """Accept a bare name (``example.org``) or a path-less ID (``spiffe://example.org``)."""
        if not isinstance(text, str):
            raise SpiffeIdError(f"a trust domain must be a string, not {type(text).__name__}")
        if text.startswith(SCHEME_PREFIX):
            spiffe_id = SpiffeId.parse(text)
            if spiffe_id.path:
                raise SpiffeIdError(f"{text!r} has a path; a trust domain is written without one")
            return spiffe_id.trust_domain
        if "/" in text:
            raise SpiffeIdError(f"trust domain {text!r} has a '/'; write only the name, e.g. 'example.org'")
        return cls(text)

    @property
    def id(self) -> SpiffeId:
        """The trust domain's own ID, ``spiffe://<name>``, used in signing certificates."""
        return SpiffeId(self, "")

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A validated SPIFFE ID: a trust domain and a (possibly empty) path."""

    trust_domain: TrustDomain
    path: str

    def __post_init__(self) -> None:
        _check_path(self.path, SCHEME_PREFIX + self.trust_domain.name + self.path)
        if len(str(self).encode()) > MAX_SPIFFE_ID_BYTES:
            raise SpiffeIdError(f"SPIFFE ID is {len(str(self).encode())} bytes; at most {MAX_SPIFFE_ID_BYTES} allowed")

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse ``spiffe://td/path``; raise :class:`SpiffeIdError` naming the broken rule."""
        if not isinstance(text, str):
            raise SpiffeIdError(f"a SPIFFE ID must be a string, not {type(text).__name__}")
        if not text:
            raise SpiffeIdError("SPIFFE ID is empty")
        if len(text.encode()) > MAX_SPIFFE_ID_BYTES:
            raise SpiffeIdError(f"SPIFFE ID is {len(text.encode())} bytes; at most {MAX_SPIFFE_ID_BYTES} allowed")
        if not text.startswith(SCHEME_PREFIX):
            if text.lower().startswith(SCHEME_PREFIX):
                raise SpiffeIdError(f"{text!r} has an uppercase scheme; write 'spiffe://'")
            raise SpiffeIdError(f"{text!r} does not start with 'spiffe://'")
        rest = text[len(SCHEME_PREFIX) :]
        for mark, what in (("?", "a query"), ("#", "a fragment")):
            if mark in rest:
                raise SpiffeIdError(f"{text!r} has {what}; SPIFFE IDs have neither query nor fragment")
        slash = rest.find("/")
        name, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
        _check_trust_domain_name(name, text)
        return cls(TrustDomain(name), path)

    @classmethod
    def from_segments(cls, trust_domain: TrustDomain, *segments: str) -> SpiffeId:
        """Build ``spiffe://td/seg1/seg2``; each segment is validated, none may hold a '/'."""
        for segment in segments:
            if not segment:
                raise SpiffeIdError(
                    f"an empty path segment was passed for {trust_domain.id}; every segment needs a name"
                )
            if "/" in segment:
                raise SpiffeIdError(f"path segment {segment!r} holds a '/'; pass each segment separately")
        return cls(trust_domain, "".join("/" + s for s in segments))

    @property
    def is_trust_domain_id(self) -> bool:
        """True for ``spiffe://td`` (no path): the ID of signing certificates, never of a workload."""
        return not self.path

    def is_member_of(self, trust_domain: TrustDomain) -> bool:
        return self.trust_domain == trust_domain

    def __str__(self) -> str:
        return SCHEME_PREFIX + self.trust_domain.name + self.path
