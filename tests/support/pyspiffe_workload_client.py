"""py-spiffe's WorkloadApiClient as an independent client of our Workload API, always in a child process.

py-spiffe ships its own generated Workload API module, whose message names collide with ours
(wire/workload_pb2) in protobuf's process-wide descriptor pool, so tests run this script with
``sys.executable`` and read one JSON object from stdout. Certificates and keys are reported as
sha256 hex digests of their DER (SubjectPublicKeyInfo for keys).

Commands (SOCKET is the Workload API socket path; py-spiffe is given ``unix:SOCKET``):
  x509-context SOCKET            -> {"svids": [{"spiffe_id", "chain", "public_key"}], "bundles": {td: [certs]}}
  x509-bundles SOCKET            -> {"bundles": {td: [certs]}}
  jwt-bundles SOCKET             -> {"bundles": {td: {kid: public key}}}
  jwt-round-trip SOCKET AUDIENCE -> {"fetched", "validated_by_api", "validated_locally"}: the token from
      fetch_jwt_svid, checked by the Workload API's ValidateJWTSVID and by py-spiffe itself with the
      JWT bundle of its trust domain from fetch_jwt_bundles (SPIFFE IDs and audiences)
  jwt-svid-for SOCKET AUDIENCE SPIFFE_ID -> {"spiffe_id"} from fetch_jwt_svid with that subject
  validate SOCKET TOKEN AUDIENCE -> {"spiffe_id"} from validate_jwt_svid
  descriptor                     -> {"file_descriptor": base64 of py-spiffe's FileDescriptorProto}
Errors: {"error": "<ExceptionType>: message"} and exit 1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf import descriptor_pb2
from spiffe import JwtSvid, SpiffeId, WorkloadApiClient
from spiffe._proto import workload_pb2

TIMEOUT = 10.0


def _cert(cert: Any) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def _key(key: Any) -> str:
    return hashlib.sha256(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def _x509_bundles(bundle_set: Any) -> dict[str, list[str]]:
    return {
        str(bundle.trust_domain): sorted(_cert(c) for c in bundle.x509_authorities) for bundle in bundle_set.bundles
    }


def main(argv: list[str]) -> dict[str, object]:
    command, *args = argv
    if command == "descriptor":
        proto = descriptor_pb2.FileDescriptorProto()
        workload_pb2.DESCRIPTOR.CopyToProto(proto)
        return {"file_descriptor": base64.b64encode(proto.SerializeToString()).decode()}
    with WorkloadApiClient(socket_path=f"unix:{args[0]}", default_timeout=TIMEOUT) as client:
        if command == "x509-context":
            context = client.fetch_x509_context()
            return {
                "svids": [
                    {
                        "spiffe_id": str(svid.spiffe_id),
                        "chain": [_cert(c) for c in svid.cert_chain],
                        "public_key": _key(svid.private_key.public_key()),
                    }
                    for svid in context.x509_svids
                ],
                "bundles": _x509_bundles(context.x509_bundle_set),
            }
        if command == "x509-bundles":
            return {"bundles": _x509_bundles(client.fetch_x509_bundles())}
        if command == "jwt-bundles":
            bundles = client.fetch_jwt_bundles()
            return {
                "bundles": {
                    str(bundle.trust_domain): {kid: _key(key) for kid, key in bundle.jwt_authorities.items()}
                    for bundle in bundles.bundles
                }
            }
        if command == "jwt-round-trip":
            audience = args[1]
            fetched = client.fetch_jwt_svid({audience})
            by_api = client.validate_jwt_svid(fetched.token, audience)
            bundle = client.fetch_jwt_bundles().get_bundle_for_trust_domain(fetched.spiffe_id.trust_domain)
            locally = JwtSvid.parse_and_validate(fetched.token, bundle, {audience})
            return {
                "fetched": {"spiffe_id": str(fetched.spiffe_id), "audience": sorted(fetched.audience)},
                "validated_by_api": str(by_api.spiffe_id),
                "validated_locally": {"spiffe_id": str(locally.spiffe_id), "audience": sorted(locally.audience)},
            }
        if command == "jwt-svid-for":
            svid = client.fetch_jwt_svid({args[1]}, subject=SpiffeId(args[2]))
            return {"spiffe_id": str(svid.spiffe_id)}
        if command == "validate":
            return {"spiffe_id": str(client.validate_jwt_svid(args[1], args[2]).spiffe_id)}
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    try:
        result = main(sys.argv[1:])
    except Exception as err:  # every failure is reported as data
        print(json.dumps({"error": f"{type(err).__name__}: {err}"}))
        sys.exit(1)
    print(json.dumps(result))
