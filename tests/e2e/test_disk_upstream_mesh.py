"""The mesh under a ``disk`` upstream: trustmesh CAs are intermediates of an enterprise root, so every
SVID chain carries an intermediate — through the agent's node-API authentication, SDS, and two real
Envoys whose SPIFFE validator needs a CRL for the intermediate and for the root."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from tests.e2e.test_mesh import FRONTEND, envoy_pair, get_through, start_agent, wait_for_mtls
from tests.support.enterprise_pki import write_enterprise_root
from tests.support.envoy import running_envoy
from tests.support.mesh import Mesh
from tests.support.processes import wait_until
from tests.support.tls_peer import client_context, connects

pytestmark = pytest.mark.e2e


def test_envoys_do_mtls_on_svids_chained_through_an_enterprise_root_and_enforce_its_crls(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    write_enterprise_root(tmp_path, "enterprise root", timedelta(days=30))
    mesh.write_ca_config(
        f'[ca.upstream]\nkind = "disk"\ncert_file = "{tmp_path / "root.pem"}"\nkey_file = "{tmp_path / "root.key"}"\n'
    )
    with mesh.running_ca():
        config, _ = start_agent(mesh)
        backend, frontend, backend_port, frontend_port = envoy_pair(mesh)
        minted = json.loads(mesh.ca("x509", "mint", "--spiffe-id", FRONTEND, "--out", str(tmp_path / "leaf"), "--json"))
        assert (tmp_path / "leaf" / "svid.pem").read_text().count("BEGIN CERTIFICATE") == 2  # leaf + intermediate
        with (
            mesh.running_agent(config),
            running_envoy(backend, tmp_path, "backend"),
            running_envoy(frontend, tmp_path, "frontend"),
        ):
            wait_for_mtls(frontend_port)
            assert get_through(frontend_port).headers["x-peer-spiffe-id"] == FRONTEND
            peer = client_context(tmp_path / "leaf")
            wait_until(lambda: connects(backend_port, peer), 10, "Envoy to accept the minted SVID")
            mesh.ca("revoke", "--serial", minted["serial"])
            wait_until(lambda: not connects(backend_port, peer), 10, "Envoy to refuse the revoked SVID")
            assert get_through(frontend_port).status_code == 200
