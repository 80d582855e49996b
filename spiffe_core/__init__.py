"""Pure SPIFFE primitives shared by the CA, the agent and the bridge (no I/O, no grpc/sql/http).

A short tour::

    from spiffe_core.spiffe_id import SpiffeId
    from spiffe_core.x509_svid import verify_x509_svid
    from spiffe_core.jwt_svid import validate_jwt_svid

    spiffe_id = SpiffeId.parse("spiffe://example.org/web")      # SpiffeIdError names the broken rule
    spiffe_id, path = verify_x509_svid(chain, bundle, now)     # bundle chosen by the leaf's trust domain
    svid = validate_jwt_svid(token, audience="payments", bundle_source=bundle, now=now)

Every error is a :class:`spiffe_core.errors.TrustmeshError`.
"""
