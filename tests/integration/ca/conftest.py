"""Fixtures shared by the CA's integration tests: ``ca``, a running node API over SQLite (defined with
its helpers in test_node_api.py), for the tests of other modules that call the node API as agents do.
A module that defines its own ``ca`` fixture uses that one."""

from __future__ import annotations

from tests.integration.ca.test_node_api import ca  # noqa: F401 - re-exported as a fixture for this directory
