"""Workload attestation from peer credentials (DESIGN §4): the selectors of a process, digest caching,
and refusing callers whose process is gone or whose pid may name another process by now."""

from __future__ import annotations

import asyncio
import grp
import hashlib
import os
import pwd
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sds.attestor import ExecutableDigests, PeerCredentials, ProcessAttestor
from spiffe_core.errors import NotAuthorized
from spiffe_core.selectors import Selector

UNKNOWN_ID = 4242424  # no passwd or group entry has it


def own_credentials() -> PeerCredentials:
    return PeerCredentials(os.getpid(), os.getuid(), os.getgid())


def exited_message(pid: int) -> str:
    return (
        f"caller process exited before attestation (pid {pid}); the process that opens a Workload API "
        "connection must stay alive while it calls, so its identity can be checked"
    )


def attest(attestor: ProcessAttestor, creds: PeerCredentials, pidfd: int | None = None) -> frozenset[Selector]:
    return asyncio.run(attestor.attest_process(creds, pidfd))


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A live child process; killed and reaped at the end if the test did not."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    yield process
    process.kill()
    process.wait(timeout=10)


def test_selectors_of_own_process() -> None:
    executable = os.path.realpath(sys.executable)
    digest = hashlib.sha256(Path(executable).read_bytes()).hexdigest()
    selectors = attest(ProcessAttestor(), own_credentials())
    assert selectors == {
        Selector("unix", f"uid:{os.getuid()}"),
        Selector("unix", f"gid:{os.getgid()}"),
        Selector("unix", f"user:{pwd.getpwuid(os.getuid()).pw_name}"),
        Selector("unix", f"group:{grp.getgrgid(os.getgid()).gr_name}"),
        Selector("unix", f"path:{executable}"),
        Selector("unix", f"sha256:{digest}"),
    }


def test_ids_without_account_get_only_numeric_selectors() -> None:
    selectors = attest(ProcessAttestor(), PeerCredentials(os.getpid(), UNKNOWN_ID, UNKNOWN_ID))
    assert {s for s in selectors if not s.value.startswith(("path:", "sha256:"))} == {
        Selector("unix", f"uid:{UNKNOWN_ID}"),
        Selector("unix", f"gid:{UNKNOWN_ID}"),
    }


def test_refuses_process_that_exited_and_was_reaped() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=10)
    with pytest.raises(NotAuthorized) as failure:
        attest(ProcessAttestor(), PeerCredentials(process.pid, os.getuid(), os.getgid()))
    assert str(failure.value) == exited_message(process.pid)


def test_refuses_zombie_process() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        stat = Path(f"/proc/{process.pid}/stat")
        deadline = time.monotonic() + 10
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "child did not exit within 10s"
            time.sleep(0.01)
        with pytest.raises(NotAuthorized) as failure:
            attest(ProcessAttestor(), PeerCredentials(process.pid, os.getuid(), os.getgid()))
        assert str(failure.value) == exited_message(process.pid)
    finally:
        process.wait(timeout=10)


def test_refuses_caller_whose_pidfd_shows_it_exited_although_its_pid_is_alive(
    child: subprocess.Popen[bytes],
) -> None:
    # The connecting process (child) exits; its pid now names another live process (here: ours).
    # /proc reads succeed, but they describe the successor, so the caller must be refused.
    pidfd = os.pidfd_open(child.pid)
    try:
        child.kill()
        child.wait(timeout=10)
        with pytest.raises(NotAuthorized) as failure:
            attest(ProcessAttestor(), own_credentials(), pidfd)
    finally:
        os.close(pidfd)
    assert str(failure.value) == exited_message(os.getpid())


def test_accepts_caller_whose_pidfd_shows_it_alive(child: subprocess.Popen[bytes]) -> None:
    pidfd = os.pidfd_open(child.pid)
    try:
        selectors = attest(ProcessAttestor(), PeerCredentials(child.pid, 0, 0), pidfd)
    finally:
        os.close(pidfd)
    assert Selector("unix", f"path:{os.path.realpath(sys.executable)}") in selectors


def test_hashes_an_unchanged_executable_once() -> None:
    digests = ExecutableDigests()
    attestor = ProcessAttestor(digests)
    first = attest(attestor, own_credentials())
    second = attest(attestor, own_credentials())
    assert (first, digests.files_hashed) == (second, 1)


def digest_of(digests: ExecutableDigests, path: Path) -> str:
    with open(path, "rb") as file:
        return digests.digest(str(path), file)


def test_rehashes_a_file_whose_content_changed(tmp_path: Path) -> None:
    binary = tmp_path / "app"
    binary.write_bytes(b"version 1")
    os.utime(binary, ns=(1_000_000_000, 1_000_000_000))
    digests = ExecutableDigests()
    before = digest_of(digests, binary)
    binary.write_bytes(b"version 2")
    os.utime(binary, ns=(2_000_000_000, 2_000_000_000))
    after = digest_of(digests, binary)
    assert (before, after, digests.files_hashed) == (
        hashlib.sha256(b"version 1").hexdigest(),
        hashlib.sha256(b"version 2").hexdigest(),
        2,
    )


def test_digest_cache_drops_least_recently_used_entry(tmp_path: Path) -> None:
    files = []
    for name in ("a", "b", "c"):
        path = tmp_path / name
        path.write_bytes(name.encode())
        files.append(path)
    digests = ExecutableDigests(max_entries=2)
    for path in (files[0], files[1], files[0], files[2]):  # c evicts b, the least recently used
        digest_of(digests, path)
    assert digests.files_hashed == 3
    digest_of(digests, files[0])
    assert digests.files_hashed == 3
    digest_of(digests, files[1])
    assert digests.files_hashed == 4
