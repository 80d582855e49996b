"""Legacy roots over the real node API's Sync stream (wire/node.proto ``SyncUpdate.legacy_roots``): every
agent gets the ``[bridge] legacy_roots`` sets at once, and a replaced file is pushed on the open stream
without a restart — the path by which a change reaches every Envoy's ``legacy/<name>``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bridge.legacy_roots import legacy_roots_pem
from tests.integration.ca.test_node_api import PUSH_DEADLINE, attested_agent, channel, running_node_api
from tests.support.enterprise_pki import EnterprisePki
from tests.support.files import replace_file
from wire import node_pb2, node_pb2_grpc


@contextlib.asynccontextmanager
async def synced(tmp_path: Path, roots: Path) -> AsyncIterator[tuple[Any, node_pb2.SyncUpdate]]:
    """A CA serving ``roots`` as the legacy roots ``corp``, and the Sync stream of an agent it attested,
    with the first state read from it."""
    async with running_node_api(tmp_path, legacy_roots={"corp": roots}) as ca:
        agent = await attested_agent(ca)
        async with channel(ca, ca.node_api_port, agent) as ch:
            stream = node_pb2_grpc.NodeStub(ch).Sync(node_pb2.SyncRequest())
            try:
                yield stream, await asyncio.wait_for(stream.read(), PUSH_DEADLINE)
            finally:
                stream.cancel()


@pytest.fixture
def roots(tmp_path: Path, enterprise_pki: EnterprisePki) -> Path:
    """A legacy roots file holding the enterprise root, for tests that replace it."""
    path = tmp_path / "corp-roots.pem"
    path.write_bytes(enterprise_pki.root.read_bytes())
    return path


def corp(*certificate_files: Path) -> dict[str, bytes]:
    return {"corp": legacy_roots_pem(b"".join(path.read_bytes() for path in certificate_files), "expected")}


async def test_sync_sends_the_legacy_roots_by_name_at_once(tmp_path: Path, enterprise_pki: EnterprisePki) -> None:
    async with synced(tmp_path, enterprise_pki.root) as (_, first):
        assert dict(first.legacy_roots) == corp(enterprise_pki.root)


async def test_a_replaced_legacy_roots_file_is_pushed_on_the_open_stream(
    tmp_path: Path, enterprise_pki: EnterprisePki, roots: Path
) -> None:
    async with synced(tmp_path, roots) as (stream, _):
        replace_file(roots, enterprise_pki.root.read_bytes() + enterprise_pki.untrusted_root.read_bytes())
        pushed = await asyncio.wait_for(stream.read(), PUSH_DEADLINE)

    assert dict(pushed.legacy_roots) == corp(enterprise_pki.root, enterprise_pki.untrusted_root)


async def test_a_broken_legacy_roots_file_is_not_sent_and_the_next_good_one_is(
    tmp_path: Path, enterprise_pki: EnterprisePki, roots: Path
) -> None:
    async with synced(tmp_path, roots) as (stream, _):
        replace_file(roots, enterprise_pki.web.cert.read_bytes())  # a host certificate, not a root: refused
        await asyncio.sleep(0.3)  # several check intervals: the CA logs it and sends nothing
        replace_file(roots, enterprise_pki.untrusted_root.read_bytes())
        pushed = await asyncio.wait_for(stream.read(), PUSH_DEADLINE)

    assert dict(pushed.legacy_roots) == corp(enterprise_pki.untrusted_root)
