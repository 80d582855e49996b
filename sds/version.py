"""Which trustmesh the agent is: the version ``--version`` prints and the one the agent reports to the
CA in its gRPC user-agent (``trustmesh-agent/<version>``), which the CA's inventory shows per agent."""

from __future__ import annotations

import importlib.metadata

NOT_INSTALLED = "unknown (trustmesh is not installed; run scripts/bootstrap)"


def package_version() -> str:
    """The installed trustmesh distribution's version, or :data:`NOT_INSTALLED`."""
    try:
        return importlib.metadata.version("trustmesh")
    except importlib.metadata.PackageNotFoundError:
        return NOT_INSTALLED


def user_agent() -> str:
    """``trustmesh-agent/<version>``: what the agent names itself as on every node API call ("unknown"
    as the version when trustmesh is not installed)."""
    version = package_version()
    return f"trustmesh-agent/{'unknown' if version == NOT_INSTALLED else version}"
