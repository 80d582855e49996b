"""Workload attestation against a real agent process: a process that executes another binary after it
connected gets nothing more on its stream, and a workload of an unprivileged user reaches the agent's
default socket and gets the SVID its uid is entitled to."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.support.mesh import TRUST_DOMAIN, Mesh
from tests.support.processes import run, wait_until
from wire import workload_pb2, workload_pb2_grpc

pytestmark = pytest.mark.e2e

CLIENT = str(Path(__file__).parents[1] / "support" / "pyspiffe_workload_client.py")
APP = f"spiffe://{TRUST_DOMAIN}/app"
LATER = f"spiffe://{TRUST_DOMAIN}/later"
HEADER = (("workload.spiffe.io", "true"),)
NOBODY = 65534

# Run by the first binary: connect to the agent, hand the connection to the test (so the test can
# speak gRPC on it while this process stays the connection's owner), wait, then exec the second binary.
WORKLOAD = """
import os, socket, sys
control = socket.socket(fileno=int(sys.argv[1]))
agent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
agent.connect(sys.argv[2])
socket.send_fds(control, [b"connected"], [agent.fileno()])
control.recv(1)
control.close()
os.execv(sys.argv[3], [sys.argv[3], "-c", "import time; time.sleep(120)"])
"""


@pytest.fixture
def public_root() -> Iterator[Path]:
    """A mesh root every user can traverse (pytest's tmp_path sits in a 0700 directory)."""
    root = Path(tempfile.mkdtemp(prefix="tm-e2e-", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def two_binaries(directory: Path) -> tuple[Path, Path]:
    """Two working Python interpreters with different digests: a copy, and a copy with a byte appended."""
    python = Path(os.path.realpath(sys.executable))
    first, second = directory / "python-first", directory / "python-second"
    shutil.copy2(python, first)
    shutil.copy2(python, second)
    with second.open("ab") as file:
        file.write(b"\0")
    (directory / "pyvenv.cfg").write_text(f"home = {python.parent}\n")  # find the standard library
    return first, second


def sha256_selector(path: Path) -> str:
    return f"unix:sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"


def holds_svid(socket_path: Path) -> bool:
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        stream = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel).FetchX509SVID(
            workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=5
        )
        try:
            return bool(next(stream).svids)
        except grpc.RpcError:
            return False
        finally:
            stream.cancel()


def executes(process: subprocess.Popen[bytes], binary: Path, log: Path) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"the workload exited with {process.returncode}: {log.read_text()}")
    return os.readlink(f"/proc/{process.pid}/exe") == str(binary)


def pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def serve_connection_locally(agent: socket.socket, path: Path) -> None:
    """Let a gRPC client reach the connection ``agent`` through a local socket at ``path``."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def accept() -> None:
        local, _ = listener.accept()
        listener.close()
        threading.Thread(target=pump, args=(local, agent), daemon=True).start()
        pump(agent, local)

    threading.Thread(target=accept, daemon=True).start()


def test_a_stream_ends_when_its_process_executes_another_binary(tmp_path: Path) -> None:
    first, second = two_binaries(tmp_path)
    mesh = Mesh(tmp_path)
    with mesh.running_ca():
        token, agent_id = mesh.join_token()
        mesh.create_entry(APP, agent_id, sha256_selector(first))
        with mesh.running_agent(mesh.write_agent_config(token)):
            # This test runs the same binary as the first one: once it gets APP, so would the workload.
            wait_until(lambda: holds_svid(mesh.workload_socket), 30, "the agent to hold the SVID of APP")
            ours, theirs = socket.socketpair()
            workload = subprocess.Popen(
                [str(first), "-c", WORKLOAD, str(theirs.fileno()), str(mesh.workload_socket), str(second)],
                pass_fds=[theirs.fileno()],
                stderr=(tmp_path / "workload.log").open("wb"),
            )
            theirs.close()
            try:
                _, (fd,), _, _ = socket.recv_fds(ours, 16, 1)
                serve_connection_locally(socket.socket(fileno=fd), tmp_path / "local.sock")
                with grpc.insecure_channel(f"unix:{tmp_path / 'local.sock'}") as channel:
                    stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
                    stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=60)
                    before = next(stream)
                    assert [s.spiffe_id for s in before.svids] == [APP]  # the first binary is entitled

                    ours.send(b"x")  # exec now
                    assert ours.recv(1) == b""  # the workload closed its end: it is about to exec
                    wait_until(lambda: executes(workload, second, tmp_path / "workload.log"), 10, "the exec")
                    mesh.create_entry(LATER, agent_id, sha256_selector(first))  # something new to push

                    try:
                        after = next(stream)
                    except grpc.RpcError as err:
                        ended = err
                    else:
                        pytest.fail(f"the process got {[s.spiffe_id for s in after.svids]} after it executed {second}")
                    assert ended.code() is grpc.StatusCode.PERMISSION_DENIED
                    details = ended.details() or ""
                    assert details.startswith(
                        "the caller is no longer attested: the caller's selectors changed since it was attested "
                        f"(no longer: unix:path:{first}, {sha256_selector(first)}; now also: unix:path:{second}, "
                        f"{sha256_selector(second)})"
                    ), details

                    with pytest.raises(grpc.RpcError) as refused:
                        stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["api"]), metadata=HEADER, timeout=10)
                    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
            finally:
                workload.kill()
                workload.wait(timeout=10)
                ours.close()


def test_an_unprivileged_workload_reaches_the_default_socket_and_gets_its_svid(public_root: Path) -> None:
    mesh = Mesh(public_root, socket_dir_name=None)  # the agent's default socket_dir
    with mesh.running_ca():
        token, agent_id = mesh.join_token()
        mesh.create_entry(APP, agent_id, f"unix:uid:{NOBODY}")
        with mesh.running_agent(mesh.write_agent_config(token)):
            wait_until(mesh.workload_socket.exists, 20, "the Workload API socket")
            assert mesh.workload_socket.parent.stat().st_mode & 0o777 == 0o755
            assert mesh.workload_socket.stat().st_mode & 0o777 == 0o666
            assert mesh.agent_dir.stat().st_mode & 0o777 == 0o700
            argv = [
                "setpriv",
                f"--reuid={NOBODY}",
                f"--regid={NOBODY}",
                "--clear-groups",
                sys.executable,
                CLIENT,
                "x509-context",
                str(mesh.workload_socket),
            ]

            def fetched() -> bool:
                return run(argv, timeout=30).returncode == 0

            wait_until(fetched, 30, "uid 65534 to get its SVID")
            context = json.loads(run(argv, timeout=30).stdout)
            assert [s["spiffe_id"] for s in context["svids"]] == [APP]
