"""The version an agent reports in its gRPC user-agent (ca/node_api.py ``reported_version``): only our
agent's short, safe token reaches the inventory."""

from __future__ import annotations

import pytest

from ca.node_api import reported_version
from sds.version import user_agent


@pytest.mark.parametrize(
    ("metadata", "version"),
    [
        pytest.param((("user-agent", "trustmesh-agent/0.4.0 grpc-python/1.66.1 grpc-c/43.0.0"),), "0.4.0", id="agent"),
        pytest.param((("user-agent", "grpc-python/1.66.1 grpc-c/43.0.0"),), "", id="older-agent"),
        pytest.param((("user-agent", "trustmesh-agent/0.4.0<script> grpc-python/1"),), "", id="unsafe-characters"),
        pytest.param((("user-agent", "trustmesh-agent/" + "9" * 65 + " grpc"),), "", id="too-long"),
        pytest.param((("x-other", "trustmesh-agent/0.4.0"),), "", id="another-header"),
        pytest.param(None, "", id="no-metadata"),
    ],
)
def test_only_our_agents_version_token_is_taken(metadata: object, version: str) -> None:
    assert reported_version(metadata) == version


def test_the_agents_user_agent_carries_a_version_the_ca_reads_back() -> None:
    assert reported_version((("user-agent", f"{user_agent()} grpc-python/1.66.1"),)) != ""
