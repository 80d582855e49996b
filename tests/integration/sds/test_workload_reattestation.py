"""A Workload API caller is attested again before every message it receives: a process that executes
another binary after it connected keeps its connection and pid, but not its identity. The endpoint is
the real one (public socket, proxy, pidfd); only ``/proc`` is a directory the test controls, so "the
process executed another binary" is a re-pointed ``<pid>/exe`` link."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from sds.attestor import ProcessAttestor
from sds.cache import CacheSnapshot, WorkloadCache
from spiffe_core.spiffe_id import SpiffeId
from tests.support.clock import FakeClock
from tests.support.grpc_streams import WAIT, Stream
from tests.support.sds_snapshots import TestCa, snapshot
from tests.support.workload_api import (
    SECURITY_HEADER,
    FakeJwtMinter,
    TestJwtKey,
    serve_workload_api,
    socket_directory,
    with_jwt_key,
)
from wire import workload_pb2, workload_pb2_grpc


@dataclass
class FakeProcess:
    """``<proc>/<our pid>/exe`` pointing at one of two "binaries" with different digests."""

    proc: Path
    first: Path
    second: Path

    @property
    def first_selector(self) -> str:
        return f"unix:sha256:{hashlib.sha256(self.first.read_bytes()).hexdigest()}"

    @property
    def second_selector(self) -> str:
        return f"unix:sha256:{hashlib.sha256(self.second.read_bytes()).hexdigest()}"

    def run(self, binary: Path) -> None:
        exe = self.proc / str(os.getpid()) / "exe"
        exe.unlink(missing_ok=True)
        exe.symlink_to(binary)


@dataclass
class Rig:
    ca: TestCa
    cache: WorkloadCache
    process: FakeProcess
    minter: FakeJwtMinter
    stub: Any
    version: int = 1

    async def publish(self, *paths: str) -> None:
        self.version += 1
        svids = [self.ca.svid(p, [self.process.first_selector]) for p in paths]
        snap = snapshot(self.ca, svids, version=self.version)
        await self.cache.publish(with_jwt_key(snap, self.minter.key))


class ExecWhileMinting(FakeJwtMinter):
    """Mints, and meanwhile the caller's process executes another binary."""

    process: FakeProcess | None = None

    async def fetch_jwt_svid(self, spiffe_id: SpiffeId, audience: Sequence[str]) -> str:
        assert self.process is not None
        self.process.run(self.process.second)
        return await super().fetch_jwt_svid(spiffe_id, audience)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    (tmp_path / "proc" / str(os.getpid())).mkdir(parents=True)
    (tmp_path / "app-a").write_bytes(b"\x7fELF first binary")
    (tmp_path / "app-b").write_bytes(b"\x7fELF second binary")
    process = FakeProcess(tmp_path / "proc", tmp_path / "app-a", tmp_path / "app-b")
    process.run(process.first)
    ca = TestCa.create("example.org")
    minter = ExecWhileMinting(TestJwtKey.create(ca.trust_domain))
    cache = WorkloadCache(CacheSnapshot(ca.trust_domain))
    attestor = ProcessAttestor(proc=process.proc)
    with socket_directory() as directory:
        async with (
            serve_workload_api(
                cache, minter, directory / "workload.sock", FakeClock(datetime.now(UTC)), attestor
            ) as endpoint,
            grpc.aio.insecure_channel(f"unix:{endpoint.public_socket}") as channel,
        ):
            state = Rig(ca, cache, process, minter, workload_pb2_grpc.SpiffeWorkloadAPIStub(channel))
            await state.publish("/web")
            yield state


def changed(rig: Rig) -> str:
    return (
        "the caller is no longer attested: the caller's selectors changed since it was attested (no longer: "
        f"unix:path:{rig.process.first}, {rig.process.first_selector}; now also: unix:path:{rig.process.second}, "
        f"{rig.process.second_selector}), e.g. its process executed another binary; the connection's identity "
        "is not handed to what runs now — reconnect to be attested afresh"
    )


@pytest.mark.parametrize(
    ("method", "request_message"),
    [
        pytest.param("FetchX509SVID", workload_pb2.X509SVIDRequest(), id="FetchX509SVID"),
        pytest.param("FetchX509Bundles", workload_pb2.X509BundlesRequest(), id="FetchX509Bundles"),
        pytest.param("FetchJWTBundles", workload_pb2.JWTBundlesRequest(), id="FetchJWTBundles"),
    ],
)
async def test_stream_ends_instead_of_pushing_to_a_process_that_executed_another_binary(
    rig: Rig, method: str, request_message: Any
) -> None:
    stream = Stream(getattr(rig.stub, method)(request_message, metadata=SECURITY_HEADER))
    try:
        await stream.next()
        rig.process.run(rig.process.second)
        rig.ca = TestCa.create("example.org")  # new authorities: every stream has something to push
        rig.minter.key = TestJwtKey.create(rig.ca.trust_domain, "jwt-key-2")
        await rig.publish("/web")
        error = await stream.error()
        assert stream.responses.empty()
    finally:
        await stream.close()

    assert (error.code(), error.details()) == (grpc.StatusCode.PERMISSION_DENIED, changed(rig))


async def test_stream_keeps_pushing_while_the_process_runs_the_same_binary(rig: Rig) -> None:
    stream = Stream(rig.stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=SECURITY_HEADER))
    try:
        await stream.next()
        await rig.publish("/web", "/cli")
        pushed = await stream.next()
    finally:
        await stream.close()

    assert [s.spiffe_id for s in pushed.svids] == ["spiffe://example.org/web", "spiffe://example.org/cli"]


async def test_fetch_jwt_svid_is_refused_when_the_process_executed_another_binary_meanwhile(rig: Rig) -> None:
    rig.minter.process = rig.process  # type: ignore[attr-defined]

    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await asyncio.wait_for(
            rig.stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["api"]), metadata=SECURITY_HEADER), WAIT
        )

    assert (failure.value.code(), failure.value.details()) == (grpc.StatusCode.PERMISSION_DENIED, changed(rig))
