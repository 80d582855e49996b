"""A small SPIFFE Workload API client, for ``trustmesh-agent api fetch`` and for scripts.

It speaks the same wire protocol as any SPIFFE library (it sends the ``workload.spiffe.io: true``
header the Workload Endpoint spec requires) and turns the response into plain values: DER blobs of
concatenated certificates are split into certificates, keys are parsed, gRPC errors become the
error kinds of spiffe_core.errors with the server's message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from spiffe_core.errors import InvalidArgument, NotAuthorized, TrustmeshError, UpstreamUnavailable
from spiffe_core.keys import PrivateKey
from wire import workload_pb2, workload_pb2_grpc

HEADER = (("workload.spiffe.io", "true"),)


@dataclass(frozen=True, slots=True)
class FetchedX509Svid:
    spiffe_id: str
    cert_chain: tuple[x509.Certificate, ...]
    private_key: PrivateKey = field(repr=False)
    bundle: tuple[x509.Certificate, ...]
    hint: str


def split_der_certificates(blob: bytes) -> tuple[x509.Certificate, ...]:
    """Certificates concatenated in DER, as the Workload API sends chains and bundles."""
    certs: list[x509.Certificate] = []
    offset = 0
    while offset < len(blob):
        if blob[offset] != 0x30 or offset + 2 > len(blob):
            raise InvalidArgument("certificate data is not a sequence of DER certificates")
        first = blob[offset + 1]
        if first < 0x80:
            header, length = 2, first
        else:
            count = first & 0x7F
            header, length = 2 + count, int.from_bytes(blob[offset + 2 : offset + 2 + count], "big")
        end = offset + header + length
        certs.append(x509.load_der_x509_certificate(blob[offset:end]))
        offset = end
    return tuple(certs)


def _error(err: grpc.RpcError) -> TrustmeshError:
    code = err.code() if isinstance(err, grpc.Call) else None
    message = err.details() if isinstance(err, grpc.Call) else str(err)
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return NotAuthorized(f"the agent refused: {message}")
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(f"the agent refused the request: {message}")
    if code is grpc.StatusCode.UNAVAILABLE:
        return UpstreamUnavailable(
            f"cannot reach the Workload API socket: {message}; is 'trustmesh-agent run' running?"
        )
    return TrustmeshError(f"Workload API call failed ({code.name if code else 'unknown'}): {message}")


class WorkloadApiClient:
    def __init__(self, socket_path: Path, timeout: float = 10.0) -> None:
        self._target = f"unix:{socket_path}"
        self._timeout = timeout

    def _stub(self, channel: grpc.Channel) -> workload_pb2_grpc.SpiffeWorkloadAPIStub:
        return workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)

    def _first_message(self, rpc: str, request: Any) -> Any:
        """The first message of a server stream (each carries the caller's full state), then hang up."""
        with grpc.insecure_channel(self._target) as channel:
            stream = getattr(self._stub(channel), rpc)(request, metadata=HEADER, timeout=self._timeout)
            try:
                return next(iter(stream))
            except grpc.RpcError as err:
                raise _error(err) from err
            finally:
                stream.cancel()

    def fetch_x509_svids(self) -> list[FetchedX509Svid]:
        """Every X509-SVID this caller is entitled to, with keys and bundles."""
        response = self._first_message("FetchX509SVID", workload_pb2.X509SVIDRequest())
        svids = []
        for svid in response.svids:
            key = serialization.load_der_private_key(svid.x509_svid_key, password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
                raise InvalidArgument(f"the key of {svid.spiffe_id} is a {type(key).__name__}; expected EC or RSA")
            svids.append(
                FetchedX509Svid(
                    svid.spiffe_id,
                    split_der_certificates(svid.x509_svid),
                    key,
                    split_der_certificates(svid.bundle),
                    svid.hint,
                )
            )
        return svids

    def fetch_x509_bundles(self) -> dict[str, tuple[x509.Certificate, ...]]:
        response = self._first_message("FetchX509Bundles", workload_pb2.X509BundlesRequest())
        return {td: split_der_certificates(blob) for td, blob in response.bundles.items()}

    def fetch_jwt_svids(self, audience: list[str], spiffe_id: str = "") -> list[tuple[str, str]]:
        with grpc.insecure_channel(self._target) as channel:
            try:
                response = self._stub(channel).FetchJWTSVID(
                    workload_pb2.JWTSVIDRequest(audience=audience, spiffe_id=spiffe_id),
                    metadata=HEADER,
                    timeout=self._timeout,
                )
            except grpc.RpcError as err:
                raise _error(err) from err
        return [(svid.spiffe_id, svid.svid) for svid in response.svids]
