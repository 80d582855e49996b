"""HTTP/2 keepalive between agents and the CA: how a silent network partition is noticed.

The Sync stream is idle between changes, for hours at a time. Without pings, a partition that drops
packets without a reset (a dead NAT entry, a pulled cable, a frozen VM on the other side) leaves the
agent holding a stream that will never deliver another change, and reporting itself ready, until the
kernel gives up on the TCP connection many minutes later; the CA likewise keeps a dead agent "connected".

Both sides therefore ping. Ping cadences and the CA's ping policing are one contract: gRPC servers
answer a client that pings more often than they permit with GOAWAY ``too_many_pings`` after two
strikes, so the CA must permit at least the agents' cadence. Both live here so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keepalive:
    """Ping after ``interval`` seconds without hearing from the peer; give up on the connection when
    the ping is not answered within ``timeout`` seconds."""

    interval: float
    timeout: float

    def channel_options(self) -> list[tuple[str, int]]:
        """gRPC channel or server arguments for this cadence, pinging also while no data flows."""
        return [
            ("grpc.keepalive_time_ms", round(self.interval * 1000)),
            ("grpc.keepalive_timeout_ms", round(self.timeout * 1000)),
            # Any ping on the connection (keepalive or gRPC's own flow-control probes) is given up on
            # after the same time; gRPC's default for the others is a minute.
            ("grpc.http2.ping_timeout_ms", round(self.timeout * 1000)),
            ("grpc.http2.max_pings_without_data", 0),  # a quiet Sync stream is the case to cover
        ]


# The agent notices a silent partition from the CA within about 40 s, then reconnects with backoff.
AGENT_KEEPALIVE = Keepalive(interval=30.0, timeout=10.0)
# The CA notices a vanished agent within about 80 s and frees its Sync stream.
CA_KEEPALIVE = Keepalive(interval=60.0, timeout=20.0)
# The shortest interval between an agent's pings the CA accepts (a third of the agents' cadence, so
# jitter never counts as a strike).
CA_MIN_PING_INTERVAL = AGENT_KEEPALIVE.interval / 3


def server_options(
    keepalive: Keepalive = CA_KEEPALIVE, min_ping_interval: float = CA_MIN_PING_INTERVAL
) -> list[tuple[str, int]]:
    """The CA's gRPC server arguments: ping its clients at ``keepalive``, and accept their pings as
    often as every ``min_ping_interval`` seconds, with or without calls in flight."""
    return [
        *keepalive.channel_options(),
        ("grpc.http2.min_ping_interval_without_data_ms", round(min_ping_interval * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
