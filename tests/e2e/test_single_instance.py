"""One CA and one agent per data directory and per port, and no Python traceback for a user: real
``trustmesh-ca`` and ``trustmesh-agent`` processes started a second time, on a busy port, on an unusable
data directory, on a damaged or read-only datastore, beside keys without their key-encryption key or
without their datastore, and with their output closed early. Each refusal is one line on stderr and
exit 1, and the instance already running keeps serving through its admin socket."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mesh import TRUST_DOMAIN, Mesh
from tests.support.processes import command, free_port, run, wait_until

pytestmark = pytest.mark.e2e

UID = f"unix:uid:{os.getuid()}"


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path)
    with mesh.running_ca():
        yield mesh


def ca_run(config: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run([command("trustmesh-ca"), "--config", str(config), "run", *extra], env=env, timeout=30)


def only_line(result: subprocess.CompletedProcess[str]) -> str:
    """The refusal: exit 1, no traceback, and exactly one error line (log lines of the start may precede it)."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("trustmesh-")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == errors[0]
    return errors[0]


def assert_first_ca_serves(mesh: Mesh) -> None:
    assert mesh.processes["ca"].poll() is None
    assert mesh.ca("healthcheck").strip() == "ready"  # through the admin socket, which is still its own


def second_config(mesh: Mesh, data_dir: Path, **ports: int) -> Path:
    addresses = {"http": mesh.http_port, "node": mesh.node_port, "attestation": mesh.attestation_port} | ports
    config = mesh.root / "second.toml"
    config.write_text(
        f'trust_domain = "{TRUST_DOMAIN}"\n[server]\ndata_dir = "{data_dir}"\n'
        f'http_address = "127.0.0.1:{addresses["http"]}"\nnode_api_address = "127.0.0.1:{addresses["node"]}"\n'
        f'attestation_address = "127.0.0.1:{addresses["attestation"]}"\n'
    )
    return config


def test_a_second_ca_on_the_same_data_directory_exits_and_the_first_keeps_serving(mesh: Mesh) -> None:
    admin_socket = mesh.root / "ca" / "admin.sock"
    before = admin_socket.stat().st_ino
    line = only_line(ca_run(mesh.ca_config))
    assert line == (
        f"trustmesh-ca: error: another CA is already running (pid {mesh.processes['ca'].pid}) on server.data_dir "
        f"{mesh.root / 'ca'}; stop it first, or give this instance its own server.data_dir"
    )
    assert admin_socket.stat().st_ino == before
    assert_first_ca_serves(mesh)


@pytest.mark.parametrize(
    ("key", "busy"),
    [
        pytest.param("server.node_api_address", "node", id="node-api"),
        pytest.param("server.attestation_address", "attestation", id="attestation"),
        pytest.param("server.http_address", "http", id="health"),
    ],
)
def test_a_second_ca_on_a_port_in_use_names_the_port_and_key(mesh: Mesh, key: str, busy: str) -> None:
    free = {name: free_port() for name in ("http", "node", "attestation") if name != busy}
    port = {"http": mesh.http_port, "node": mesh.node_port, "attestation": mesh.attestation_port}[busy]
    line = only_line(ca_run(second_config(mesh, mesh.root / "ca2", **free)))
    assert line == (
        f"trustmesh-ca: error: {key} 127.0.0.1:{port} is in use; stop what listens there or set {key} to a free port"
    )
    assert_first_ca_serves(mesh)


def test_a_second_ca_refuses_an_admin_socket_in_use(mesh: Mesh) -> None:
    config = second_config(mesh, mesh.root / "ca2", http=free_port(), node=free_port(), attestation=free_port())
    socket_path = mesh.root / "ca" / "admin.sock"
    config.write_text(config.read_text() + f'admin_socket = "{socket_path}"\n')
    line = only_line(ca_run(config))
    assert line.startswith(f"trustmesh-ca: error: server.admin_socket {socket_path} is in use by another process")
    assert_first_ca_serves(mesh)


def test_a_second_agent_on_the_same_data_directory_exits_and_the_first_keeps_serving(mesh: Mesh) -> None:
    token, _agent_id = mesh.join_token()
    config = mesh.write_agent_config(token)
    with mesh.running_agent(config) as first:
        before = mesh.sds_socket.stat().st_ino
        result = run([command("trustmesh-agent"), "--config", str(config), "run"], timeout=30)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [
            f"trustmesh-agent: error: another agent is already running (pid {first.pid}) on data_dir "
            f"{mesh.agent_dir}; stop it first, or give this instance its own data_dir"
        ]
        assert first.poll() is None
        assert mesh.sds_socket.stat().st_ino == before
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(mesh.sds_socket))  # still served


def test_an_agent_that_does_not_trust_the_ca_says_so_without_grpc_log_lines(mesh: Mesh, tmp_path: Path) -> None:
    token, _agent_id = mesh.join_token()
    config = mesh.write_agent_config(token)
    other = tmp_path / "other-ca"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
         str(other.with_suffix(".key")), "-subj", "/O=other", "-days", "2", "-addext",
         "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-addext",
         f"subjectAltName=URI:spiffe://{TRUST_DOMAIN}", "-out", str(tmp_path / "bundle.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        agent = subprocess.Popen([command("trustmesh-agent"), "--config", str(config), "run"], stderr=out)
        try:
            wait_until(lambda: agent.poll() is not None or "not a valid X509-SVID" in log.read_text(), 20, "a refusal")
        finally:
            agent.terminate()
            agent.wait(10)
    text = log.read_text()
    assert (
        f"the CA at 127.0.0.1:{mesh.attestation_port} presented a certificate that is not a valid X509-SVID of "
        f"{TRUST_DOMAIN} (X509-SVID spiffe://{TRUST_DOMAIN}/trustmesh/server does not chain to the bundle of "
        f"{TRUST_DOMAIN}"
    ) in text, text
    assert "is the CA running" not in text
    assert "ssl_transport_security" not in text  # gRPC's C core prints nothing of its own
    assert "Traceback" not in text


def test_unusable_data_directory_is_one_line(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    mesh.write_ca_config()
    (tmp_path / "ca").write_text("a file where the data directory should be")
    assert only_line(ca_run(mesh.ca_config)) == (
        f"trustmesh-ca: error: server.data_dir: {tmp_path / 'ca'} is not a directory; move that file away or "
        "point server.data_dir elsewhere"
    )


def test_closed_standard_output_is_one_line_not_a_traceback(mesh: Mesh) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head -c 10` that has already exited
    try:
        result = subprocess.run(
            [command("trustmesh-ca"), "--config", str(mesh.ca_config), "bundle", "show", "--format", "spiffe"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "trustmesh-ca: error: standard output was closed before all of it was written"
    ]


def test_a_damaged_datastore_is_one_line(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    mesh.write_ca_config()
    (tmp_path / "ca").mkdir(mode=0o700)
    datastore = tmp_path / "ca" / "datastore.sqlite3"
    datastore.write_bytes(b"not a database at all " * 200)
    assert only_line(ca_run(mesh.ca_config)) == (
        f"trustmesh-ca: error: SQLite datastore {datastore} is not a SQLite database or is damaged "
        "(SQLITE_NOTADB: file is not a database); restore it from a backup"
    )


@pytest.fixture
def stopped_ca(tmp_path: Path) -> Mesh:
    """A CA that ran once (datastore, keys and KEK on disk) and stopped."""
    mesh = Mesh(tmp_path)
    with mesh.running_ca():
        pass
    return mesh


def test_a_read_only_datastore_is_one_line(stopped_ca: Mesh) -> None:
    datastore = stopped_ca.root / "ca" / "datastore.sqlite3"
    immutable = os.geteuid() == 0  # root writes any file whatever its mode; only the immutable flag stops it
    if immutable:
        made_immutable = run(["chattr", "+i", str(datastore)])  # chattr: e2fsprogs, on every Debian
        assert made_immutable.returncode == 0, f"chattr +i failed: {made_immutable.stderr}"
    else:
        datastore.chmod(0o400)
    try:
        line = only_line(ca_run(stopped_ca.ca_config))
    finally:
        if immutable:
            run(["chattr", "-i", str(datastore)])
    assert line.startswith(f"trustmesh-ca: error: SQLite datastore {datastore} is read-only (SQLITE_READONLY")
    assert line.endswith(
        "make it, and the directory that holds it, writable by the CA's user (SQLite also writes -wal and -shm "
        "files beside it)"
    )


def test_keys_without_their_key_encryption_key_are_refused_and_no_new_one_is_written(stopped_ca: Mesh) -> None:
    kek = stopped_ca.root / "ca" / "kek"
    kek.unlink()
    line = only_line(ca_run(stopped_ca.ca_config))
    assert line.startswith(
        f"trustmesh-ca: error: key-encryption key file {kek} does not exist, but {stopped_ca.root / 'ca' / 'keys'} "
        "holds 2 keys encrypted with one; restore that file"
    )
    assert not kek.exists()


def test_an_empty_datastore_beside_keys_is_refused_until_a_new_root_is_asked_for(stopped_ca: Mesh) -> None:
    data_dir = stopped_ca.root / "ca"
    for leftover in data_dir.glob("datastore.sqlite3*"):
        leftover.unlink()
    keys = sorted(path.name for path in (data_dir / "keys").iterdir())
    line = only_line(ca_run(stopped_ca.ca_config))
    assert line.startswith(
        f"trustmesh-ca: error: the datastore holds no authorities of {TRUST_DOMAIN}, but the key manager holds 2 "
        "authority keys"
    )
    assert "--new-trust-domain-root" in line
    assert sorted(path.name for path in (data_dir / "keys").iterdir()) == keys
    argv = [command("trustmesh-ca"), "--config", str(stopped_ca.ca_config), "run", "--new-trust-domain-root"]
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        try:
            wait_until(stopped_ca.ca_ready, 20, "the CA with a new root to become ready")
        finally:
            proc.terminate()
            proc.wait(10)


def test_the_tests_mesh_starts_its_ca_on_new_ports_when_one_was_taken_before_it_bound(tmp_path: Path) -> None:
    """The harness, not the product: free_port's port can be taken by another process of the test run
    before the CA binds it. The CA exits naming the port (above); the mesh then starts it on new ports
    instead of mistaking that other process's /ready for its own CA."""
    mesh = Mesh(tmp_path)
    mesh.write_ca_config("# a test's own configuration, kept on the new ports\n")
    taken = mesh.http_port
    with socket.socket() as thief:
        thief.bind(("127.0.0.1", taken))
        thief.listen()
        with mesh.running_ca():
            assert mesh.http_port != taken
            assert mesh.ca("healthcheck").strip() == "ready"
            assert mesh.ca_config.read_text().startswith(f'trust_domain = "{TRUST_DOMAIN}"\n# a test\'s own')
