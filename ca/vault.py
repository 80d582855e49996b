"""HashiCorp Vault through hvac, shared by the ``vault-pki`` upstream and the ``vault-transit`` key
manager (DESIGN §3; docs/vault.md): authentication, TLS, timeouts, and one line for every failure.

Authentication is a token read from a file (re-read when Vault refuses it, so a Vault Agent sink that
renews the file is followed) or from an environment variable, or an AppRole login (repeated once when
Vault refuses the token, which is how an expired AppRole token shows). The token is never logged and
never put in a message.

What Vault answers, and what the caller gets (each message starts with who asked, e.g.
``vault-pki upstream: Vault at https://vault:8200 …``):

==============================================  ===============================================
503 ``{"errors":["Vault is sealed"]}``           UpstreamUnavailable "… is sealed; unseal it …"
no connection, timeout                           UpstreamUnavailable "cannot reach Vault at …"
403 permission denied (after one re-login)       NotAuthorized naming the path and the capability
404 ``{"errors":[]}``                            NotFound (the object is not there)
404 with errors (no handler for the route)       ConfigError (nothing is mounted there)
400                                              FailedPrecondition with Vault's reason
TLS verification failure                         ConfigError naming ``vault.ca_file``
anything else                                    UpstreamUnavailable with the status
==============================================  ===============================================

UpstreamUnavailable is what the rotation task backs off on and retries; the others need a person.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import hvac
import hvac.exceptions
import requests

from ca.files import read_private_file
from spiffe_core.errors import (
    ConfigError,
    FailedPrecondition,
    NotAuthenticated,
    NotAuthorized,
    NotFound,
    TrustmeshError,
    UpstreamUnavailable,
)

if TYPE_CHECKING:
    from ca.config import VaultConfig

T = TypeVar("T")

# Vault's reasons are echoed in messages; a misbehaving server must not fill a log line with pages.
MAX_REASON_CHARS = 200
_ERRNO_REASON = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")
_TLS_REASON = re.compile(r"certificate verify failed: ([^(']+?)\s*[('\"]")


class VaultClient:
    """One authenticated hvac client for one user of Vault (``user`` names it in every message).

    ``call`` runs one hvac operation and turns its failures into the errors of the module docstring.
    Credentials are read when the client is built (ConfigError if a file is missing or unsafe); the
    AppRole login happens on the first call. Safe to share between threads."""

    def __init__(
        self, config: VaultConfig, user: str, mount_key: str, environ: Mapping[str, str] | None = None
    ) -> None:
        if not config.address:
            raise ConfigError(f"{user} needs Vault, but vault.address is not set; set it (docs/vault.md)")
        self._config = config
        self._user = user
        self._mount_key = mount_key
        self._environ = os.environ if environ is None else environ
        self._lock = threading.Lock()
        self._role_id = self._secret_id = ""
        token = ""
        if config.auth == "approle":
            assert config.role_id_file is not None  # the config checks both
            assert config.secret_id_file is not None
            self._role_id = _read_credential(config.role_id_file, "vault.role_id_file", private=False)
            self._secret_id = _read_credential(config.secret_id_file, "vault.secret_id_file", private=True)
        else:
            token = self._read_token()
        self._hvac = hvac.Client(
            url=config.address,
            token=token,  # "" sends none (hvac would otherwise take VAULT_TOKEN or ~/.vault-token)
            verify=str(config.ca_file) if config.ca_file is not None else True,
            timeout=config.timeout.total_seconds(),
            namespace=config.namespace or None,
        )
        self._logged_in = config.auth == "token"

    @property
    def address(self) -> str:
        return self._config.address

    def call(self, operation: Callable[[Any], T], *, path: str, capability: str) -> T:
        """Run ``operation(hvac_client)``, which asks Vault for ``capability`` on ``path`` (both named
        when Vault refuses). A refusal is retried once with fresh credentials (AppRole login again, or
        a token file that changed); a second refusal raises NotAuthorized."""
        with self._lock:
            if not self._logged_in:
                self._login()
        try:
            return self._send(operation, path, capability)
        except hvac.exceptions.Forbidden:
            if not self._renew_credentials():
                raise self._denied(path, capability) from None
        try:
            return self._send(operation, path, capability)
        except hvac.exceptions.Forbidden:
            raise self._denied(path, capability) from None

    def data(self, response: object, path: str) -> Mapping[str, Any]:
        """The ``data`` object of a JSON answer from ``path``; FailedPrecondition if there is none."""
        data = response.get("data") if isinstance(response, dict) else None
        if not isinstance(data, dict):
            raise FailedPrecondition(f"{self._where()} answered {path} without a data object; is that a Vault server?")
        return data

    def field(self, data: Mapping[str, Any], name: str, kind: type[T], path: str) -> T:
        """``data[name]`` if it is a ``kind``; FailedPrecondition naming the field otherwise."""
        value = data.get(name)
        if not isinstance(value, kind):
            raise FailedPrecondition(
                f"{self._where()} answered {path} without a {kind.__name__} {name!r}; is that a Vault server?"
            )
        return value

    def _where(self) -> str:
        return f"{self._user}: Vault at {self._config.address}"

    def _read_token(self) -> str:
        config = self._config
        if config.token_env:
            token = self._environ.get(config.token_env, "").strip()
            if not token:
                raise ConfigError(
                    f"environment variable {config.token_env} (named by vault.token_env) is not set or empty; "
                    "export the Vault token in it"
                )
            return token
        assert config.token_file is not None  # the config requires one of the two for auth "token"
        return _read_credential(config.token_file, "vault.token_file", private=True)

    def _login(self) -> None:
        """AppRole login; the token it returns is used from then on (hvac keeps it). Caller holds the lock."""
        mount = self._config.approle_mount
        path = f"auth/{mount}/login"
        try:
            self._send(
                lambda client: client.auth.approle.login(
                    role_id=self._role_id, secret_id=self._secret_id, mount_point=mount
                ),
                path,
                "update",
            )
        except (hvac.exceptions.Forbidden, FailedPrecondition) as err:
            raise NotAuthenticated(
                f"{self._where()} refused the AppRole login at {path}; check vault.role_id_file and "
                "vault.secret_id_file (a secret ID expires and may be limited in uses) and vault.approle_mount"
            ) from err
        self._logged_in = True

    def _renew_credentials(self) -> bool:
        """Fresh credentials after a refusal; False when there are none to get (the refusal stands)."""
        with self._lock:
            if self._config.auth == "approle":
                self._login()
                return True
            if not self._config.token_file:
                return False
            token = self._read_token()
            if token == self._hvac.token:
                return False
            self._hvac.token = token
            return True

    def _denied(self, path: str, capability: str) -> NotAuthorized:
        credential = {
            "approle": "the AppRole's token",
            "token": f"the token in {self._config.token_file or '$' + self._config.token_env}",
        }[self._config.auth]
        return NotAuthorized(
            f"{self._where()} denied {capability!r} on {path}: {credential} lacks it or has expired; "
            f'grant it in the policy: path "{path}" {{ capabilities = ["{capability}"] }} (docs/vault.md)'
        )

    def _send(self, operation: Callable[[Any], T], path: str, capability: str) -> T:
        """One request; every failure but a 403 (which :meth:`call` handles) becomes a TrustmeshError."""
        try:
            return operation(self._hvac)
        except hvac.exceptions.Forbidden:
            raise
        except hvac.exceptions.VaultError as err:
            raise self._vault_failure(err, path, capability) from err
        except requests.exceptions.SSLError as err:
            reason = _match(_TLS_REASON, err) or "the TLS handshake failed"
            raise ConfigError(
                f"{self._user}: TLS to Vault at {self.address} failed ({reason}); set vault.ca_file to the CA "
                "certificate that issued Vault's certificate"
            ) from err
        except requests.exceptions.Timeout as err:
            raise UpstreamUnavailable(
                f"{self._where()} did not answer within {self._config.timeout.total_seconds():g}s; check that it "
                "is up, or raise vault.timeout"
            ) from err
        except requests.exceptions.RequestException as err:
            reason = _match(_ERRNO_REASON, err) or type(err).__name__
            raise UpstreamUnavailable(
                f"{self._user}: cannot reach Vault at {self.address} ({reason}); check vault.address and that "
                "Vault is running"
            ) from err

    def _vault_failure(self, err: hvac.exceptions.VaultError, path: str, capability: str) -> TrustmeshError:
        reasons = [" ".join(str(e).split()) for e in (err.errors or []) if str(e).strip()]
        reason = "; ".join(reasons)[:MAX_REASON_CHARS]
        where = self._where()
        if isinstance(err, hvac.exceptions.VaultDown):
            if "sealed" in reason:
                return UpstreamUnavailable(f"{where} is sealed; unseal it ('vault operator unseal')")
            return UpstreamUnavailable(f"{where} is unavailable ({reason or '503'}); retry when it is up")
        if isinstance(err, hvac.exceptions.VaultNotInitialized):
            return UpstreamUnavailable(f"{where} is not initialized; initialize and unseal it")
        if isinstance(err, hvac.exceptions.InvalidPath):
            if not reasons:
                return NotFound(f"{where} has nothing at {path}")
            return ConfigError(
                f"{where} has no {path} ({reason}); check that the secrets engine is mounted where "
                f"{self._mount_key} says"
            )
        if isinstance(err, hvac.exceptions.InvalidRequest):
            return FailedPrecondition(f"{where} refused {capability!r} on {path}: {reason or 'bad request'}")
        if isinstance(err, hvac.exceptions.Unauthorized):
            return NotAuthenticated(f"{where} did not accept our credentials on {path} ({reason or '401'})")
        status = type(err).__name__
        return UpstreamUnavailable(f"{where} failed on {path} ({status}: {reason or 'no detail'}); retry later")


def _read_credential(path: Path, key: str, *, private: bool) -> str:
    try:
        data = read_private_file(path, what=key, chmod="600") if private else path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{key} {path} does not exist; write the credential there or fix {key}") from None
    except OSError as err:
        raise ConfigError(f"cannot read {key} {path}: {err.strerror}") from err
    text = data.decode(errors="replace").strip()
    if not text:
        raise ConfigError(f"{key} {path} is empty; write the credential there")
    return text


def _match(pattern: re.Pattern[str], err: BaseException) -> str:
    found = pattern.search(str(err))
    return found[1].strip() if found else ""
