"""Federation with other trust domains (DESIGN §3 "Federation"; SPIFFE_Federation.md): the bundle
endpoint this CA serves, the relationships it keeps with partners, and the fetching of their bundles."""
