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
import threading
import time
from collections.abc import Iterator
from io import BufferedReader
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


class GatedDigests(ExecutableDigests):
    """Counts reads of an executable, and holds each one until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.reading = threading.Event()
        self.gate = threading.Event()

    def digest(self, path: str, file: BufferedReader) -> str:
        self.reads += 1
        self.reading.set()
        assert self.gate.wait(10), "the test never opened the gate"
        return super().digest(path, file)


@pytest.fixture
def fake_proc(tmp_path: Path) -> Path:
    """A /proc whose ``<our pid>/exe`` names ``app-a``; ``app-b`` is the binary a caller may execute next."""
    (tmp_path / "app-a").write_bytes(b"\x7fELF first binary")
    (tmp_path / "app-b").write_bytes(b"\x7fELF second binary")
    (tmp_path / "proc" / str(os.getpid())).mkdir(parents=True)
    (tmp_path / "proc" / str(os.getpid()) / "exe").symlink_to(tmp_path / "app-a")
    return tmp_path / "proc"


def path_selectors(selectors: frozenset[Selector]) -> set[str]:
    return {s.value for s in selectors if s.value.startswith("path:")}


async def test_callers_asking_about_the_same_process_together_share_one_read(fake_proc: Path) -> None:
    digests = GatedDigests()
    digests.gate.set()
    attestor = ProcessAttestor(digests, proc=fake_proc)
    results = await asyncio.gather(*(attestor.attest_process(own_credentials()) for _ in range(50)))
    assert (len(set(results)), digests.reads) == (1, 1)


async def test_a_caller_never_gets_a_read_that_began_before_it_asked(fake_proc: Path) -> None:
    digests = GatedDigests()
    attestor = ProcessAttestor(digests, proc=fake_proc)
    earlier = asyncio.create_task(attestor.attest_process(own_credentials()))
    assert await asyncio.to_thread(digests.reading.wait, 10)
    exe = fake_proc / str(os.getpid()) / "exe"
    exe.unlink()
    exe.symlink_to(fake_proc.parent / "app-b")  # the caller executes another binary mid-read
    later = asyncio.create_task(attestor.attest_process(own_credentials()))
    await asyncio.sleep(0)
    digests.gate.set()
    assert (path_selectors(await earlier), path_selectors(await later), digests.reads) == (
        {f"path:{fake_proc.parent / 'app-a'}"},
        {f"path:{fake_proc.parent / 'app-b'}"},
        2,
    )


async def test_a_shared_read_checks_each_callers_own_pidfd(child: subprocess.Popen[bytes]) -> None:
    # Two connections name the same pid: the first one's process exited (its pid now names ours).
    # They share the read of /proc, but only the caller whose own process is alive gets its facts.
    gone = os.pidfd_open(child.pid)
    alive = os.pidfd_open(os.getpid())
    child.kill()
    child.wait(timeout=10)
    try:
        attestor = ProcessAttestor()
        refused, accepted = await asyncio.gather(
            attestor.attest_process(own_credentials(), gone),
            attestor.attest_process(own_credentials(), alive),
            return_exceptions=True,
        )
    finally:
        os.close(gone)
        os.close(alive)
    assert isinstance(refused, NotAuthorized)
    assert str(refused) == exited_message(os.getpid())
    assert isinstance(accepted, frozenset)
    assert Selector("unix", f"uid:{os.getuid()}") in accepted


async def test_a_caller_that_goes_away_during_a_shared_read_leaves_the_others_their_answer(fake_proc: Path) -> None:
    digests = GatedDigests()
    attestor = ProcessAttestor(digests, proc=fake_proc)
    leaving = asyncio.create_task(attestor.attest_process(own_credentials()))
    staying = asyncio.create_task(attestor.attest_process(own_credentials()))
    assert await asyncio.to_thread(digests.reading.wait, 10)
    leaving.cancel()
    digests.gate.set()
    assert path_selectors(await staying) == {f"path:{fake_proc.parent / 'app-a'}"}
    assert leaving.cancelled()
    assert digests.reads == 1
