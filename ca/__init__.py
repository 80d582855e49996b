"""trustmesh-ca: the SPIFFE certificate authority of one trust domain (DESIGN §3).

Authorities sign X509-SVIDs and JWT-SVIDs (``ca.authority``, ``ca.issuance``), the datastore keeps
what must outlive a process (``ca.store``), and the edges (``ca.http_api``, ``ca.cli``) translate
between the wire and those domain calls.
"""
