"""The CLI's client for the admin API: the local Unix socket, or a remote CA over HTTPS.

Errors come back as one TrustmeshError each: the server's own message for a refused request, or a
sentence saying the CA is not reachable and how to fix that.

Over HTTPS the client authenticates the server **before** it sends a single byte of the request (and
so before the bearer token leaves): by default the server must present an X509-SVID for the CA's own
SPIFFE ID, ``spiffe://<td>/trustmesh/server``, chaining to the trust bundle given — a host name proves
nothing there, since any workload of the trust domain may hold an SVID with the CA's DNS name. httpx
does not let a caller look at the server's chain between the handshake and the request, so the
connection pool gets a network backend whose TLS step checks the chain and closes the connection on a
mismatch (:class:`_VerifiedTlsBackend`). A CA that serves a configured web certificate instead is
checked the ordinary way: the chain against the bundle (or the system's roots) and the host name
(``server_name``, else the URL's host).
"""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpcore
import httpx

from spiffe_core.bundle import Bundle
from spiffe_core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotAuthenticated,
    NotAuthorized,
    NotFound,
    TrustmeshError,
    UpstreamUnavailable,
    X509SvidError,
)
from spiffe_core.peers import peer_certificate_chain
from spiffe_core.spiffe_id import SpiffeId
from spiffe_core.x509_svid import load_pem_certificates, verify_x509_svid

# The longest bearer token the CLI reads from a file (the CA accepts 8 KiB).
MAX_TOKEN_FILE_BYTES = 16 * 1024


class ServerNotTrusted(NotAuthenticated):
    """The server did not prove to be the CA; nothing was sent to it."""


@dataclass(frozen=True, slots=True)
class RemoteTarget:
    """A CA's HTTPS admin API and how to trust and authenticate to it.

    ``server_id`` set: the server must present an X509-SVID for it chaining to ``bundle_pem``.
    Else the server's certificate is checked by host name (``server_name``, else the URL's host)
    against ``bundle_pem`` (None: the system's roots)."""

    url: str
    bundle_pem: bytes | None
    server_id: SpiffeId | None
    server_name: str | None = None
    token: str | None = field(default=None, repr=False)
    cert_file: Path | None = None
    key_file: Path | None = None


def read_token_file(path: Path) -> str:
    """The bearer token in ``path``, without surrounding white space. Raises InvalidArgument."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as err:
        raise InvalidArgument(f"cannot read the token file {path}: {err.strerror}") from err
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise InvalidArgument(f"token file {path} is over {MAX_TOKEN_FILE_BYTES} bytes; it should hold one JWT")
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError as err:
        raise InvalidArgument(f"token file {path} is not ASCII text; it should hold one JWT") from err
    if not token or any(c.isspace() for c in token):
        raise InvalidArgument(f"token file {path} does not hold exactly one token")
    return token


def check_server_svid(chain: Iterable[Any], bundle: Bundle, expected: SpiffeId, url: str) -> None:
    """Raise ServerNotTrusted unless ``chain`` (leaf first) is an X509-SVID for ``expected`` chaining to
    ``bundle`` now."""
    try:
        presented, _ = verify_x509_svid(tuple(chain), bundle, datetime.now(UTC))
    except X509SvidError as err:
        raise ServerNotTrusted(
            f"the server at {url} presented no valid X509-SVID of {expected.trust_domain} ({err}); nothing was "
            "sent to it — check --server and --bundle (the trust domain's current bundle)"
        ) from err
    if presented != expected:
        raise ServerNotTrusted(
            f"the server at {url} presented SPIFFE ID {presented}, not the CA's {expected}; nothing was sent to it "
            "— another server answers there (or pass the CA's trust domain with --trust-domain)"
        )


class _VerifiedTlsStream(httpcore.NetworkStream):
    """A TCP stream whose TLS step checks the server's chain before anything else is written."""

    def __init__(self, inner: httpcore.NetworkStream, check: Callable[[Any], None]) -> None:
        self._inner = inner
        self._check = check

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self._inner.start_tls(ssl_context, server_hostname, timeout)
        try:
            self._check(tls.get_extra_info("ssl_object"))
        except BaseException:
            tls.close()
            raise
        return tls

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _VerifiedTlsBackend(httpcore.NetworkBackend):
    def __init__(self, check: Callable[[Any], None]) -> None:
        self._inner = httpcore.SyncBackend()
        self._check = check

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _VerifiedTlsStream(stream, self._check)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise InvalidArgument("the admin API client dials the CA over TCP only")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _SpiffeServerTransport(httpx.HTTPTransport):
    """httpx's transport over a pool that dials through :class:`_VerifiedTlsBackend` (httpx has no
    parameter for a network backend; its request and response handling is kept as it is)."""

    def __init__(self, context: ssl.SSLContext, check: Callable[[Any], None]) -> None:
        super().__init__(verify=context)
        self._pool = httpcore.ConnectionPool(ssl_context=context, network_backend=_VerifiedTlsBackend(check))


def _client_context(target: RemoteTarget) -> ssl.SSLContext:
    if target.server_id is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # checked as an X509-SVID right after the handshake
    else:
        cadata = None if target.bundle_pem is None else target.bundle_pem.decode()
        context = ssl.create_default_context(cadata=cadata)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if target.cert_file is not None:
        try:
            context.load_cert_chain(target.cert_file, target.key_file)
        except (OSError, ssl.SSLError) as err:
            raise InvalidArgument(
                f"cannot load the client certificate {target.cert_file} and key {target.key_file}: {err}"
            ) from err
    return context


def _remote_transport(target: RemoteTarget) -> httpx.HTTPTransport:
    context = _client_context(target)
    expected = target.server_id
    if expected is None:
        return httpx.HTTPTransport(verify=context)
    if target.bundle_pem is None:
        raise InvalidArgument("a bundle is needed to check the CA's X509-SVID; pass --bundle with its PEM roots")
    bundle = Bundle(expected.trust_domain, x509_authorities=load_pem_certificates(target.bundle_pem))

    def check(ssl_object: Any) -> None:
        try:
            chain = peer_certificate_chain(ssl_object)
        except X509SvidError as err:
            raise ServerNotTrusted(f"cannot check the server at {target.url}: {err}") from err
        check_server_svid(chain, bundle, expected, target.url)

    return _SpiffeServerTransport(context, check)


def _check_url(url: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "https" or not parsed.hostname or parsed.path not in ("", "/"):
        raise InvalidArgument(
            f"--server {url!r} is not https://host:port; the admin API is served over HTTPS only (a token must "
            "never travel in clear)"
        )
    return url.rstrip("/")


class AdminClient:
    def __init__(
        self,
        client: httpx.Client,
        where: str,
        unreachable_hint: str,
        extensions: dict[str, Any] | None = None,
    ) -> None:
        self._client = client
        self._where = where
        self._hint = unreachable_hint
        self._extensions = extensions or {}

    @classmethod
    def local(cls, socket_path: Path, timeout: float = 10.0) -> AdminClient:
        """The local admin socket: the break-glass path for root on the CA host."""
        client = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket_path)), base_url="http://trustmesh-ca", timeout=timeout
        )
        hint = "is 'trustmesh-ca run' running with the same config (or pass --socket)?"
        return cls(client, f"the CA admin socket {socket_path}", hint)

    @classmethod
    def remote(cls, target: RemoteTarget, timeout: float = 10.0) -> AdminClient:
        """A CA's HTTPS admin API (module docstring for how the server is checked)."""
        url = _check_url(target.url)
        headers = {} if target.token is None else {"Authorization": f"Bearer {target.token}"}
        client = httpx.Client(
            transport=_remote_transport(target), base_url=url, headers=headers, timeout=timeout, trust_env=False
        )
        extensions = {} if target.server_name is None else {"sni_hostname": target.server_name}
        hint = "check --server, and that admin_api.address is set in the CA's configuration"
        return cls(client, f"the CA admin API at {url}", hint, extensions)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._client.request(method, path, extensions=self._extensions, **kwargs)
        except (httpx.ConnectError, FileNotFoundError) as err:
            raise self._unreachable(err) from err
        except httpx.HTTPError as err:
            raise UpstreamUnavailable(f"{self._where} failed: {err}") from err
        if response.status_code >= 400:
            raise _error_from(response)
        return response

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A response whose body is read as it arrives (``iter_lines``), for replies too long to hold."""
        try:
            with self._client.stream(method, path, extensions=self._extensions, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from(response)
                yield response
        except (httpx.ConnectError, FileNotFoundError) as err:
            raise self._unreachable(err) from err
        except httpx.HTTPError as err:
            raise UpstreamUnavailable(f"{self._where} failed: {err}") from err

    def _unreachable(self, err: Exception) -> UpstreamUnavailable:
        return UpstreamUnavailable(f"cannot reach {self._where} ({err}); {self._hint}")

    def get_json(self, path: str, **params: str) -> Any:
        return self.request("GET", path, params=params).json()

    def post_json(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, json=body).json()


def _error_from(response: httpx.Response) -> TrustmeshError:
    try:
        message = str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        message = response.text.strip() or f"HTTP {response.status_code}"
    kind: type[TrustmeshError] = {
        400: InvalidArgument,
        401: NotAuthenticated,
        403: NotAuthorized,
        404: NotFound,
        409: FailedPrecondition,
        413: InvalidArgument,
        503: UpstreamUnavailable,
    }.get(response.status_code, TrustmeshError)
    return kind(message)
