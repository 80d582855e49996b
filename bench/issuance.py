"""X509-SVID issuance throughput against the raw crypto ceiling, measured in the same run.

Each X509-SVID costs at least one ECDSA verify (the CSR's self-signature) and one ECDSA sign (the
certificate). The ceiling is therefore 1 / (1/sign_rate + 1/verify_rate) certificates per second on
one core. The issuance path measured is the server's own: ``CaService.mint_x509_svids_each`` with CSR
checks, template building, signing, the X509-SVID rule check and recording every certificate and one audit
record per batch in SQLite (WAL), in batches as the node API sends them.

    python bench/issuance.py [--count 4000] [--batch 100] [--database-url URL]

Not a test: numbers depend on the machine; the ratio is what to compare across machines.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca.audit import Issuance
from ca.authority_manager import AuthorityManager, AuthorityParams
from ca.issuance import TtlPolicy, X509SvidRequest
from ca.keys.memory import MemoryKeyManager
from ca.metrics import CaMetrics
from ca.service import CaService
from ca.store.engine import Database
from ca.store.records import Actor
from ca.upstream import SelfSignedUpstream
from spiffe_core.clock import SystemClock
from spiffe_core.keys import KeyType
from spiffe_core.spiffe_id import SpiffeId, TrustDomain


def rate(fn: object, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        fn()  # type: ignore[operator]
    return count / (time.perf_counter() - start)


def raw_rates(count: int) -> tuple[float, float]:
    key = ec.generate_private_key(ec.SECP256R1())
    message = b"x" * 300  # about the size of a certificate's to-be-signed part
    signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
    public = key.public_key()
    sign_rate = rate(lambda: key.sign(message, ec.ECDSA(hashes.SHA256())), count)
    verify_rate = rate(lambda: public.verify(signature, message, ec.ECDSA(hashes.SHA256())), count)
    return sign_rate, verify_rate


def make_csrs(count: int) -> list[bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csrs = []
    for _ in range(count):
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
        csrs.append(csr.public_bytes(serialization.Encoding.DER))
    return csrs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()

    sign_rate, verify_rate = raw_rates(args.count)
    ceiling = 1 / (1 / sign_rate + 1 / verify_rate)

    with tempfile.TemporaryDirectory() as tmp:
        database = Database.open(args.database_url or f"sqlite:///{Path(tmp) / 'bench.sqlite3'}")
        database.migrate()
        td = TrustDomain("bench.example")
        authorities = AuthorityManager(
            database,
            MemoryKeyManager(),
            SelfSignedUpstream(),
            AuthorityParams(td, KeyType.EC_P256, KeyType.EC_P256, timedelta(days=7), timedelta(minutes=5)),
            SystemClock(),
        )
        authorities.load()
        service = CaService(
            database=database,
            authorities=authorities,
            x509_ttl=TtlPolicy(timedelta(hours=1), timedelta(hours=24)),
            jwt_ttl=TtlPolicy(timedelta(minutes=5), timedelta(hours=1)),
            clock=SystemClock(),
            metrics=CaMetrics(),
        )
        ids = [SpiffeId.from_segments(td, "ns", "bench", "sa", f"w{i}") for i in range(args.count)]
        requests = [X509SvidRequest(csr, spiffe_id) for csr, spiffe_id in zip(make_csrs(args.count), ids, strict=True)]
        # As the node API signs an agent's batch: each request on its own, one audit record per batch.
        issuance = Issuance(Actor("spiffe://bench.example/trustmesh/agent/bench/node", "node-api"))
        start = time.perf_counter()
        for offset in range(0, args.count, args.batch):
            service.mint_x509_svids_each(requests[offset : offset + args.batch], issuance)
        issued_rate = args.count / (time.perf_counter() - start)
        database.close()

    print(f"raw ECDSA P-256 sign:    {sign_rate:9.0f} /s")
    print(f"raw ECDSA P-256 verify:  {verify_rate:9.0f} /s")
    print(f"crypto ceiling (1 verify + 1 sign per SVID): {ceiling:9.0f} SVIDs/s")
    print(f"issued X509-SVIDs (batch {args.batch}, recorded): {issued_rate:9.0f} SVIDs/s")
    print(f"ratio to ceiling: {issued_rate / ceiling:.1%}  (goal >= 40%)")


if __name__ == "__main__":
    main()
