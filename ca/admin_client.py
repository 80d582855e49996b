"""The CLI's client for the local admin API on the CA's Unix socket.

Errors come back as one TrustmeshError each: the server's own message for a refused request, or a
sentence saying the CA is not reachable and how to start it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from spiffe_core.errors import InvalidArgument, NotAuthorized, NotFound, TrustmeshError, UpstreamUnavailable


class AdminClient:
    def __init__(self, socket_path: Path, timeout: float = 10.0) -> None:
        self._socket_path = socket_path
        self._client = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket_path)), base_url="http://trustmesh-ca", timeout=timeout
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._client.request(method, path, **kwargs)
        except (httpx.ConnectError, FileNotFoundError) as err:
            raise self._unreachable() from err
        except httpx.HTTPError as err:
            raise UpstreamUnavailable(f"the CA admin socket {self._socket_path} failed: {err}") from err
        if response.status_code >= 400:
            raise _error_from(response)
        return response

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A response whose body is read as it arrives (``iter_lines``), for replies too long to hold."""
        try:
            with self._client.stream(method, path, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from(response)
                yield response
        except (httpx.ConnectError, FileNotFoundError) as err:
            raise self._unreachable() from err
        except httpx.HTTPError as err:
            raise UpstreamUnavailable(f"the CA admin socket {self._socket_path} failed: {err}") from err

    def _unreachable(self) -> UpstreamUnavailable:
        return UpstreamUnavailable(
            f"cannot reach the CA admin socket {self._socket_path}; is 'trustmesh-ca run' running "
            "with the same config (or pass --socket)?"
        )

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
        403: NotAuthorized,
        404: NotFound,
        503: UpstreamUnavailable,
    }.get(response.status_code, TrustmeshError)
    return kind(message)
