"""Generated protobuf and gRPC code and the .proto files it comes from; no logic lives here.

* ``node.proto`` → ``node_pb2`` / ``node_pb2_grpc``: the CA's node API (agent ↔ CA, over mTLS).
* ``workload.proto`` → ``workload_pb2`` / ``workload_pb2_grpc``: the SPIFFE Workload API, wire-identical
  to the specification's ``workloadapi.proto`` (no package). py-spiffe ships its own generated module
  with the same message names; the two must never be imported into one process (protobuf's default
  descriptor pool refuses duplicate symbols), so tests run py-spiffe in a child process.

Regenerate everything with ``scripts/gen-protos`` after editing a .proto, and commit both.
"""
