"""Legacy identity bridge: maps enterprise-PKI and DNS identities to SPIFFE IDs and onboards brownfield hosts."""
