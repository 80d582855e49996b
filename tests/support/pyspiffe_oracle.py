"""py-spiffe as an independent oracle, always in a child process.

py-spiffe ships its own generated Workload API protobuf module, whose message names collide with
ours (wire/workload_pb2) in protobuf's process-wide descriptor pool. So no test imports ``spiffe``
itself: it runs this script with ``sys.executable`` and reads one JSON object from stdout.

Commands (all paths are files):
  x509-svid CHAIN_PEM KEY_PEM            -> {"spiffe_id", "serial", "chain_length"}
  x509-bundle TRUST_DOMAIN PEM_FILE       -> {"authorities": [sha256 hex of DER, ...]}
  jwt-svid TOKEN_FILE BUNDLE_FILE AUDIENCE TRUST_DOMAIN -> {"spiffe_id", "audience", "expiry"} (validated;
      BUNDLE_FILE is a SPIFFE bundle: its jwt-svid keys are handed to py-spiffe's JwtBundle)
Errors: {"error": "<ExceptionType>: message"} and exit 1.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding
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
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    try:
        result = main(sys.argv[1:])
    except Exception as err:  # the oracle reports every failure as data
        print(json.dumps({"error": f"{type(err).__name__}: {err}"}))
        sys.exit(1)
    print(json.dumps(result, default=str))
