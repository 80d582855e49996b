"""py-spiffe as an independent oracle, always in a child process.

py-spiffe ships its own generated Workload API protobuf module, whose message names collide with
ours (wire/workload_pb2) in protobuf's process-wide descriptor pool. So no test imports ``spiffe``
itself: it runs this script with ``sys.executable`` and reads one JSON object from stdout.

Commands (all paths are files):
  x509-svid CHAIN_PEM KEY_PEM            -> {"spiffe_id", "serial", "chain_length"}
  x509-bundle TRUST_DOMAIN PEM_FILE       -> {"authorities": [sha256 hex of DER, ...]}
  jwt-svid TOKEN_FILE BUNDLE_FILE AUDIENCE TRUST_DOMAIN -> {"spiffe_id", "audience", "expiry"} (validated;
      BUNDLE_FILE is a SPIFFE bundle: its jwt-svid keys are handed to py-spiffe's JwtBundle)
  jwt-svid-insecure TOKEN_FILE AUDIENCE   -> {"spiffe_id", "audience", "expiry"} (signature not checked)
  spiffe-bundle TRUST_DOMAIN BUNDLE_FILE  -> {"x509_authorities": [sha256 hex of DER, ...],
      "jwt_authorities": {kid: sha256 hex of SubjectPublicKeyInfo DER}} (jwt-svid keys through JwtBundle.parse,
      the first x5c certificate of each x509-svid key through X509Bundle.parse_raw)
Errors: {"error": "<ExceptionType>: message"} and exit 1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from spiffe import JwtBundle, JwtSvid, TrustDomain, X509Bundle, X509Svid


def main(argv: list[str]) -> dict[str, object]:
    command, *args = argv
    if command == "x509-svid":
        svid = X509Svid.parse(Path(args[0]).read_bytes(), Path(args[1]).read_bytes())
        return {
            "spiffe_id": str(svid.spiffe_id),
            "serial": format(svid.leaf.serial_number, "x"),
            "chain_length": len(svid.cert_chain),
        }
    if command == "x509-bundle":
        bundle = X509Bundle.parse(TrustDomain(args[0]), Path(args[1]).read_bytes())
        return {
            "authorities": sorted(
                hashlib.sha256(c.public_bytes(Encoding.DER)).hexdigest() for c in bundle.x509_authorities
            )
        }
    if command == "jwt-svid":
        token = Path(args[0]).read_text().strip()
        spiffe_bundle = json.loads(Path(args[1]).read_text())
        jwks = {"keys": [k for k in spiffe_bundle["keys"] if k.get("use") == "jwt-svid"]}
        bundle = JwtBundle.parse(TrustDomain(args[3]), json.dumps(jwks).encode())
        svid = JwtSvid.parse_and_validate(token, bundle, [args[2]])
        return {"spiffe_id": str(svid.spiffe_id), "audience": sorted(svid.audience), "expiry": svid.expiry}
    if command == "jwt-svid-insecure":
        svid = JwtSvid.parse_insecure(Path(args[0]).read_text().strip(), {args[1]})
        return {"spiffe_id": str(svid.spiffe_id), "audience": sorted(svid.audience), "expiry": svid.expiry}
    if command == "spiffe-bundle":
        trust_domain = TrustDomain(args[0])
        keys = json.loads(Path(args[1]).read_text())["keys"]
        jwks = {"keys": [k for k in keys if k.get("use") == "jwt-svid"]}
        jwt_bundle = JwtBundle.parse(trust_domain, json.dumps(jwks).encode())
        ders = b"".join(base64.b64decode(k["x5c"][0]) for k in keys if k.get("use") == "x509-svid")
        x509_bundle = X509Bundle.parse_raw(trust_domain, ders)
        return {
            "x509_authorities": sorted(
                hashlib.sha256(c.public_bytes(Encoding.DER)).hexdigest() for c in x509_bundle.x509_authorities
            ),
            "jwt_authorities": {
                kid: hashlib.sha256(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).hexdigest()
                for kid, key in jwt_bundle.jwt_authorities.items()
            },
        }
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    try:
        result = main(sys.argv[1:])
    except Exception as err:  # the oracle reports every failure as data
        print(json.dumps({"error": f"{type(err).__name__}: {err}"}))
        sys.exit(1)
    print(json.dumps(result, default=str))
