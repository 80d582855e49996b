"""The console's session: an OIDC token kept in a cookie, and CSRF tokens bound to it.

The officer pastes the same bearer JWT the admin API verifies (:mod:`ca.oidc`) into the login form; the
console keeps it in the cookie :data:`COOKIE` (``HttpOnly``, ``SameSite=Strict``, ``Path=/console``,
``Secure`` over HTTPS). :func:`session_token` is how :mod:`ca.admin_guard` reads it: on console paths
only, and only when no ``Authorization`` header came, so each console request is authenticated (expiry
included) exactly as a bearer header would be, and the JSON API never honours a cookie (no ambient
credential for it to be forged with). Logging out clears the cookie; the token itself stays valid until
it expires, as it would in any other client.

Every console POST carries a CSRF token (:class:`CsrfTokens`): an HMAC, under a key drawn when the app
starts, of the session it belongs to (the cookie's token, or for a caller without one, such as an mTLS
admin, the caller's name), compared in constant time. ``SameSite=Strict`` already keeps the cookie off
cross-site requests; the token is the second, independent lock.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from http.cookies import CookieError, SimpleCookie

from starlette.types import Scope

COOKIE = "trustmesh_console"
COOKIE_PATH = "/console"
# The login form's own double-submit token (no session exists yet to bind one to).
LOGIN_COOKIE = "trustmesh_console_login"
CSRF_FIELD = "csrf"
# A JWT from an IdP is a few KiB at most; a longer cookie or form field is refused, not verified.
MAX_TOKEN_CHARS = 16 * 1024


def is_console_path(path: str) -> bool:
    return path == COOKIE_PATH or path.startswith(COOKIE_PATH + "/")


def session_token(scope: Scope) -> str | None:
    """The token in the console cookie of a request for a console path; None for any other path, when
    the cookie is absent or empty, or the Cookie header cannot be read."""
    if not is_console_path(str(scope.get("path", ""))):
        return None
    for key, value in scope.get("headers", ()):
        if key != b"cookie":
            continue
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(value.decode("latin-1"))
        except CookieError:
            return None
        morsel = jar.get(COOKIE)
        if morsel is not None and morsel.value:
            return morsel.value[:MAX_TOKEN_CHARS]
    return None


def cookie_header(name: str, value: str, *, secure: bool, clear: bool = False) -> str:
    """A ``Set-Cookie`` value for one of the console's cookies (``clear``: expire it now)."""
    parts = [f"{name}={'' if clear else value}", f"Path={COOKIE_PATH}", "HttpOnly", "SameSite=Strict"]
    if clear:
        parts.append("Max-Age=0")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


class CsrfTokens:
    """Issues and checks the CSRF tokens of one app (module docstring). The key lives only in memory:
    a restart ends every form in flight, which a reload mends."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)

    def issue(self, session: str) -> str:
        return hmac.new(self._key, b"trustmesh-console-csrf\0" + session.encode(), hashlib.sha256).hexdigest()

    def check(self, session: str, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(self.issue(session), presented)
