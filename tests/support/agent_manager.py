"""An agent manager as the agent's integration tests run it: real node client and identity, an empty
cache, a store in the test's directory, and retries sized for tests (50 ms doubling to 200 ms)."""

from __future__ import annotations

import random
from pathlib import Path

from sds.agent_svid import AgentIdentity
from sds.cache import CacheSnapshot, WorkloadCache
from sds.manager import AgentManager, ManagerParams
from sds.node_client import NodeClient
from sds.persistence import AgentStore
from spiffe_core.clock import SystemClock
from spiffe_core.spiffe_id import TrustDomain


def quick_retrying_manager(
    client: NodeClient, identity: AgentIdentity, data_dir: Path, trust_domain: TrustDomain
) -> tuple[AgentManager, WorkloadCache]:
    """The manager and the cache it publishes to."""
    cache = WorkloadCache(CacheSnapshot(trust_domain))
    manager = AgentManager(
        client=client,
        cache=cache,
        store=AgentStore(data_dir, trust_domain),
        identity=identity,
        params=ManagerParams(backoff_base=0.05, backoff_cap=0.2),
        clock=SystemClock(),
        rng=random.Random(7),
    )
    return manager, cache
