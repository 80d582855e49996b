"""Legacy roots over the real node API's Sync stream (wire/node.proto ``SyncUpdate.legacy_roots``): every
agent gets the ``[bridge] legacy_roots`` sets at once, and a replaced file is pushed on the open stream
without a restart — the path by which a change reaches every Envoy's ``legacy/<name>``."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.integration.ca.test_node_api import PUSH_DEADLINE, attested_agent, channel, running_node_api
from tests.support.enterprise_pki import EnterprisePki
from wire import node_pb2, node_pb2_grpc


def canonical(*paths: Path) -> bytes:
    certs = [x509.load_pem_x509_certificate(path.read_bytes()) for path in paths]
    return b"".join(
        x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
        for der in sorted(c.public_bytes(serialization.Encoding.DER) for c in certs)
    )


def replace(path: Path, data: bytes) -> None:
    """As an operator's tooling does: a new file renamed over the old one."""
    scratch = path.with_suffix(".new")
    scratch.write_bytes(data)
    os.replace(scratch, path)


async def test_sync_sends_the_legacy_roots_by_name_at_once(tmp_path: Path, enterprise_pki: EnterprisePki) -> None:
    async with running_node_api(tmp_path, legacy_roots={"corp": enterprise_pki.root}) as ca:
        agent = await attested_agent(ca)
        async with channel(ca, ca.node_api_port, agent) as ch:
            stream = node_pb2_grpc.NodeStub(ch).Sync(node_pb2.SyncRequest())
            first = await asyncio.wait_for(stream.read(), PUSH_DEADLINE)
            stream.cancel()

    assert dict(first.legacy_roots) == {"corp": canonical(enterprise_pki.root)}


async def test_a_replaced_legacy_roots_file_is_pushed_on_the_open_stream(
    tmp_path: Path, enterprise_pki: EnterprisePki
) -> None:
    roots = tmp_path / "corp-roots.pem"
    roots.write_bytes(enterprise_pki.root.read_bytes())
    async with running_node_api(tmp_path, legacy_roots={"corp": roots}) as ca:
        agent = await attested_agent(ca)
        async with channel(ca, ca.node_api_port, agent) as ch:
            stream = node_pb2_grpc.NodeStub(ch).Sync(node_pb2.SyncRequest())
            await asyncio.wait_for(stream.read(), PUSH_DEADLINE)
            replace(roots, enterprise_pki.root.read_bytes() + enterprise_pki.untrusted_root.read_bytes())
            pushed = await asyncio.wait_for(stream.read(), PUSH_DEADLINE)
            stream.cancel()

    assert dict(pushed.legacy_roots) == {"corp": canonical(enterprise_pki.root, enterprise_pki.untrusted_root)}


async def test_a_broken_legacy_roots_file_is_not_sent_and_the_next_good_one_is(
    tmp_path: Path, enterprise_pki: EnterprisePki
) -> None:
    roots = tmp_path / "corp-roots.pem"
    roots.write_bytes(enterprise_pki.root.read_bytes())
    async with running_node_api(tmp_path, legacy_roots={"corp": roots}) as ca:
        agent = await attested_agent(ca)
        async with channel(ca, ca.node_api_port, agent) as ch:
            stream = node_pb2_grpc.NodeStub(ch).Sync(node_pb2.SyncRequest())
            await asyncio.wait_for(stream.read(), PUSH_DEADLINE)
            replace(roots, enterprise_pki.web.cert.read_bytes())  # a host certificate, not a root: refused
            await asyncio.sleep(0.3)  # several check intervals: the CA logs it and sends nothing
            replace(roots, enterprise_pki.untrusted_root.read_bytes())
            pushed = await asyncio.wait_for(stream.read(), PUSH_DEADLINE)
            stream.cancel()

    assert dict(pushed.legacy_roots) == {"corp": canonical(enterprise_pki.untrusted_root)}
