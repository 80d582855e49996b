"""The error tree shared by every trustmesh package.

One root, :class:`TrustmeshError`, and a handful of kinds that an edge (gRPC, HTTP, CLI) maps to a
transport code through one table. Domain errors never carry transport codes themselves.
Messages name the input, the rule it broke and, where there is one, the fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spiffe_core.spiffe_id import TrustDomain


class TrustmeshError(Exception):
    """Root of every error trustmesh raises on purpose."""


class InvalidArgument(TrustmeshError):
    """The caller's input breaks a rule (a malformed ID, CSR, token, config or request)."""


class SpiffeIdError(InvalidArgument):
    """A SPIFFE ID or trust domain name breaks a rule of SPIFFE-ID.md."""


class X509SvidError(InvalidArgument):
    """A certificate or chain breaks a rule of X509-SVID.md or fails RFC 5280 path validation."""


class JwtSvidError(InvalidArgument):
    """A JWT-SVID breaks a rule of JWT-SVID.md or fails validation."""


class UnknownJwtKey(JwtSvidError):
    """A JWT-SVID passed every check that needs no key, but the bundle of its subject's trust domain
    holds no key ``key_id``: the key is unknown, removed, or the bundle is stale. A relying party may
    get a fresh bundle of that trust domain and validate once more."""

    def __init__(self, message: str, trust_domain: TrustDomain, key_id: str) -> None:
        super().__init__(message)
        self.trust_domain = trust_domain
        self.key_id = key_id


class BundleError(InvalidArgument):
    """A SPIFFE bundle (JWKS) is malformed or belongs to the wrong trust domain."""


class ConfigError(InvalidArgument):
    """A configuration value is missing, malformed or inconsistent with another one."""


class NotAuthenticated(TrustmeshError):
    """The caller proved no identity: no client certificate, or one that does not verify."""


class NotAuthorized(TrustmeshError):
    """The caller is known but not entitled to what it asked for (someone else's identity)."""


class NotFound(TrustmeshError):
    """The named thing does not exist."""


class AlreadyExists(TrustmeshError):
    """The thing to create exists already (a unique key was taken)."""


class FailedPrecondition(TrustmeshError):
    """The request is well formed but the system is not in a state that allows it."""


class NoActiveAuthority(FailedPrecondition):
    """No active authority can sign right now (not prepared yet, or all revoked)."""


class UpstreamUnavailable(TrustmeshError):
    """A dependency (database, Vault, upstream CA, peer bundle endpoint) did not answer."""


class ResourceExhausted(TrustmeshError):
    """The caller is over a rate limit; ``retry_after`` says in how many seconds the call would pass."""

    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# The one table edges use to turn an error kind into a transport status: (HTTP status, gRPC code name).
# gRPC codes are named, not imported, so this package stays free of grpc. Anything not listed is a bug
# or an outage: the edge logs the detail and answers 500/INTERNAL with a generic message.
_STATUS_TABLE: tuple[tuple[type[TrustmeshError], int, str], ...] = (
    (InvalidArgument, 400, "INVALID_ARGUMENT"),
    (NotAuthenticated, 401, "UNAUTHENTICATED"),
    (NotAuthorized, 403, "PERMISSION_DENIED"),
    (NotFound, 404, "NOT_FOUND"),
    (AlreadyExists, 409, "ALREADY_EXISTS"),
    (FailedPrecondition, 409, "FAILED_PRECONDITION"),
    (UpstreamUnavailable, 503, "UNAVAILABLE"),
    (ResourceExhausted, 429, "RESOURCE_EXHAUSTED"),
)


def transport_status(err: BaseException) -> tuple[int, str] | None:
    """(HTTP status, gRPC status code name) for a domain error whose message is safe to send, or None
    for anything else (which must be answered as an internal error without its detail)."""
    for kind, http_status, grpc_code in _STATUS_TABLE:
        if isinstance(err, kind):
            return http_status, grpc_code
    return None


def shown(value: object, limit: int = 32) -> str:
    """A value a caller sent, quoted for an error message or a log line: a string's first ``limit``
    characters, anything else's repr cut at ``limit``, marked with "…" when cut. Requests and tokens can
    be megabytes long; a refusal repeating one whole would not fit the gRPC status it travels in (16 KiB
    of headers) and does not belong in a log."""
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else f"{value[:limit]!r}…"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…"
