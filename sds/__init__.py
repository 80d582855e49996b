"""The trustmesh node agent: attests workloads and serves their SVIDs over Envoy SDS v3 and the SPIFFE Workload API."""
