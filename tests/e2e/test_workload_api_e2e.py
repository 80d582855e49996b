"""The SPIFFE Workload API of a real agent process, judged by py-spiffe (an independent client, run in a
child process) and by raw gRPC calls: X.509 context, bundles, JWT-SVIDs, the security header, and
workloads that match no registration entry."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.support.mesh import TRUST_DOMAIN, Mesh
from tests.support.processes import command, run, wait_until
from wire import workload_pb2, workload_pb2_grpc

pytestmark = pytest.mark.e2e

CLIENT = str(Path(__file__).parents[1] / "support" / "pyspiffe_workload_client.py")
APP = f"spiffe://{TRUST_DOMAIN}/app"
PYTHON = f"unix:path:{os.path.realpath(sys.executable)}"


def py_spiffe(*args: str) -> tuple[int, dict[str, object]]:
    result = run([sys.executable, CLIENT, *args], timeout=30)
    return result.returncode, json.loads(result.stdout or "{}")


def running_mesh(root: Path, *selectors: str) -> Iterator[Mesh]:
    """CA + agent with one entry (APP) parented to the agent, selected by ``selectors``."""
    mesh = Mesh(root)
    with mesh.running_ca():
        token, agent_id = mesh.join_token()
        mesh.create_entry(APP, agent_id, *selectors)
        with mesh.running_agent(mesh.write_agent_config(token)):
            wait_until(mesh.workload_socket.exists, 20, "the Workload API socket")
            yield mesh


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    """Python processes of this user are entitled to APP."""
    yield from running_mesh(tmp_path, f"unix:uid:{os.getuid()}", PYTHON)


def test_py_spiffe_fetches_the_x509_context_from_the_agent(mesh: Mesh) -> None:
    def fetched() -> bool:
        return py_spiffe("x509-context", str(mesh.workload_socket))[0] == 0

    wait_until(fetched, 20, "the agent to hold the app's SVID")
    _, context = py_spiffe("x509-context", str(mesh.workload_socket))
    svids = context["svids"]
    assert isinstance(svids, list)
    assert [s["spiffe_id"] for s in svids] == [APP]
    assert list(context["bundles"]) == [TRUST_DOMAIN]  # type: ignore[call-overload]


def test_py_spiffe_fetches_x509_and_jwt_bundles(mesh: Mesh) -> None:
    wait_until(lambda: py_spiffe("x509-bundles", str(mesh.workload_socket))[0] == 0, 20, "bundles")
    assert list(py_spiffe("x509-bundles", str(mesh.workload_socket))[1]["bundles"]) == [TRUST_DOMAIN]  # type: ignore[call-overload]
    jwt_bundles = py_spiffe("jwt-bundles", str(mesh.workload_socket))[1]["bundles"]
    assert isinstance(jwt_bundles, dict)
    assert len(jwt_bundles[TRUST_DOMAIN]) == 1


def test_py_spiffe_jwt_svid_round_trips_through_validate_jwt_svid(mesh: Mesh) -> None:
    wait_until(lambda: py_spiffe("x509-context", str(mesh.workload_socket))[0] == 0, 20, "the app's SVID")
    code, answer = py_spiffe("jwt-round-trip", str(mesh.workload_socket), "payments")
    assert code == 0, answer
    assert answer["fetched"] == {"spiffe_id": APP, "audience": ["payments"]}
    assert json.dumps(answer["validated_by_api"]).count(APP) == 1
    assert json.dumps(answer["validated_locally"]).count(APP) == 1


def test_agent_cli_writes_the_svid_and_a_0600_key(mesh: Mesh, tmp_path: Path) -> None:
    out = tmp_path / "svid"
    argv = [
        command("trustmesh-agent"),
        "api",
        "--socket",
        str(mesh.workload_socket),
        "fetch",
        "x509",
        "--out",
        str(out),
    ]
    wait_until(lambda: run(argv).returncode == 0, 20, "trustmesh-agent api fetch x509 to succeed")
    assert (out / "svid.key").stat().st_mode & 0o777 == 0o600
    verify = run(["openssl", "verify", "-CAfile", str(out / "bundle.pem"), str(out / "svid.pem")])
    assert verify.returncode == 0, verify.stderr


def test_a_call_without_the_security_header_is_invalid_argument(mesh: Mesh) -> None:
    with grpc.insecure_channel(f"unix:{mesh.workload_socket}") as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["x"]), timeout=5)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "security header missing" in (refused.value.details() or "")


def test_a_workload_matching_no_entry_gets_permission_denied_and_no_key(tmp_path: Path) -> None:
    for mesh in running_mesh(tmp_path, f"unix:uid:{os.getuid() + 4242}"):
        code, answer = py_spiffe("x509-context", str(mesh.workload_socket))
        assert code == 1
        assert "PERMISSION_DENIED" in str(answer["error"]).upper() or "PermissionDenied" in str(answer["error"])
        out = tmp_path / "nothing"
        argv = [
            command("trustmesh-agent"),
            "api",
            "--socket",
            str(mesh.workload_socket),
            "fetch",
            "x509",
            "--out",
            str(out),
        ]
        result = run(argv)
        assert result.returncode == 1
        assert "the agent refused" in result.stderr
        assert not out.exists()
